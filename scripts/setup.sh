#!/usr/bin/env bash
# Create or refresh .venv/ at the repository root. Idempotent: reinstalls only when
# pyproject.toml or constraints.txt changed. Usage: scripts/setup.sh [--test]
#   --test  also install what the test suite needs beyond Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is required (set PYTHON=...)" >&2
  exit 1
fi

stamp=.venv/.synthgen-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv || {
    echo "setup: 'python -m venv' failed; on Debian/Ubuntu install python3-venv" >&2
    exit 1
  }
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing synthgen and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # Earlier versions installed as distribution `synthgen` with four generic top-level
  # packages; remove it so only the `synthgen` namespace remains.
  if .venv/bin/python -m pip show synthgen >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall --quiet -y synthgen
  fi
  # torch and torchvision in the same call as everything else, so pip cannot swap torch.
  .venv/bin/python -m pip install --quiet -c constraints.txt \
    torch==2.14.1 torchvision==0.29.1 -e '.[dev]'
  # invisible-watermark declares the GUI `opencv-python`; synthgen's own dependencies bring
  # opencv-python-headless (the same `cv2`) and PyWavelets, so it goes in without its deps.
  .venv/bin/python -m pip install --quiet --no-deps -c constraints.txt invisible-watermark
  echo "$want" > "$stamp"
fi

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  # The report test renders report.html in a real headless browser.
  echo "setup: installing Debian's chromium for the browser test"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
