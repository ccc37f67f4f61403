#!/usr/bin/env bash
# Set up this machine and run the main job on the embedded default:
# the `shapes` test world, a local dask cluster, local disk (data/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
factory generate --recipe manifests/shapes-demo.toml --out data/demo
factory info data/demo 2>/dev/null || true
