# syntax=docker/dockerfile:1.7
# The operator image: `devops-model operator` (kopf), no torch, non-root, runs with a read-only root
# file system (the chart mounts an emptyDir at /tmp, the only place it writes).
#
#   docker build -f images/operator.Dockerfile -t ghcr.io/devops-model/operator:0.1.0 .
#
# Build context: the repository root. Python packages: images/requirements/operator.txt, generated
# from pyproject.toml's `operator` extra by images/requirements.py (tests/deploy/test_images.py checks it).

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# A CA bundle for a TLS-inspecting proxy, when the build machine needs one (mounted, never copied in).
ARG SSL_CERT_FILE
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# uv lives outside the venv the image ships (/opt/tools, build stages only).
RUN python -m venv /opt/venv && python -m venv /opt/tools && /opt/tools/bin/pip install uv==0.13.9
COPY images/requirements/operator.txt /tmp/requirements.txt
RUN /opt/tools/bin/uv pip install --python /opt/venv/bin/python --no-cache -r /tmp/requirements.txt \
    # Bytecode now, so nothing is written at run time (read-only root file system).
    && /opt/venv/bin/python -m compileall -q /opt/venv

# The project as a wheel, in a stage of its own: a change to the code rebuilds this small stage and the
# small layers below, while the dependency layers above (and their cached build layers) stay as they are.
FROM build AS project
ARG SSL_CERT_FILE
ARG PIP_CERT
COPY pyproject.toml README.md /src/
COPY devops_model /src/devops_model
COPY operator /src/operator
COPY workloads /src/workloads
COPY cli /src/cli
RUN /opt/tools/bin/uv build --wheel --out-dir /wheels /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="devops-model operator" \
      org.opencontainers.image.description="Kubernetes operator of the DevOps-Model platform (kopf)" \
      org.opencontainers.image.source="https://github.com/devops-model/devops-model" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
COPY --from=project /wheels /opt/devops-model/wheels
# --no-deps: everything it needs is in the lock file above; nothing unpinned is resolved here.
# Bytecode now, so nothing is written at run time (read-only root file system).
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/python -m pip install --no-deps --no-index \
        --no-compile /opt/devops-model/wheels/*.whl \
    && SITE=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && /opt/venv/bin/python -m compileall -q "$SITE"/devops_model "$SITE"/devops_operator "$SITE"/devops_workloads "$SITE"/devops_cli
# UID 10001: the chart's operator.runAsUser; no login shell, no home outside /tmp.
RUN groupadd --gid 10001 devops-model \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin devops-model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["devops-model"]
CMD ["operator"]
