#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels the GPU benchmark installs offline
# (for the GPU machine's Python; default 3.12). They land in benchmarks/gpu/wheels/.
set -euo pipefail
cd "$(dirname "$0")"
PYV="${PYV:-3.12}"
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d wheels -r wheels.txt
