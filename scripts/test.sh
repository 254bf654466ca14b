#!/usr/bin/env bash
# Fresh machine -> the test suite (under 5 minutes on 2 cores).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$(dirname "$0")/.."
exec python -m pytest -q "$@"
