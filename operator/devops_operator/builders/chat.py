"""Children of a ChatDeployment: Deployment + Service (+ NetworkPolicy), with one engine builder
per serving engine: vLLM (default), TGI and the built-in server (docs/serving.md).

All three answer ``GET /health`` with 200 once the model is loaded, so the probes are the same:
a startup probe sized for loading a model (``serving.startupTimeoutSeconds``), then readiness and
liveness on the same route.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from devops_model.api.chat import ChatDeployment

from ..config import OperatorConfig
from ..naming import child_name, namespace_of, owner_references, run_labels, selector_labels, service_name
from .pods import (
    SPEC_DIR,
    compute_resources,
    container_security_context,
    model_path,
    pod_template,
    secret_env_from,
    volumes_and_mounts,
    workload_env,
)

API_KEY_ENV = "DEVOPS_MODEL_API_KEY"


def served_model_name(chat: ChatDeployment) -> str:
    return chat.spec.served_model_name or chat.metadata["name"]


def is_gptq(artifact_format: str | None) -> bool:
    return bool(artifact_format) and "gptq" in artifact_format.lower()


def vllm_args(chat: ChatDeployment, model: str, artifact_format: str | None) -> tuple[list[str], list[str]]:
    spec = chat.spec
    args = [
        "--model", model,
        "--served-model-name", served_model_name(chat),
        "--host", "0.0.0.0",
        "--port", str(spec.port),
        "--max-model-len", str(spec.engine.max_model_length),
        "--max-num-seqs", str(spec.engine.max_concurrency),
        "--tensor-parallel-size", str(max(spec.resources.gpus_per_node, 1)),
    ]
    if is_gptq(artifact_format):
        args += ["--quantization", "gptq"]
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    # vLLM's image entrypoint changed between releases; the module is stable.
    return ["python3", "-m", "vllm.entrypoints.openai.api_server"], args


def tgi_args(chat: ChatDeployment, model: str, artifact_format: str | None) -> tuple[list[str], list[str]]:
    spec = chat.spec
    args = [
        "--model-id", model,
        "--hostname", "0.0.0.0",
        "--port", str(spec.port),
        "--max-total-tokens", str(spec.engine.max_model_length),
        "--max-input-tokens", str(spec.engine.max_model_length - 1),
        "--max-concurrent-requests", str(spec.engine.max_concurrency),
        "--num-shard", str(max(spec.resources.gpus_per_node, 1)),
    ]
    if is_gptq(artifact_format):
        args += ["--quantize", "gptq"]
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    return ["text-generation-launcher"], args


def builtin_args(chat: ChatDeployment, model: str, artifact_format: str | None) -> tuple[list[str], list[str]]:
    spec = chat.spec
    args = [
        "--model", model,
        "--host", "0.0.0.0",
        "--port", str(spec.port),
        "--served-model-name", served_model_name(chat),
        "--max-concurrency", str(spec.engine.max_concurrency),
        "--max-model-len", str(spec.engine.max_model_length),
        "--lineage-file", f"{SPEC_DIR}/lineage.json",
    ]
    if spec.ui == "disabled":
        args.append("--no-ui")
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    return ["devops-model", "serve"], args


ENGINES = {"vllm": vllm_args, "tgi": tgi_args, "builtin": builtin_args}


def engine_image(chat: ChatDeployment, config: OperatorConfig) -> str:
    if chat.spec.engine.image:
        return chat.spec.engine.image
    return {"vllm": config.images.vllm, "tgi": config.images.tgi, "builtin": config.images.serve}[chat.spec.engine.name]


def deployment_name(chat: ChatDeployment) -> str:
    return child_name(chat.metadata["name"])


def probes(port_name: str, config: OperatorConfig) -> dict[str, Any]:
    period = config.serving.probe_period_seconds
    get = {"httpGet": {"path": "/health", "port": port_name}}
    return {
        # Loading a model takes minutes; liveness must not kill the pod meanwhile.
        "startupProbe": {**get, "periodSeconds": period, "timeoutSeconds": 5,
                         "failureThreshold": math.ceil(config.serving.startup_timeout_seconds / period)},
        "readinessProbe": {**get, "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**get, "periodSeconds": period * 3, "timeoutSeconds": 10, "failureThreshold": 5},
    }


def build_deployment(chat: ChatDeployment, config: OperatorConfig, *, model_uri: str, claims: list[str],
                     artifact_format: str | None, config_hash: str) -> dict[str, Any]:
    spec = chat.spec
    model = model_path(model_uri, config)
    command, args = ENGINES[spec.engine.name](chat, model, artifact_format)
    args += list(spec.engine.extra_args or [])
    volumes, mounts = volumes_and_mounts(chat, config, claims, shared_memory=spec.resources.shared_memory)
    env = workload_env(chat, config, 0)
    if model_uri.startswith("modelscope://"):
        env.append({"name": "VLLM_USE_MODELSCOPE", "value": "True"})
    if spec.auth is not None:
        ref = {"secretKeyRef": {"name": spec.auth.api_key_secret.name, "key": spec.auth.api_key_secret.key}}
        env.append({"name": API_KEY_ENV, "valueFrom": ref})
        if spec.engine.name == "vllm":
            env.append({"name": "VLLM_API_KEY", "valueFrom": ref})
    container: dict[str, Any] = {
        "name": "server",
        "image": engine_image(chat, config),
        "imagePullPolicy": config.images.pull_policy,
        "command": command,
        "args": args,
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "env": env,
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        **probes("http", config),
    }
    env_from = secret_env_from(chat)
    if env_from:
        container["envFrom"] = env_from
    res = compute_resources(spec.resources)
    if res:
        container["resources"] = res
    # The ConfigMap's hash in the pod template: a new model or lineage rolls the pods.
    template = pod_template(chat, config, container, component="server", volumes=volumes,
                            restart_policy="Always", service_account=config.serving.service_account,
                            annotations={"devops-model.io/config-hash": config_hash})
    template["metadata"]["labels"].update(selector_labels(chat))
    gpus = spec.resources.gpus_per_node > 0
    meta: dict[str, Any] = {"name": deployment_name(chat), "namespace": namespace_of(chat),
                            "labels": run_labels(chat, "server")}
    owners = owner_references(chat)
    if owners:
        meta["ownerReferences"] = owners
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


def build_service(chat: ChatDeployment, config: OperatorConfig) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": service_name(chat.metadata["name"]), "namespace": namespace_of(chat),
                            "labels": run_labels(chat, "server")}
    owners = owner_references(chat)
    if owners:
        meta["ownerReferences"] = owners
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
    meta: dict[str, Any] = {"name": child_name(chat.metadata["name"], "ingress"), "namespace": namespace_of(chat),
                            "labels": run_labels(chat, "server")}
    owners = owner_references(chat)
    if owners:
        meta["ownerReferences"] = owners
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
    url = f"http://{service_name(chat.metadata['name'])}.{namespace_of(chat)}.svc:{chat.spec.port}"
    out = {"url": url, "model": served_model_name(chat)}
    if chat.spec.ui == "enabled" and chat.spec.engine.name == "builtin":
        out["ui"] = url + "/"
    return out


def config_hash(configmap: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(configmap["data"], sort_keys=True).encode()).hexdigest()[:16]
