#!/usr/bin/env bash
# Run the cluster-marked tests against a kind cluster, on machines that have a Docker engine.
#
# The same tests normally run against `python -m localcluster` (real control plane, node agent in
# place of kubelets). Here real kubelets run the pods; the fixtures use it through WANOPS_KUBECONFIG
# and still start the local S3 store. Each kind node advertises 8 nvidia.com/gpu (an extended
# resource patched into node status) so GPU-requesting pods schedule as they would on GPU nodes.
#   WANOPS_KIND_CLUSTER  cluster name (default wanops-e2e); deleted on exit unless WANOPS_KIND_KEEP=1
#   KIND_NODE_IMAGE      node image (default kindest/node:$KUBERNETES_VERSION)
# Extra arguments go to pytest.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tools/versions.env
source "$ROOT/tools/versions.env"
CACHE=${WANOPS_CACHE:-$HOME/.cache/wanops}

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "e2e-kind: SKIP: no Docker engine reachable here, so kind cannot run;" \
       "the same tests run against the local control plane: pytest -m cluster"
  exit 0
fi

KIND=$(command -v kind || true)
if [[ -z "$KIND" ]]; then
  KIND="$CACHE/bin/kind-$KIND_VERSION/kind"
  if [[ ! -x "$KIND" ]]; then
    echo "e2e-kind: building kind $KIND_VERSION"
    CGO_ENABLED=0 GOTOOLCHAIN=local GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gobuild" \
      GOBIN=$(dirname "$KIND") go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
  fi
fi
KUBECTL=$(cd "$ROOT" && python3 -c 'from localcluster import tools; print(tools.find("kubectl"))')

NAME=${WANOPS_KIND_CLUSTER:-wanops-e2e}
KUBECONFIG_FILE="$CACHE/kind-$NAME.kubeconfig"
"$KIND" create cluster --name "$NAME" --image "${KIND_NODE_IMAGE:-kindest/node:$KUBERNETES_VERSION}" \
  --kubeconfig "$KUBECONFIG_FILE" --wait 180s
[[ "${WANOPS_KIND_KEEP:-0}" == 1 ]] || trap '"$KIND" delete cluster --name "$NAME"' EXIT

for node in $("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get nodes -o name); do
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" patch "$node" --subresource=status --type=json \
    -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"8"}]'
done

cd "$ROOT"
WANOPS_KUBECONFIG="$KUBECONFIG_FILE" python3 -m pytest -m cluster tests "$@"
