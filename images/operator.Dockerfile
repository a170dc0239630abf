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
RUN python -m venv /opt/venv && /opt/venv/bin/pip install uv==0.13.9
COPY images/requirements/operator.txt /tmp/requirements.txt
RUN /opt/venv/bin/uv pip install --python /opt/venv/bin/python --no-cache -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY devops_model /src/devops_model
COPY operator /src/operator
COPY workloads /src/workloads
# --no-deps: everything it needs is in the lock file above; nothing unpinned is resolved here.
RUN /opt/venv/bin/uv pip install --python /opt/venv/bin/python --no-cache --no-deps /src \
    && /opt/venv/bin/pip uninstall -y uv \
    # Bytecode now, so nothing is written at run time (read-only root file system).
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="devops-model operator" \
      org.opencontainers.image.description="Kubernetes operator of the DevOps-Model platform (kopf)" \
      org.opencontainers.image.source="https://github.com/devops-model/devops-model" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
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
