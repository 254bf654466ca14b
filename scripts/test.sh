#!/usr/bin/env bash
# Fresh machine -> the test suite (about 10 minutes on 2 cores; README says the measured time).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
cd "$(dirname "$0")/.."
exec python -m pytest -q "$@"
