#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, from `python -m wanspec.crd`) into the Helm chart's
# crds/ folder, which Helm installs before the templates. `--check` copies nothing and exits 1 when
# the chart's copies differ (tests/charts and CI run it), so the chart never ships a stale API.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
[[ "${1:-}" == "--check" ]] && check=1
status=0
for src in crds/*.yaml; do
  dst="charts/wanops/crds/$(basename "$src")"
  if cmp -s "$src" "$dst"; then
    continue
  fi
  if ((check)); then
    echo "stale: $dst differs from $src; run: bash scripts/sync-chart-crds.sh" >&2
    status=1
  else
    cp "$src" "$dst"
    echo "copied $src -> $dst"
  fi
done
exit "$status"
