#!/usr/bin/env bash
# Installs everything wanops needs on a fresh machine: Python packages (into the current
# interpreter) and the Go-built local control plane (cached under ~/.cache/wanops, keyed by version).
# Idempotent: a second run only checks.
#
# The two installs are independent, so the Go build runs while pip installs: on a cold machine pip
# spends minutes downloading torch, time the build's compiles can use (measured in README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LOG_DIR=${WANOPS_CACHE:-$HOME/.cache/wanops}/logs
mkdir -p "$LOG_DIR"
TOOLS_LOG="$LOG_DIR/install-tools.log"

echo "== local control plane binaries (k8s, etcd, helm, versitygw), in the background: $TOOLS_LOG"
bash scripts/install-tools.sh >"$TOOLS_LOG" 2>&1 &
tools=$!
trap 'kill "$tools" 2>/dev/null || true' EXIT

echo "== python packages"
"$PYTHON" -m pip install --disable-pip-version-check -q -e '.[dev]'

echo "== waiting for the local control plane binaries"
tools_rc=0
wait "$tools" || tools_rc=$?
trap - EXIT
cat "$TOOLS_LOG"
if ((tools_rc != 0)); then
  echo "setup: building the local control plane failed (exit $tools_rc); output above" >&2
  exit "$tools_rc"
fi
