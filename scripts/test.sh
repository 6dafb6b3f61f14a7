#!/usr/bin/env bash
# The test suite: set-up, then pytest under a virtual X display (napari needs OpenGL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WARPSEG_CACHE="${WARPSEG_CACHE:-$PWD/.cache}"
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -ra "$@"
