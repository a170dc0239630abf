# syntax=docker/dockerfile:1.7
# The built-in chat server (ChatDeployment engine.name: builtin): `devops-model serve`, an
# OpenAI-compatible API with streaming, /health, /metrics and the web chat (docs/serving.md).
#
#   docker build -f images/serve.Dockerfile -t ghcr.io/devops-model/serve:0.1.0 .
#
# It serves what the life cycle produces: plain and LoRA-merged models, LoRA adapters (peft) and GPTQ
# int4 models (GPTQModel's kernels, compiled in the devel stage like in the workload image). CUDA's
# runtime comes with torch's wheels (nvidia-* packages in the lock file). Python packages:
# images/requirements/serve.txt, generated from pyproject.toml's serve extra and constraints.txt by
# images/requirements.py (tests/deploy/test_images.py checks it). Pods run it as UID 1000 with a read-only
# root file system.

# The base is a build argument: CUDA by default (GPU clusters); the CPU variant that the local node
# runs (tests/cluster/images.py) passes a Debian base made with debootstrap and its Python, python3.13
# (the lock resolves to the same pins for 3.12 and 3.13). Every other line is shared.
ARG BASE_DEVEL_IMAGE=nvidia/cuda:13.0.2-cudnn-devel-ubuntu24.04
ARG BASE_RUNTIME_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON=python3.12

FROM ${BASE_DEVEL_IMAGE} AS build
# A CA bundle for a TLS-inspecting proxy, when the build machine needs one (mounted, never copied in).
ARG SSL_CERT_FILE
ARG PIP_CERT
ARG PYTHON
# uv's cache: off by default; a local build may mount one (UV_NO_CACHE=0 UV_CACHE_DIR=... UV_LINK_MODE=copy).
ARG UV_NO_CACHE=1
ARG UV_CACHE_DIR
ARG UV_LINK_MODE
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${PYTHON} ${PYTHON}-venv ${PYTHON}-dev build-essential ninja-build \
    && rm -rf /var/lib/apt/lists/*
# uv lives outside the venv the image ships (/opt/tools, build stages only).
RUN ${PYTHON} -m venv /opt/venv && ${PYTHON} -m venv /opt/tools && /opt/tools/bin/pip install uv==0.13.9
COPY images/requirements/serve.txt /tmp/requirements.txt
ENV TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0;10.0" MAX_JOBS=8
RUN /opt/tools/bin/uv pip install --python /opt/venv/bin/python \
        -r /tmp/requirements.txt --no-build-isolation-package gptqmodel --compile-bytecode

# GPTQModel compiles its CPU torch.ops extensions (int4 packing; the int4 kernel on CPUs with AVX512-BF16) the
# first time a process needs them: minutes of a pod's CPU, in every pod (its cache is an emptyDir), and the
# serve image has no compiler. They are built here with GPTQModel's own loader and flags (explicit -m flags,
# not -march=native: they suit any CPU with those features; the AVX512-BF16 kernel only when the build CPU
# has it, as GPTQModel itself decides), and a process copies them into GPTQModel's cache before importing
# it (devops_workloads/gptq_ops.py). GPTQMODEL_PREBUILD_CPU_OPS=0 leaves them to the first use.
ARG GPTQMODEL_PREBUILD_CPU_OPS=1
RUN mkdir -p /opt/gptqmodel-ops \
    && if [ "${GPTQMODEL_PREBUILD_CPU_OPS}" = 1 ]; then \
        GPTQMODEL_TORCH_EXTENSIONS_DIR=/opt/gptqmodel-ops /opt/venv/bin/python -c "\
from gptqmodel import extension as e; from gptqmodel.utils.cpu_features import has_avx512_bf16; \
names = ['pack_block_cpu'] + (['int4_qzero_group_scaled_cpu'] if has_avx512_bf16() else []); \
built = {n: e.is_available(n) for n in names}; print('gptqmodel CPU ops prebuilt:', built); \
assert all(built.values()), {n: e.error(n) for n in names}" \
        && find /opt/gptqmodel-ops -type f ! -name '*.so' -delete; \
    fi

# The project as a wheel, in a stage of its own: a change to the code rebuilds this small stage and the
# small layers below, while the dependency layers above (and their cached build layers) stay as they are.
FROM build AS project
ARG SSL_CERT_FILE
ARG PIP_CERT
ARG UV_NO_CACHE=1
ARG UV_CACHE_DIR
ARG UV_LINK_MODE
COPY pyproject.toml README.md /src/
COPY devops_model /src/devops_model
COPY operator /src/operator
COPY workloads /src/workloads
COPY cli /src/cli
RUN /opt/tools/bin/uv build --wheel --out-dir /wheels /src

FROM ${BASE_RUNTIME_IMAGE}
ARG PYTHON
LABEL org.opencontainers.image.title="devops-model serve" \
      org.opencontainers.image.description="Built-in OpenAI-compatible chat server of the DevOps-Model platform" \
      org.opencontainers.image.source="https://github.com/devops-model/devops-model" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${PYTHON} libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/gptqmodel-ops /opt/gptqmodel-ops
COPY --from=project /wheels /opt/devops-model/wheels
# --no-deps: everything it needs is in the lock file above; nothing unpinned is resolved here.
# Bytecode now, so nothing is written at run time (read-only root file system).
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/python -m pip install --no-deps --no-index \
        --no-compile /opt/devops-model/wheels/*.whl \
    && SITE=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && /opt/venv/bin/python -m compileall -q "$SITE"/devops_model "$SITE"/devops_operator "$SITE"/devops_workloads "$SITE"/devops_cli
RUN if getent passwd 1000 >/dev/null; then \
        usermod --login devops-model --home /tmp --shell /usr/sbin/nologin "$(getent passwd 1000 | cut -d: -f1)" \
        && groupmod --new-name devops-model "$(getent group 1000 | cut -d: -f1)"; \
    else \
        groupadd --gid 1000 devops-model \
        && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin devops-model; \
    fi
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DEVOPS_MODEL_GPTQMODEL_OPS=/opt/gptqmodel-ops
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT ["devops-model"]
# The operator sets the command and arguments; this default serves a model mounted at /models/model.
CMD ["serve", "--model", "/models/model", "--host", "0.0.0.0", "--port", "8000"]
