#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole suite against the
# real local control plane, S3 store, torchrun process groups and ffmpeg. `.ci/run` calls exactly this.
#
# Two pytest-xdist workers: the cluster tests (one group, one worker, one cluster) spend most of
# their time waiting on pods, which the other worker fills with the CPU-bound unit tests.
# WANOPS_TEST_WORKERS=0 runs everything in this process; arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -n "${WANOPS_TEST_WORKERS:-2}" --dist loadgroup "$@"
