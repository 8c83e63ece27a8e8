#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole suite against the
# real local control plane, S3 store, torchrun process groups and ffmpeg. `.ci/run` calls exactly this.
#
# With no arguments the suite runs as two pytest sessions at once: the cluster tests (marked
# `cluster`; one session, one cluster) spend most of their time waiting on pods and the store, and
# the CPU-bound unit tests fill that time. Their output follows the cluster session's. With
# arguments, or WANOPS_TEST_SPLIT=0, one session runs and the arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
PY=${PYTHON:-python3}
if (($# > 0)) || [[ ${WANOPS_TEST_SPLIT:-1} == 0 ]]; then
  exec "$PY" -m pytest "$@"
fi

unit_log=$(mktemp "${TMPDIR:-/tmp}/wanops-unit-tests.XXXXXX")
"$PY" -m pytest -m "not cluster" -p no:cacheprovider >"$unit_log" 2>&1 &
unit=$!
trap 'kill "$unit" 2>/dev/null || true' EXIT
echo "== cluster tests (the unit tests run beside them; their output follows)"
cluster_rc=0
"$PY" -m pytest -m cluster || cluster_rc=$?
unit_rc=0
wait "$unit" || unit_rc=$?
trap - EXIT
echo "== unit tests"
cat "$unit_log"
rm -f "$unit_log"
echo "== cluster tests: exit $cluster_rc; unit tests: exit $unit_rc"
((cluster_rc == 0 && unit_rc == 0))
