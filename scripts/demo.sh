#!/usr/bin/env bash
# The main job: register the 3D sample pair in napari, write the results and screenshots to demo_output/.
# With a display the napari window stays open afterwards; without one it runs under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WARPSEG_CACHE="${WARPSEG_CACHE:-$PWD/.cache}"
if [ -n "${DISPLAY:-}" ]; then
  exec .venv/bin/warpseg demo --show "$@"
fi
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/warpseg demo "$@"
