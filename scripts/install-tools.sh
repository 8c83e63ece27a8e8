#!/usr/bin/env bash
# Build the pinned local-cluster tools (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, helm, versitygw) from their Go modules into a cache outside the clone.
#
# Each tool lands in $CACHE/bin/<tool>-<version>-<go version>/<tool> with a stamp file written last,
# so a half-finished build is never mistaken for a good one and a second run skips finished tools.
# Versions come from tools/versions.env; localcluster/tools.py reads the same file and cache.
#   WANOPS_CACHE   cache root (default ~/.cache/wanops); CI should persist it between runs.
#   WANOPS_TOOLS   space-separated subset to build (default: all).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../tools/versions.env
source "$ROOT/tools/versions.env"
CACHE=${WANOPS_CACHE:-$HOME/.cache/wanops}
WANTED=${WANOPS_TOOLS:-"etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm versitygw"}

command -v go >/dev/null || { echo "install-tools: 'go' not found; install $GO_VERSION (https://go.dev/dl/)" >&2; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -buildvcs=false"
export GOMODCACHE="$CACHE/gomod" GOCACHE="$CACHE/gobuild"
GOV=$(go env GOVERSION)
if [[ "$GOV" != "$GO_VERSION" ]]; then
  echo "install-tools: note: building with $GOV, tools/versions.env pins $GO_VERSION (cache is keyed by $GOV)" >&2
fi

K8S_MINOR=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
done

total_start=$SECONDS
SCRATCH=()  # scratch directories of builds; removed on exit whether they succeeded or not
trap 'rm -rf "${SCRATCH[@]}"' EXIT

# build TOOL VERSION BUILDER: run "BUILDER <output path>" unless a stamped binary is cached; the
# binary goes to a scratch directory first and is moved into place and stamped only on success.
build() {
  local tool=$1 version=$2 builder=$3
  [[ " $WANTED " == *" $tool "* ]] || return 0
  local dest="$CACHE/bin/$tool-$version-$GOV" stamp="$tool $version $GOV"
  if [[ -x "$dest/$tool" && -f "$dest/STAMP" && "$(cat "$dest/STAMP")" == "$stamp" ]]; then
    echo "install-tools: $tool $version: cached ($dest)"
    return 0
  fi
  local start=$SECONDS scratch
  echo "install-tools: $tool $version: building with $GOV ..."
  scratch=$(mktemp -d "$CACHE/bin/.build-$tool.XXXXXX")
  SCRATCH+=("$scratch")
  "$builder" "$scratch/$tool"
  rm -rf "$dest" && mkdir -p "$dest"
  mv "$scratch/$tool" "$dest/$tool"
  echo "$stamp" > "$dest/STAMP"
  echo "install-tools: $tool $version: built in $((SECONDS - start)) s, $(du -h "$dest/$tool" | cut -f1)"
}

build_etcd() { (cd "$ROOT/tools/etcd" && go build -ldflags "-s -w" -o "$1" go.etcd.io/etcd/server/v3); }
build_k8s() {
  (cd "$ROOT/tools/k8s" && go build -ldflags "$K8S_LDFLAGS" -o "$1" "k8s.io/kubernetes/cmd/$(basename "$1")")
}
build_helm() {
  GOBIN=$(dirname "$1") go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}
build_versitygw() {
  GOBIN=$(dirname "$1") go install -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION" \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
}

mkdir -p "$CACHE/bin"

# k8s.io/kubernetes cannot be `go install`ed (its staging replaces only apply in its own module), so
# tools/k8s is a consumer module; regenerate it only when the pinned version changes.
if ! grep -Eq "^(require)?[[:space:]]*k8s\.io/kubernetes ${KUBERNETES_VERSION}( |\$)" "$ROOT/tools/k8s/go.mod" 2>/dev/null; then
  echo "install-tools: tools/k8s/go.mod is not at $KUBERNETES_VERSION; regenerating (commit go.mod and go.sum)"
  python3 "$ROOT/tools/gen_k8s_gomod.py" "$KUBERNETES_VERSION"
  (cd "$ROOT/tools/k8s" && go mod tidy)
fi

build etcd "$ETCD_VERSION" build_etcd
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  build "$cmd" "$KUBERNETES_VERSION" build_k8s
done
build helm "$HELM_VERSION" build_helm
build versitygw "$VERSITYGW_VERSION" build_versitygw

echo "install-tools: done in $((SECONDS - total_start)) s; cache: $(du -sh "$CACHE/bin" "$GOMODCACHE" "$GOCACHE" 2>/dev/null | awk '{printf "%s %s  ", $2, $1}')"
