"""Pod parts every child shares: volumes for pvc:// URIs, the spec ConfigMap, scratch and cache,
shared memory, env, compute resources, scheduling and the restricted Pod Security Standard.

Pure functions of (resource, config): no API calls, no clock, no randomness.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

from devops_model.api import Resource
from devops_model.api.common import Resources
from devops_model.contract import SPEC_DIR, TERMINATION_LOG, Env
from devops_model.uris import UriError, parse_uri

from ..config import OperatorConfig
from ..naming import ATTEMPT_LABEL, ROLE_LABEL, child_name, owner_path, run_labels

#: Scratch: the root file system is read-only, so everything that writes goes to emptyDirs.
TMP_DIR = "/tmp"
WORK_HOME = "/tmp/devops-model"


def spec_configmap_name(resource: Resource) -> str:
    return child_name(resource.metadata.name, "spec")


def pvc_claims(*values: Any) -> list[str]:
    """Every PVC named by a pvc:// URI anywhere in the given values (dicts, lists, strings), sorted."""
    claims: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.startswith("pvc://"):
            try:
                claims.add(parse_uri(v).authority)
            except UriError:
                pass  # the API already refused malformed URIs; nothing to mount

    for value in values:
        walk(value)
    return sorted(claims)


def volume_name_for_claim(claim: str) -> str:
    return child_name("pvc", claim)


def model_path(uri: str, config: OperatorConfig) -> str:
    """What an engine's --model gets for a URI: the mounted path for pvc://, ORG/NAME for hubs."""
    try:
        p = parse_uri(uri)
    except UriError:
        return uri  # the unresolved-fromRun placeholder of `devops-model render`
    if p.scheme == "pvc":
        return f"{config.storage.mount_root}/{p.authority}" + (f"/{p.path}" if p.path else "")
    if p.scheme in ("hf", "modelscope"):
        return p.authority
    if p.scheme == "file":
        return p.path
    return uri


def volumes_and_mounts(resource: Resource, config: OperatorConfig, claims: Iterable[str], *,
                       shared_memory: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes (pod) and mounts (container): spec ConfigMap, /tmp, cache, /dev/shm, one per claim."""
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": spec_configmap_name(resource)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": config.storage.scratch_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    if config.storage.cache_claim:
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": config.storage.cache_claim}})
    else:
        volumes.append({"name": "cache", "emptyDir": {"sizeLimit": config.storage.scratch_size}})
    mounts.append({"name": "cache", "mountPath": config.workloads.cache_dir})
    if shared_memory:
        # The container runtime's default /dev/shm is 64 MiB; NCCL and data loader workers need more.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shared_memory}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for claim in claims:
        vname = volume_name_for_claim(claim)
        volumes.append({"name": vname, "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": vname, "mountPath": f"{config.storage.mount_root}/{claim}"})
    return volumes, mounts


def workload_env(resource: Resource, config: OperatorConfig, attempt: int) -> list[dict[str, Any]]:
    cache = config.workloads.cache_dir
    return [
        {"name": Env.OWNER, "value": owner_path(resource)},
        {"name": Env.STORAGE, "value": config.storage.mount_root},
        {"name": Env.HOME, "value": WORK_HOME},
        {"name": Env.REPORT_INTERVAL, "value": str(config.workloads.report_interval_seconds)},
        {"name": Env.TERMINATION_LOG, "value": TERMINATION_LOG},
        {"name": Env.ATTEMPT, "value": str(attempt)},
        {"name": "HOME", "value": TMP_DIR},
        {"name": "XDG_CACHE_HOME", "value": cache},
        {"name": "HF_HOME", "value": f"{cache}/huggingface"},
        {"name": "MODELSCOPE_CACHE", "value": f"{cache}/modelscope"},
        {"name": "TRITON_CACHE_DIR", "value": f"{TMP_DIR}/triton"},
        # Compiled kernels (torch and GPTQModel JIT extensions take minutes to build on CPU) go to
        # the cache too, so a cache claim keeps them across pods instead of the per-pod /tmp.
        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{cache}/torch_extensions"},
        {"name": "GPTQMODEL_TORCH_EXTENSIONS_DIR", "value": f"{cache}/gptqmodel/torch_extensions"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def secret_env_from(resource: Resource) -> list[dict[str, Any]]:
    """Credentials for the model source, by reference only (the operator never reads the Secret)."""
    model = getattr(resource.spec, "model", None)
    secret = getattr(model, "credentials_secret", None) if model is not None else None
    return [{"secretRef": {"name": secret}}] if secret else []


#: What a credentials Secret may hold for the model sources (workloads/devops_workloads/sources.py;
#: boto3 also reads the session token and the region).
CREDENTIAL_KEYS = ("HF_TOKEN", "MODELSCOPE_API_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


def secret_env(resource: Resource) -> list[dict[str, Any]]:
    """The same credentials as env entries, each optional: for Kubeflow Trainer's ``spec.trainer``,
    which takes ``env`` but no ``envFrom`` (the runtime patch of its container cannot add one either)."""
    secret = next((s["secretRef"]["name"] for s in secret_env_from(resource)), None)
    if secret is None:
        return []
    return [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
            for key in CREDENTIAL_KEYS]


def compute_resources(res: Resources) -> dict[str, Any]:
    """requests == limits (Guaranteed QoS for training; GPUs can only be given as limits anyway)."""
    limits: dict[str, str] = {}
    if res.cpu:
        limits["cpu"] = res.cpu
    if res.memory:
        limits["memory"] = res.memory
    if res.gpus_per_node:
        limits[res.gpu_resource_name] = str(res.gpus_per_node)
    return {"requests": dict(limits), "limits": limits} if limits else {}


def container_security_context() -> dict[str, Any]:
    """Restricted Pod Security Standard, container level."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context(config: OperatorConfig) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": config.workloads.run_as_user,
        "runAsGroup": config.workloads.run_as_user,
        "fsGroup": config.workloads.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scheduling(res: Resources) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res.node_selector:
        out["nodeSelector"] = dict(sorted(res.node_selector.items()))
    if res.tolerations:
        out["tolerations"] = [t.to_dict() for t in res.tolerations]
    if res.priority_class_name:
        out["priorityClassName"] = res.priority_class_name
    return out


def pod_template(resource: Resource, config: OperatorConfig, container: dict[str, Any], *, component: str,
                 volumes: list[dict[str, Any]], restart_policy: str, service_account: str,
                 role: str | None = None, attempt: int | None = None,
                 annotations: dict[str, str] | None = None, automount_token: bool = True) -> dict[str, Any]:
    """A pod template around one container, with the run's labels and the restricted PSS."""
    labels = run_labels(resource, component)
    if role:
        labels[ROLE_LABEL] = role
    if attempt is not None:
        labels[ATTEMPT_LABEL] = str(attempt)
    res = resource.spec.resources
    if res.queue_name:
        labels["kueue.x-k8s.io/queue-name"] = res.queue_name
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "restartPolicy": restart_policy,
        "enableServiceLinks": False,
        **({} if automount_token else {"automountServiceAccountToken": False}),
        "securityContext": pod_security_context(config),
        # Copies: a template shared by Master and Worker must not become a YAML anchor/alias.
        "containers": [copy.deepcopy(container)],
        "volumes": copy.deepcopy(volumes),
        **scheduling(res),
    }
    if config.images.pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in config.images.pull_secrets]
    meta: dict[str, Any] = {"labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": spec}
