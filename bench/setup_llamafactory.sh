#!/usr/bin/env bash
# Creates the separate venv of bench/train.py's LLaMA-Factory anchor (outside the repo: LLaMA-Factory
# 0.9.5 pins transformers<=5.6, trl<=0.24, peft<=0.18, accelerate<=1.11, datasets<=4.0, which conflict
# with this project's pins). The torch pin is the project's, so uv reuses its cached wheels.
#
#     bench/setup_llamafactory.sh            # then: .venv/bin/python bench/train.py
#
# DEVOPS_MODEL_LF_VENV overrides the location (bench/train.py reads the same variable);
# PYTHON the interpreter (LLaMA-Factory needs Python >= 3.11; default: the project's .venv python).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEVOPS_MODEL_LF_VENV:-$HOME/.cache/devops-model/bench-llamafactory-venv}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
PINS=(
  llamafactory==0.9.5 torch==2.15.0 transformers==5.6.0 trl==0.24.0 peft==0.18.1 accelerate==1.11.0
  datasets==4.0.0 torchvision==0.29.2 torchaudio==2.11.1 torchdata==0.11.0 tensorboard==2.21.0
)
if command -v uv >/dev/null; then
  [ -x "$VENV/bin/python" ] || uv venv -p "$PY" "$VENV"
  uv pip install -p "$VENV/bin/python" "${PINS[@]}"
else
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install "${PINS[@]}"
fi
"$VENV/bin/python" -c "import llamafactory, transformers; print('LLaMA-Factory', llamafactory.__version__, 'transformers', transformers.__version__)"
