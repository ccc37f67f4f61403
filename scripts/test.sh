#!/usr/bin/env bash
# Set up this machine and run the test suite (CPU; GPU tests skip without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
export FACTORY_HOME="${FACTORY_HOME:-$(mktemp -d)}"
python3 -m pytest -q -m "not slow" "$@"
