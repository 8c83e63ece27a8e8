#!/usr/bin/env bash
# Build the pinned local-cluster tools (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, helm, versitygw) from their Go modules into a cache outside the clone.
#
# Each tool lands in $CACHE/bin/<tool>-<version>-<go version>/<tool> with a STAMP file written last
# (tool, version, Go version, digest of the go.mod/go.sum it was built from), so a half-finished
# build is never mistaken for a good one, a changed module graph rebuilds, and a second run only
# checks. Versions come from tools/versions.env; localcluster/tools.py reads the same file and cache.
#
# Three builds run at the same time, because on a cold machine much of the time is module downloads
# and links that leave cores idle:
#   k8s        tools/k8s: the four Kubernetes commands and helm in ONE `go build`, so the packages
#              they share (client-go, apimachinery, cli-runtime, kubectl's) compile once and the go
#              command schedules every compile of the five across the cores;
#   etcd       tools/etcd: etcd's server;
#   versitygw  `go install` at its pinned version (its own go.mod; stamped with digest "-").
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

declare -A VERSION=(
  [etcd]=$ETCD_VERSION [kube-apiserver]=$KUBERNETES_VERSION [kube-controller-manager]=$KUBERNETES_VERSION
  [kube-scheduler]=$KUBERNETES_VERSION [kubectl]=$KUBERNETES_VERSION [helm]=$HELM_VERSION
  [versitygw]=$VERSITYGW_VERSION
)
K8S_MINOR=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
# One link line for the five commands of tools/k8s: the linker ignores -X for a package a binary
# does not contain.
K8S_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean"
done

total_start=$SECONDS
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
mkdir -p "$CACHE/bin"
WORK=$(mktemp -d "$CACHE/bin/.build.XXXXXX")  # scratch of every build, removed however we exit
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

# module_digest DIR: what a binary built in that module depends on besides its version.
module_digest() { cat "$ROOT/tools/$1/go.mod" "$ROOT/tools/$1/go.sum" | sha256sum | cut -c1-12; }

# build_group GROUP DIGEST BUILDER TOOL...: build the wanted TOOLs without a matching stamp with one
# "BUILDER OUTDIR TOOL..." call, then move each binary into place and stamp it.
build_group() {
  local group=$1 digest=$2 builder=$3 tool todo=()
  shift 3
  for tool in "$@"; do
    [[ " $WANTED " == *" $tool "* ]] || continue
    local dest="$CACHE/bin/$tool-${VERSION[$tool]}-$GOV"
    if [[ -x "$dest/$tool" && -f "$dest/STAMP" && "$(cat "$dest/STAMP")" == "$tool ${VERSION[$tool]} $GOV $digest" ]]; then
      echo "install-tools: $tool ${VERSION[$tool]}: cached ($dest)"
    else
      todo+=("$tool")
    fi
  done
  ((${#todo[@]})) || return 0
  local out="$WORK/$group" TIMEFORMAT="%0R s (cpu %0U s user + %0S s sys)"
  mkdir -p "$out"
  echo "install-tools: $group: building ${todo[*]} with $GOV ..."
  if ! { time "$builder" "$out" "${todo[@]}" >"$WORK/$group.log" 2>&1; } 2>"$WORK/$group.time"; then
    echo "install-tools: $group: build failed after $(cat "$WORK/$group.time"):" >&2
    cat "$WORK/$group.log" >&2
    return 1
  fi
  for tool in "${todo[@]}"; do
    local dest="$CACHE/bin/$tool-${VERSION[$tool]}-$GOV"
    rm -rf "$dest" && mkdir -p "$dest"
    mv "$out/$tool" "$dest/$tool"
    echo "$tool ${VERSION[$tool]} $GOV $digest" > "$dest/STAMP"
  done
  echo "install-tools: $group: built ${todo[*]} in $(cat "$WORK/$group.time"), $(grep -c '^go: downloading' "$WORK/$group.log" || true) modules downloaded"
}

# Builders: "BUILDER OUTDIR TOOL..." leaves OUTDIR/TOOL for each TOOL.
build_k8s() {
  local out=$1 tool pkgs=()
  shift
  for tool in "$@"; do
    if [[ $tool == helm ]]; then pkgs+=(helm.sh/helm/v3/cmd/helm); else pkgs+=("k8s.io/kubernetes/cmd/$tool"); fi
  done
  (cd "$ROOT/tools/k8s" && go build -ldflags "$K8S_LDFLAGS" -o "$out/" "${pkgs[@]}")
}
build_etcd() { (cd "$ROOT/tools/etcd" && go build -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3); }
build_versitygw() {
  GOBIN=$1 go install -ldflags "-s -w -X main.Version=$VERSITYGW_VERSION" \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
}

# k8s.io/kubernetes cannot be `go install`ed (its staging replaces only apply in its own module), so
# tools/k8s is a consumer module; regenerate it only when a pinned version changes.
if ! grep -Eq "^(require)?[[:space:]]*k8s\.io/kubernetes ${KUBERNETES_VERSION}( |\$)" "$ROOT/tools/k8s/go.mod" 2>/dev/null ||
   ! grep -Eq "^(require)?[[:space:]]*helm\.sh/helm/v3 ${HELM_VERSION}( |\$)" "$ROOT/tools/k8s/go.mod"; then
  echo "install-tools: tools/k8s/go.mod is not at kubernetes $KUBERNETES_VERSION, helm $HELM_VERSION; regenerating (commit go.mod and go.sum)"
  python3 "$ROOT/tools/gen_k8s_gomod.py" "$KUBERNETES_VERSION"
  (cd "$ROOT/tools/k8s" && go mod tidy)
fi

build_group k8s "$(module_digest k8s)" build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl helm &
k8s=$!
build_group etcd "$(module_digest etcd)" build_etcd etcd &
etcd=$!
build_group versitygw - build_versitygw versitygw &
versitygw=$!
failed=0
for pid in "$k8s" "$etcd" "$versitygw"; do wait "$pid" || failed=1; done
((failed == 0)) || { echo "install-tools: failed (see above)" >&2; exit 1; }

echo "install-tools: done in $((SECONDS - total_start)) s (load average at start $load_start, at end $(cut -d' ' -f1-3 /proc/loadavg)); cache: $(du -sh "$CACHE/bin" "$GOMODCACHE" "$GOCACHE" 2>/dev/null | awk '{printf "%s %s  ", $2, $1}')"
