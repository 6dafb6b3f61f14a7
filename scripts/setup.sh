#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine with Python 3.11: system libraries for headless
# Qt/OpenGL (Xvfb, Mesa), a virtualenv in .venv with torch==2.13.0 (the CPU build) and the project.
set -euo pipefail
cd "$(dirname "$0")/.."

system_packages=(xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0
  libxcb-xkb1 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0)
missing=()
for package in "${system_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.warpseg-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v WARNING || true
  .venv/bin/python -m pip install -q -e ".[testing]" 2>&1 | grep -v WARNING || true
  .venv/bin/python -c "import torch, napari, warpseg" # fails loudly if an install did not work
  touch "$stamp"
fi
