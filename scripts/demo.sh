#!/usr/bin/env bash
# Set up this machine and run the main job on the embedded default:
# the `shapes` test world, a local dask cluster, local disk (data/demo).
# Installs into the active virtual environment, or into ./.venv (created if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[full]'
factory generate --recipe manifests/shapes-demo.toml --out data/demo
factory info data/demo
