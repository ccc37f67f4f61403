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
export FACTORY_HOME="${FACTORY_HOME:-$(mktemp -d)}"
python -m pytest -q -m "not slow" "$@"
