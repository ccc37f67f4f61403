#!/usr/bin/env bash
# Set up this machine and run the test suite (CPU; GPU tests skip without CUDA).
# Installs into the active virtual environment, or into ./.venv (created if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
# A real pretrained GAN (DCGAN, DigiFace-1M faces): only its weights file is read, never its code.
python -m pip install -q --no-deps gan-face-generate==1.1.1
# The page test (tests/test_browse_page.py) drives a real headless browser: Debian's chromium and its driver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
  else
    echo "scripts/test.sh: the browser test needs chromium and chromedriver; install them as root:" \
         "apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
fi
export FACTORY_HOME="${FACTORY_HOME:-$(mktemp -d)}"
python -m ruff check .  # the rules in pyproject.toml [tool.ruff]
python -m pytest -q -m "not slow" "$@"
