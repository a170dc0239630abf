#!/usr/bin/env bash
# Builds the binaries of a real Kubernetes control plane from the Go module proxy, at pinned versions
# (tests/cluster/versions.env), and fetches the Kubeflow CRDs from the Kubeflow modules' own manifests.
#
#   kube-apiserver, kube-controller-manager   from k8s.io/kubernetes (generated go.mod, see below)
#   kubectl                                   the machine's, when within one minor version of the
#                                             server, else built from k8s.io/kubernetes the same way
#   etcd                                      from go.etcd.io/etcd/server/v3
#   helm                                      from helm.sh/helm/v3/cmd/helm
#   kubeflow-crds/<versions>/*.yaml           PyTorchJob (kubeflow.org/v1) from training-operator,
#                                             TrainJob + (Cluster)TrainingRuntime from trainer/v2; the
#                                             directory is keyed by both pinned versions
# With --node (what `make cluster-up NODE=1` and the real-pods test need), also:
#   kube-scheduler, kubelet, kube-proxy       from the same generated k8s.io/kubernetes module
#   training-operator                         github.com/kubeflow/training-operator/cmd/training-operator.v1
#                                             at TRAINING_OPERATOR_VERSION (the version whose CRD is pinned)
#   coredns                                   github.com/coredns/coredns with only the plugins the node
#                                             uses (bind, ready, health, errors, cache, kubernetes): the
#                                             pods' cluster DNS, with no forwarder (nothing leaves the machine)
#
# Everything lands outside the checkout, in $DEVOPS_MODEL_K8S_CACHE/<k8s version>/
# (default ~/.cache/devops-model/k8s/<k8s version>/): bin/ and kubeflow-crds/. Go's own caches (GOMODCACHE,
# GOCACHE) stay where Go puts them. A second run finds everything there and exits at once.
#
# Usage: tests/cluster/build.sh            build what is missing
#        tests/cluster/build.sh --node     the same, plus the node's binaries (above)
#        tests/cluster/build.sh --check    exit 1 (listing what is missing) instead of building
#        tests/cluster/build.sh --node --check
#        tests/cluster/build.sh --print-dir   print the cache directory and exit
# Env:   BUILD_JOBS (default 2) = go build -p; K8S_KUBECTL=/path to force a kubectl;
#        K8S_BUILD_KUBECTL=1 to build kubectl even when the machine has one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$HERE/versions.env"

CACHE_ROOT=${DEVOPS_MODEL_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devops-model/k8s}
CACHE=$CACHE_ROOT/$K8S_VERSION
BIN=$CACHE/bin
# Keyed by the Kubeflow versions: checkouts pinning different versions share the cache without
# refetching over each other (tests/cluster/controlplane.py kubeflow_crd_dir() names the same).
CRDS=$CACHE/kubeflow-crds/training-operator-$TRAINING_OPERATOR_VERSION.trainer-$TRAINER_VERSION
SRC=$CACHE/src

MODE=build
NODE=${CLUSTER_NODE:-0}
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --node) NODE=1 ;;
    --print-dir) echo "$CACHE"; exit 0 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[cluster-build] %s\n' "$*" >&2; }
die() { printf '[cluster-build] ERROR: %s\n' "$*" >&2; exit 1; }

K8S_MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
STAGING_VERSION="v0.${K8S_VERSION#v1.}"   # v1.37.2 -> v0.37.2

# --- what "complete" means -------------------------------------------------------------------
# Each artifact has a stamp file naming what it was built from; a changed pin rebuilds it.
stamp_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy) echo "k8s.io/kubernetes $K8S_VERSION" ;;
    training-operator) echo "github.com/kubeflow/training-operator $TRAINING_OPERATOR_VERSION" ;;
    coredns) echo "github.com/coredns/coredns $COREDNS_VERSION bind,ready,health,errors,cache,kubernetes" ;;
    etcd) echo "go.etcd.io/etcd/server/v3 $ETCD_VERSION" ;;
    helm) echo "helm.sh/helm/v3 $HELM_VERSION" ;;
    kubectl) echo "kubectl $K8S_VERSION" ;;   # built, or a machine kubectl within one minor
    crds) echo "training-operator $TRAINING_OPERATOR_VERSION trainer $TRAINER_VERSION" ;;
  esac
}
is_done() {
  local name=$1 stamp="$BIN/.$1.stamp"
  if [ "$name" = crds ]; then
    # The directory is the key; its own stamp says the fetch completed.
    [ -f "$CRDS/kubeflow.org_pytorchjobs.yaml" ] && [ -f "$CRDS/trainer.kubeflow.org_trainjobs.yaml" ] \
      && [ -f "$CRDS/.stamp" ] && [ "$(head -n1 "$CRDS/.stamp")" = "$(stamp_of crds)" ]
    return
  else
    [ -x "$BIN/$name" ] || return 1
  fi
  [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$(stamp_of "$name")" ]
}
mark_done() { mkdir -p "$BIN"; stamp_of "$1" > "$BIN/.$1.stamp"; }

ARTIFACTS=(etcd kube-apiserver kube-controller-manager kubectl helm crds)
[ "$NODE" = 1 ] && ARTIFACTS+=(kube-scheduler kubelet kube-proxy training-operator coredns)
missing=()
for a in "${ARTIFACTS[@]}"; do is_done "$a" || missing+=("$a"); done

if [ ${#missing[@]} -eq 0 ]; then
  log "all binaries cached in $BIN (kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION)"
  exit 0
fi
if [ "$MODE" = check ]; then
  if [ "$NODE" = 1 ]; then
    log "missing in $CACHE: ${missing[*]} -- run 'make cluster-build NODE=1' (tests/cluster/build.sh --node)"
  else
    log "missing in $CACHE: ${missing[*]} -- run 'make cluster-build' (tests/cluster/build.sh)"
  fi
  exit 1
fi

# --- one build at a time per cache (make and the pytest fixture may both call this) ------------
mkdir -p "$CACHE" "$BIN" "$CRDS" "$SRC"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  log "another build.sh is running on $CACHE; waiting for it"
  flock 9
fi
# Re-check after the lock: the other build may have done the work.
missing=()
for a in "${ARTIFACTS[@]}"; do is_done "$a" || missing+=("$a"); done
[ ${#missing[@]} -eq 0 ] && { log "all binaries cached in $BIN"; exit 0; }

# --- Go environment ------------------------------------------------------------------------------
command -v go >/dev/null || die "Go is not installed (needed to build the control plane from the Go module proxy)"
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-p=${BUILD_JOBS:-2} -buildvcs=false -mod=mod"
GO_LOCAL=$(go env GOVERSION); GO_LOCAL=${GO_LOCAL#go}
log "go $GO_LOCAL, GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE), GOFLAGS=$GOFLAGS"

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
# module_json MODULE@VERSION FIELD -> prints that field of `go mod download -json`
module_field() {
  go mod download -json "$1" | python3 -c 'import json,sys
v = json.load(sys.stdin).get(sys.argv[1]) or ""
print(v if isinstance(v, str) else json.dumps(v))' "$2"
}
# The go directive and godebug lines of a module's go.mod (so the generated module builds with the
# same language version and GODEBUG defaults as upstream's own build).
go_directive() {
  local v; v=$(awk '$1=="go"{print $2; exit}' "$1")
  version_ge "$GO_LOCAL" "$v" || die "$1 needs go >= $v, this machine has go $GO_LOCAL (GOTOOLCHAIN=local: no toolchain download)"
  echo "$v"
}

SECONDS_TOTAL_START=$SECONDS
timed() {  # timed LABEL cmd...
  local label=$1; shift
  local t0=$SECONDS
  log "building $label ..."
  "$@"
  log "built $label in $((SECONDS - t0))s"
}

# go_build DIR PKG OUT LDFLAGS
go_build() {
  local dir=$1 pkg=$2 out=$3 ldflags=$4
  (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/.tmp.$out" "$pkg")
  mv -f "$BIN/.tmp.$out" "$BIN/$out"
}

# --- k8s.io/kubernetes: generated module --------------------------------------------------------
K8S_SRC=$SRC/kubernetes
prepare_kubernetes() {
  [ -f "$K8S_SRC/.ready" ] && [ "$(cat "$K8S_SRC/.ready")" = "$K8S_VERSION" ] && return 0
  log "generating $K8S_SRC/go.mod for k8s.io/kubernetes $K8S_VERSION (staging modules -> $STAGING_VERSION)"
  local gomod; gomod=$(module_field "k8s.io/kubernetes@$K8S_VERSION" GoMod)
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
  local godir; godir=$(go_directive "$gomod")
  local staging; staging=$(awk '$2=="=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod" | sort -u)
  [ -n "$staging" ] || die "no './staging/...' replace directives found in $gomod"
  rm -rf "$K8S_SRC"; mkdir -p "$K8S_SRC"
  {
    echo "// Generated by tests/cluster/build.sh: builds k8s.io/kubernetes $K8S_VERSION from the Go module proxy."
    echo "module devops-model.local/k8s-build"
    echo
    echo "go $godir"
    echo
    grep '^godebug' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "tool ("
    echo "	k8s.io/kubernetes/cmd/kube-apiserver"
    echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
    echo "	k8s.io/kubernetes/cmd/kubectl"
    echo ")"
    echo
    echo "// Every staging module of k8s.io/kubernetes' own go.mod ('=> ./staging/...'), at its published version."
    echo "replace ("
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"; done
    echo ")"
  } > "$K8S_SRC/go.mod"
  log "$(echo "$staging" | wc -l) staging modules replaced; resolving dependencies (go mod tidy)"
  (cd "$K8S_SRC" && go mod tidy)
  echo "$K8S_VERSION" > "$K8S_SRC/.ready"
}
k8s_ldflags() {
  local commit; commit=$(module_field "k8s.io/kubernetes@$K8S_VERSION" Origin 2>/dev/null | python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read()).get("Hash", ""))
except Exception: print("")' || true)
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local f=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
    f+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
    [ -n "$commit" ] && f+=" -X $p.gitCommit=$commit"
  done
  echo "$f"
}
build_k8s_binary() {
  prepare_kubernetes
  go_build "$K8S_SRC" "k8s.io/kubernetes/cmd/$1" "$1" "$(k8s_ldflags)"
  mark_done "$1"
}

# --- kubectl: the machine's if its minor version is within one of the server's --------------------
machine_kubectl() {
  [ "${K8S_BUILD_KUBECTL:-0}" = 1 ] && return 1
  local k=${K8S_KUBECTL:-$(command -v kubectl || true)}
  [ -n "$k" ] && [ -x "$k" ] || return 1
  [ -n "${K8S_KUBECTL:-}" ] && { echo "$k"; return 0; }
  local minor; minor=$(timeout 20 "$k" version --client -o json 2>/dev/null \
    | python3 -c 'import json,re,sys; print(re.match(r"\d+", json.load(sys.stdin)["clientVersion"]["minor"]).group(0))' 2>/dev/null) || return 1
  local skew=$(( minor > K8S_MINOR ? minor - K8S_MINOR : K8S_MINOR - minor ))
  if [ "$skew" -le 1 ]; then echo "$k"; return 0; fi
  log "machine kubectl $k is 1.$minor, outside the supported +-1 minor skew of $K8S_VERSION: building kubectl"
  return 1
}
provide_kubectl() {
  local k
  if k=$(machine_kubectl); then
    log "kubectl: using the machine's $k"
    ln -sfn "$k" "$BIN/kubectl"
    mark_done kubectl
  else
    timed "kubectl (k8s.io/kubernetes $K8S_VERSION)" build_k8s_binary kubectl
  fi
}

# --- etcd ----------------------------------------------------------------------------------------
build_etcd() {
  local dir=$SRC/etcd
  if ! [ -f "$dir/.ready" ] || [ "$(cat "$dir/.ready")" != "$ETCD_VERSION" ]; then
    local gomod; gomod=$(module_field "go.etcd.io/etcd/server/v3@$ETCD_VERSION" GoMod)
    [ -f "$gomod" ] || die "could not download go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    rm -rf "$dir"; mkdir -p "$dir"
    printf 'module devops-model.local/etcd-build\n\ngo %s\n\nrequire go.etcd.io/etcd/server/v3 %s\n\ntool go.etcd.io/etcd/server/v3\n' \
      "$(go_directive "$gomod")" "$ETCD_VERSION" > "$dir/go.mod"
    (cd "$dir" && go mod tidy)
    echo "$ETCD_VERSION" > "$dir/.ready"
  fi
  go_build "$dir" go.etcd.io/etcd/server/v3 etcd ""
  mark_done etcd
}

# --- helm ----------------------------------------------------------------------------------------
build_helm() {
  local dir=$SRC/helm
  if ! [ -f "$dir/.ready" ] || [ "$(cat "$dir/.ready")" != "$HELM_VERSION" ]; then
    local gomod; gomod=$(module_field "helm.sh/helm/v3@$HELM_VERSION" GoMod)
    [ -f "$gomod" ] || die "could not download helm.sh/helm/v3@$HELM_VERSION"
    rm -rf "$dir"; mkdir -p "$dir"
    printf 'module devops-model.local/helm-build\n\ngo %s\n\nrequire helm.sh/helm/v3 %s\n\ntool helm.sh/helm/v3/cmd/helm\n' \
      "$(go_directive "$gomod")" "$HELM_VERSION" > "$dir/go.mod"
    (cd "$dir" && go mod tidy)
    echo "$HELM_VERSION" > "$dir/.ready"
  fi
  go_build "$dir" helm.sh/helm/v3/cmd/helm helm \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
     -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR \
     -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"
  mark_done helm
}

# --- Kubeflow CRDs from the modules' own manifests -------------------------------------------------
fetch_crds() {
  local d
  d=$(module_field "github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION" Dir)
  [ -f "$d/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" ] \
    || die "kubeflow.org_pytorchjobs.yaml not found in github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION ($d)"
  local tmp; tmp=$(mktemp -d "$CACHE/.crds.XXXXXX")
  cp "$d/manifests/base/crds/kubeflow.org_pytorchjobs.yaml" "$tmp/"
  log "PyTorchJob CRD from github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION"
  d=$(module_field "github.com/kubeflow/trainer/v2@$TRAINER_VERSION" Dir)
  local f
  for f in trainjobs trainingruntimes clustertrainingruntimes; do
    [ -f "$d/manifests/base/crds/trainer.kubeflow.org_$f.yaml" ] \
      || die "trainer.kubeflow.org_$f.yaml not found in github.com/kubeflow/trainer/v2@$TRAINER_VERSION ($d)"
    cp "$d/manifests/base/crds/trainer.kubeflow.org_$f.yaml" "$tmp/"
  done
  log "TrainJob, TrainingRuntime, ClusterTrainingRuntime CRDs from github.com/kubeflow/trainer/v2@$TRAINER_VERSION"
  chmod 644 "$tmp"/*.yaml
  stamp_of crds > "$tmp/.stamp"
  rm -rf "$CRDS"; mkdir -p "$(dirname "$CRDS")"; mv "$tmp" "$CRDS"
}

# --- Kubeflow training-operator (the PyTorchJob controller) --------------------------------------
build_training_operator() {
  local dir=$SRC/training-operator
  if ! [ -f "$dir/.ready" ] || [ "$(cat "$dir/.ready")" != "$TRAINING_OPERATOR_VERSION" ]; then
    local gomod; gomod=$(module_field "github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION" GoMod)
    [ -f "$gomod" ] || die "could not download github.com/kubeflow/training-operator@$TRAINING_OPERATOR_VERSION"
    rm -rf "$dir"; mkdir -p "$dir"
    # Its own go.mod's replace directives (if any) must apply here too, since this is the main module.
    {
      printf 'module devops-model.local/training-operator-build\n\ngo %s\n\nrequire github.com/kubeflow/training-operator %s\n\n' \
        "$(go_directive "$gomod")" "$TRAINING_OPERATOR_VERSION"
      printf 'tool github.com/kubeflow/training-operator/cmd/training-operator.v1\n\n'
      awk '/^replace \(/{r=1; print; next} r&&/^\)/{r=0; print; next} r||/^replace /{print}' "$gomod"
    } > "$dir/go.mod"
    (cd "$dir" && go mod tidy)
    echo "$TRAINING_OPERATOR_VERSION" > "$dir/.ready"
  fi
  go_build "$dir" github.com/kubeflow/training-operator/cmd/training-operator.v1 training-operator ""
  mark_done training-operator
}

# --- CoreDNS with only the plugins the node's cluster DNS uses -------------------------------------
# CoreDNS compiles its plugins in; the stock binary links every cloud DNS provider. This main package
# registers only the six plugins the node's Corefile uses, in CoreDNS' own directive order (plugin.cfg).
# No `forward`: a name outside cluster.local gets no answer, so nothing is ever asked off the machine.
build_coredns() {
  local dir=$SRC/coredns
  if ! [ -f "$dir/.ready" ] || [ "$(cat "$dir/.ready")" != "$COREDNS_VERSION" ]; then
    local gomod; gomod=$(module_field "github.com/coredns/coredns@$COREDNS_VERSION" GoMod)
    [ -f "$gomod" ] || die "could not download github.com/coredns/coredns@$COREDNS_VERSION"
    rm -rf "$dir"; mkdir -p "$dir"
    printf 'module devops-model.local/coredns-build\n\ngo %s\n\nrequire github.com/coredns/coredns %s\n' \
      "$(go_directive "$gomod")" "$COREDNS_VERSION" > "$dir/go.mod"
    cat > "$dir/main.go" <<'GO'
// Generated by tests/cluster/build.sh: CoreDNS with the plugins of the node's Corefile only.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
    (cd "$dir" && go mod tidy)
    echo "$COREDNS_VERSION" > "$dir/.ready"
  fi
  go_build "$dir" . coredns ""
  mark_done coredns
}

log "building into $CACHE: ${missing[*]}"
for a in "${missing[@]}"; do
  case "$a" in
    etcd) timed "etcd $ETCD_VERSION (go.etcd.io/etcd/server/v3)" build_etcd ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy)
      timed "$a (k8s.io/kubernetes $K8S_VERSION)" build_k8s_binary "$a" ;;
    training-operator) timed "training-operator $TRAINING_OPERATOR_VERSION" build_training_operator ;;
    coredns) timed "coredns $COREDNS_VERSION (plugins: bind ready health errors cache kubernetes)" build_coredns ;;
    kubectl) provide_kubectl ;;
    helm) timed "helm $HELM_VERSION (helm.sh/helm/v3/cmd/helm)" build_helm ;;
    crds) fetch_crds ;;
  esac
done
log "done in $((SECONDS - SECONDS_TOTAL_START))s; binaries in $BIN, Kubeflow CRDs in $CRDS"
ls -l "$BIN" >&2
