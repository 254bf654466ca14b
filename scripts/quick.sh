#!/usr/bin/env bash
# Fresh machine -> the whole study at the 'quick' preset, report in runs/quick/report.html.
set -euo pipefail
source "$(dirname "$0")/venv.sh"
exec deepadv reproduce --preset quick --out "${1:-runs/quick}"
