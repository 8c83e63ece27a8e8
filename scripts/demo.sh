#!/usr/bin/env bash
# One command: installs everything (scripts/setup.sh), starts the local control plane and S3 store,
# writes a tiny ti2v-5B checkpoint on a local "PVC", installs the CRD, runs the operator, applies
# scripts/demo-videogeneration.yaml, follows its progress and downloads the MP4 to ./out/.
# A second run reuses the built binaries, the running cluster and the checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

bash scripts/setup.sh
echo "== local control plane"
"$PYTHON" -m localcluster up
PYTHONPATH=. "$PYTHON" scripts/demo.py
