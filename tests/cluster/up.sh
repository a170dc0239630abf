#!/usr/bin/env bash
# Starts etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 (state and the admin kubeconfig in
# .cluster/ of the repository), then applies the Kubeflow CRDs and crds/. Idempotent: when it is already
# up, it says so. Ports: CLUSTER_ETCD_PORT, CLUSTER_ETCD_PEER_PORT, CLUSTER_APISERVER_PORT,
# CLUSTER_CONTROLLER_MANAGER_PORT; state directory: CLUSTER_DIR. See docs/control-plane.md.
# With --node (make cluster-up NODE=1) a node joins it: tests/cluster/node.py.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE_ARG=""
for a in "$@"; do [ "$a" = --node ] && NODE_ARG=--node; done
if ! bash "$HERE/build.sh" --check $NODE_ARG 2>/dev/null; then
  bash "$HERE/build.sh" --check $NODE_ARG || true
  echo "[cluster] ERROR: the binaries are not built yet: run 'make cluster-build${NODE_ARG:+ NODE=1}' first" >&2
  exit 1
fi
exec python3 "$HERE/controlplane.py" up "$@"
