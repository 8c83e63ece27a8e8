#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup.sh), then runs the whole suite against the
# real local control plane, S3 server, torchrun process groups and ffmpeg. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest "$@"
