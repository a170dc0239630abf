"""Children of a ChatDeployment: Deployment + Service (+ NetworkPolicy). What differs between
vLLM (default), TGI and the built-in server — command, flags, image, API key variables, health
route, web chat — is their record in :mod:`devops_model.engines` (docs/serving.md).

Each engine answers its health route with 200 once the model is loaded: a startup probe sized for
loading a model (``serving.startupTimeoutSeconds``), then readiness and liveness on the same route.
Chat pods never report to the API server, so they mount no ServiceAccount token.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from devops_model.api.chat import ChatDeployment
from devops_model.contract import SPEC_DIR, SPEC_FILE, TERMINATION_LOG
from devops_model.conventions import engine_settings
from devops_model.engines import ENGINES, engine_port, web_chat_sidecar

from ..config import OperatorConfig
from ..naming import child_metadata, child_name, namespace_of, run_labels, selector_labels, service_name
from .pods import (
    compute_resources,
    container_security_context,
    model_path,
    pod_template,
    secret_env_from,
    volumes_and_mounts,
    workload_env,
)


def served_model_name(chat: ChatDeployment) -> str:
    return chat.spec.served_model_name or chat.metadata.name


def engine_image(chat: ChatDeployment, config: OperatorConfig) -> str:
    if chat.spec.engine.image:
        return chat.spec.engine.image
    return str(getattr(config.images, ENGINES[chat.spec.engine.name].image_key))


def deployment_name(chat: ChatDeployment) -> str:
    return child_name(chat.metadata.name)


def probes(port_name: str, config: OperatorConfig, path: str = "/health") -> dict[str, Any]:
    period = config.serving.probe_period_seconds
    def get() -> dict[str, Any]:  # a fresh dict each: shared ones become YAML anchors in the output
        return {"httpGet": {"path": path, "port": port_name}}

    return {
        # Loading a model takes minutes; liveness must not kill the pod meanwhile.
        "startupProbe": {**get(), "periodSeconds": period, "timeoutSeconds": 5,
                         "failureThreshold": math.ceil(config.serving.startup_timeout_seconds / period)},
        "readinessProbe": {**get(), "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**get(), "periodSeconds": period * 3, "timeoutSeconds": 10, "failureThreshold": 5},
    }


def build_deployment(chat: ChatDeployment, config: OperatorConfig, *, model_uri: str, claims: list[str],
                     artifact_format: str | None, config_hash: str,
                     artifact: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = chat.spec
    engine = ENGINES[spec.engine.name]
    # vLLM and TGI download hub ids themselves; the built-in server runs the worker entry point,
    # which materialises the model (hub, ModelScope, S3, PVC) with the same code as a local run.
    model = model_path(model_uri, config)
    args = engine.args(spec, model, served_model_name(chat), artifact_format)
    if engine.loads_hub_ids:
        # The chat conventions the model was tuned with (template, stop ids via generation config) and
        # the hub revision: devops_model.conventions decides them from the artifact record.
        args += engine_settings(dict(artifact or {"uri": model_uri}), engine.name).args
    args += list(spec.engine.extra_args or [])
    volumes, mounts = volumes_and_mounts(chat, config, claims, shared_memory=spec.resources.shared_memory)
    env = workload_env(chat, config, 0)
    env += [{"name": name, "value": value} for name, value in engine.env_from_spec(spec)]
    if model_uri.startswith("modelscope://") and engine.modelscope_env:
        env.append({"name": engine.modelscope_env, "value": "True"})
    if spec.auth is not None:
        ref = {"secretKeyRef": {"name": spec.auth.api_key_secret.name, "key": spec.auth.api_key_secret.key}}
        env += [{"name": name, "valueFrom": ref} for name in engine.api_key_env]
    sidecar = web_chat_sidecar(spec)
    # With the web chat sidecar, the sidecar owns spec.port (the Service's "http") and the engine
    # listens on engine_port inside the pod only.
    port_name = "engine" if sidecar else "http"
    container: dict[str, Any] = {
        "name": "server",
        "image": engine_image(chat, config),
        "imagePullPolicy": config.images.pull_policy,
        "command": list(engine.command),
        **({"args": args} if args else {}),
        "ports": [{"name": port_name, "containerPort": engine_port(spec), "protocol": "TCP"}],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        **probes(port_name, config, engine.health_path),
    }
    env_from = secret_env_from(chat)
    if env_from:
        container["envFrom"] = env_from
    res = compute_resources(spec.resources)
    if res:
        container["resources"] = res
    # The ConfigMap's hash in the pod template: a new model or lineage rolls the pods.
    template = pod_template(chat, config, container, component="server", volumes=volumes,
                            restart_policy="Always", service_account=config.serving.service_account or "default",
                            automount_token=False,
                            annotations={"devops-model.io/config-hash": config_hash})
    template["metadata"]["labels"].update(selector_labels(chat))
    if engine.loads_hub_ids and artifact:
        template["spec"]["initContainers"] = [verify_container(chat, config, mounts)]
    if sidecar:
        template["spec"]["containers"].append(web_chat_container(chat, config, mounts))
    gpus = spec.resources.gpus_per_node > 0
    meta = child_metadata(chat, deployment_name(chat), run_labels(chat, "server"))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(chat)},
            # GPU servers: no spare GPUs are assumed, so replace one pod at a time (maxSurge 0);
            # CPU servers surge one new pod first so that the service never drops to zero.
            "strategy": {"type": "RollingUpdate", "rollingUpdate":
                         {"maxSurge": 0, "maxUnavailable": 1} if gpus else {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


def verify_container(chat: ChatDeployment, config: OperatorConfig, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """vLLM and TGI load the model themselves, so nothing in them checks that a run's artifact is the one
    it sealed, as every run and the built-in server do before using it. This init container (the serve
    image) makes that check (``devops_workloads.runner --verify-only``: the parent's digests) and fails
    the pod with the differing file named, before the engine reads a byte. It gets the server's CPU and
    memory (hashing a 7B model takes a while; init containers do not add to the pod's request) but no GPU."""
    res = compute_resources(chat.spec.resources.model_copy(update={"gpus_per_node": 0}))
    container: dict[str, Any] = {
        "name": "verify-model",
        "image": config.images.serve,
        "imagePullPolicy": config.images.pull_policy,
        "command": ["python", "-m", "devops_workloads.runner", "-f", SPEC_FILE, "--verify-only"],
        "env": workload_env(chat, config, 0),  # the storage root, the cache; no engine setting, no API key
        "volumeMounts": [dict(m) for m in mounts],
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if res:
        container["resources"] = res
    return container


def web_chat_container(chat: ChatDeployment, config: OperatorConfig,
                       mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The web chat sidecar next to vLLM or TGI (``devops-model serve --upstream``, docs/serving.md):
    the page at /, /v1/info with the lineage file of the spec ConfigMap, every other route passed to
    the engine unchanged (the API key too, so the engine still checks it; /v1/info asks the engine's
    /v1/models with the caller's key first). Readiness is the engine's /health through the sidecar,
    so the pod is ready when both are; liveness is the sidecar's own /livez."""
    spec = chat.spec
    period = config.serving.probe_period_seconds
    local = {"httpGet": {"path": "/livez", "port": "http"}}
    return {
        "name": "web",
        "image": config.images.serve,
        "imagePullPolicy": config.images.pull_policy,
        "command": ["devops-model", "serve", "--upstream", f"http://127.0.0.1:{engine_port(spec)}",
                    "--host", "0.0.0.0", "--port", str(spec.port),
                    "--lineage-file", f"{SPEC_DIR}/lineage.json",
                    "--served-model-name", served_model_name(chat), "--engine-name", spec.engine.name],
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        # The lineage file and a writable /tmp (the root file system is read-only); no model, no claims.
        "volumeMounts": [m for m in mounts if m["name"] in ("spec", "tmp")],
        "securityContext": container_security_context(),
        # No model is loaded here: a small fixed budget (requests == limits).
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                      "limits": {"cpu": "500m", "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period,
                           "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**local, "periodSeconds": period * 3, "timeoutSeconds": 5, "failureThreshold": 5},
    }


def build_service(chat: ChatDeployment, config: OperatorConfig) -> dict[str, Any]:
    meta = child_metadata(chat, service_name(chat.metadata.name), run_labels(chat, "server"))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": config.serving.service_type,
            "selector": selector_labels(chat),
            "ports": [{"name": "http", "port": chat.spec.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_network_policy(chat: ChatDeployment) -> dict[str, Any]:
    """Only pods of the same namespace may reach the chat pods."""
    meta = child_metadata(chat, child_name(chat.metadata.name, "ingress"), run_labels(chat, "server"))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {
            "podSelector": {"matchLabels": selector_labels(chat)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {}}],
                         "ports": [{"port": chat.spec.port, "protocol": "TCP"}]}],
        },
    }


def endpoint(chat: ChatDeployment) -> dict[str, Any]:
    url = f"http://{service_name(chat.metadata.name)}.{namespace_of(chat)}.svc:{chat.spec.port}"
    out = {"url": url, "model": served_model_name(chat)}
    if chat.spec.ui == "enabled":  # served by the builtin server itself, or by the web chat sidecar
        out["ui"] = url + "/"
    return out


def config_hash(configmap: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(configmap["data"], sort_keys=True).encode()).hexdigest()[:16]
