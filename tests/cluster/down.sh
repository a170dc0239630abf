#!/usr/bin/env bash
# Stops the control plane started by up.sh (pid files in .cluster/pids/) and removes its state.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec python3 "$HERE/controlplane.py" down "$@"
