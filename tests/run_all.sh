#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it. Sets up what the tests need first: the control-plane
# and node binaries (cached in ~/.cache/devops-model, built once per machine), the node's Debian packages,
# the images (cached by input hash) and Debian's Chromium for the browser tests. A missing prerequisite is
# a failure, never a skip. DEVOPS_MODEL_TEST_NODE=1 (`make test-node`) runs the real-pods tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DEVOPS_MODEL_NO_PROGRESS=1
# Quantization on CPU: GPTQModel needs to know how many CPU workers to use on a small machine.
export GPTQMODEL_CPU_WORKERS="${GPTQMODEL_CPU_WORKERS:-$(nproc)}"

# The real-pods tests (marker `node`) are part of the suite: their node needs Debian's containerd, runc,
# CNI plugins, buildah and debootstrap (apt), the node binaries, and the images, which build (cached by
# input hash) and go into the node's image store (the node need not run) while Go compiles: each image is
# loaded as soon as it is built, so the disk never holds both torch images' build outputs at once.
echo "== node packages (apt, once per machine)"
bash tests/cluster/node-deps.sh
echo "== images from images/, into the node's store (cached by input hash; log: .images-build.log)"
python3 tests/cluster/images.py load > .images-build.log 2>&1 &
images_pid=$!
echo "== control plane and node binaries (cached after the first build)"
bash tests/cluster/build.sh --node
wait "$images_pid" || { tail -n 40 .images-build.log; echo "error: building the images failed (.images-build.log)"; exit 1; }
tail -n 1 .images-build.log
if [ "${DEVOPS_MODEL_TEST_NODE:-0}" = 1 ]; then  # `make test-node`: the real-pods tests alone
  exec .venv/bin/python -m pytest -p no:cacheprovider -m node tests/cluster/test_images_cache.py tests/e2e/test_real_pods.py "$@"
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing Debian's chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || { echo "error: could not install chromium (apt-get install chromium)"; exit 1; }
fi

echo "== import layers (import-linter) and types (mypy --strict on devops_model and devops_operator)"
.venv/bin/lint-imports
.venv/bin/mypy

echo "== tests"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
