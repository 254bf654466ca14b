# Source me: creates .venv (Python 3.11) with the package and its test tools when missing.
set -e
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/deepadv" ] || [ "$ROOT/pyproject.toml" -nt "$VENV/.installed" ]; then
    PY="${PYTHON:-python3.11}"
    command -v "$PY" >/dev/null 2>&1 || PY=python3
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch/torchvision first, pinned to the builds this machine carries (see README)
    "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    touch "$VENV/.installed"
fi
export PATH="$VENV/bin:$PATH"
