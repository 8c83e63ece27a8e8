#!/usr/bin/env bash
# Installs everything wanops needs on a fresh machine: Python packages (into the current
# interpreter) and the Go-built local control plane (cached under ~/.cache/wanops, keyed by version).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

echo "== python packages"
"$PYTHON" -m pip install --disable-pip-version-check -q -e '.[dev]'

echo "== local control plane binaries (k8s, etcd, helm, versitygw)"
bash scripts/install-tools.sh
