#!/usr/bin/env bash
# Installs (with apt, from Debian) what the node and the image builds need, and checks the release lines
# the node was tested with: containerd 1.6, runc 1.1, containernetworking-plugins 1.1, buildah 1.28
# (Debian 12's). A newer line may work; the check says which one differs instead of failing silently.
#   bash tests/cluster/node-deps.sh          install what is missing, then check
#   bash tests/cluster/node-deps.sh --check  check only (exit 1 when something is missing)
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins iptables iproute2 buildah debootstrap busybox-static file)
declare -A LINE=([containerd]=1.6 [runc]=1.1 [containernetworking-plugins]=1.1 [buildah]=1.28)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${1:-}" = --check ]; then
    echo "[node-deps] missing Debian packages: ${missing[*]} (make node-deps)" >&2; exit 1
  fi
  [ "$(id -u)" = 0 ] || { echo "[node-deps] ERROR: installing ${missing[*]} needs root (apt-get install ${missing[*]})" >&2; exit 1; }
  echo "[node-deps] apt-get install ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for p in "${!LINE[@]}"; do
  v=$(dpkg-query -W -f='${Version}' "$p")
  case "$v" in
    "${LINE[$p]}".*|"${LINE[$p]}"~*|"${LINE[$p]}"+*) ;;
    *) echo "[node-deps] note: $p is $v; the node was tested with the ${LINE[$p]} line (docs/control-plane.md)" >&2 ;;
  esac
done
