"""The operator's configuration: images and defaults for everything it creates.

It comes from the Helm values (the chart renders the ``operator`` section of ``values.yaml`` into a
ConfigMap mounted at ``/etc/devops-model/operator.yaml``) and is never a constant in a builder.
``devops-model render --values FILE`` reads the same file.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Images(_Model):
    """Container images (pin by digest in production)."""

    workload: str = Field(default="ghcr.io/devops-model/workload:0.1.0", description="Training, evaluation and quantization (CUDA, torch, DeepSpeed, peft, GPTQModel).")
    serve: str = Field(default="ghcr.io/devops-model/serve:0.1.0", description="The built-in chat server and the web chat.")
    vllm: str = Field(default="vllm/vllm-openai:v0.11.0", description="vLLM OpenAI-compatible server.")
    tgi: str = Field(default="ghcr.io/huggingface/text-generation-inference:3.3.6", description="Text Generation Inference.")
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    pull_secrets: list[str] = Field(default_factory=list, description="imagePullSecrets for every pod the operator creates.")
    allowed: list[str] = Field(default_factory=list, description="Images a resource may name in spec.image / spec.engine.image: shell-style patterns such as 'registry.example.com/ml/*' (the images above are always allowed). Empty: any image — whoever may create a run may then run any image in its namespace (docs/install.md, threat model).")

    def refusal(self, image: str) -> Optional[str]:
        """Why ``image`` may not be used (None when it may)."""
        if not self.allowed or image in (self.workload, self.serve, self.vllm, self.tgi):
            return None
        if any(fnmatch.fnmatchcase(image, pattern) for pattern in self.allowed):
            return None
        return (f"image {image!r} is not allowed by the operator's configuration (images.allowed: "
                f"{', '.join(self.allowed)}); leave the field out to use the configured image, or ask "
                "the platform team to allow it")


class Storage(_Model):
    """How pvc:// URIs reach the pods."""

    mount_root: str = Field(default="/mnt/storage", description="pvc://CLAIM/PATH is mounted at MOUNT_ROOT/CLAIM (DEVOPS_MODEL_STORAGE in the pod).")
    cache_claim: Optional[str] = Field(default=None, description="PVC for the Hugging Face / ModelScope download cache (emptyDir when unset).")
    scratch_size: str = Field(default="50Gi", description="Size limit of the scratch emptyDir (/tmp, caches) when no cache claim is given.")


class Workloads(_Model):
    """Defaults for workload pods."""

    service_account_annotations: dict[str, str] = Field(default_factory=dict, description="Annotations of every run's own ServiceAccount (the operator creates one per run, allowed to patch that run's status only), e.g. a cloud IAM role for s3:// access (eks.amazonaws.com/role-arn).")
    report_interval_seconds: int = Field(default=10, ge=1, description="Minimum seconds between progress reports to the API server.")
    backoff_limit: int = Field(default=0, ge=0, description="Job backoffLimit; restarts are counted by the operator's failure policy instead.")
    ttl_seconds_after_finished: Optional[int] = Field(default=None, description="Delete finished Jobs after this many seconds (None keeps them for inspection).")
    run_as_user: int = Field(default=1000, description="UID of workload containers (non-root).")
    fs_group: int = Field(default=1000)
    cache_dir: str = Field(default="/var/cache/devops-model", description="Where hub downloads are cached in the pod (HF_HOME, MODELSCOPE_CACHE below it); the cache claim or an emptyDir is mounted here.")


class Serving(_Model):
    """Defaults for ChatDeployment pods."""

    startup_timeout_seconds: int = Field(default=1800, ge=60, description="How long a server may take to load its model before the startup probe gives up (a 7B model from a PVC: minutes; vLLM also compiles CUDA graphs).")
    probe_period_seconds: int = Field(default=10, ge=1, description="Period of the startup, readiness and liveness probes (GET /health).")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(default="ClusterIP", description="Type of the Service in front of the chat pods.")
    service_account: Optional[str] = Field(default=None, description="ServiceAccount of chat pods (default: the namespace's default one). Chat pods never get its token mounted: they do not report to the API server.")


class Trainer(_Model):
    """Kubeflow Trainer v2 (launcher: TrainJob)."""

    runtime_name: str = Field(default="torch-distributed", description="ClusterTrainingRuntime (or TrainingRuntime) the TrainJob references.")
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = Field(default="ClusterTrainingRuntime")


class Reconcile(_Model):
    """How the operator reconciles."""

    requeue_seconds: int = Field(default=15, ge=1, description="How often a waiting resource (parent not ready, child starting) is looked at again.")
    watchdog_interval_seconds: int = Field(default=60, ge=1, description="How often running runs are checked for stalls (spec.failurePolicy.stallTimeout) and child state.")
    restart_backoff_seconds: int = Field(default=30, ge=0, description="Delay before a failed child is recreated (restart n waits n x this).")
    peering: Optional[str] = Field(default=None, description="kopf peering object name for leader election between replicas (the chart sets it when replicas > 1); None runs standalone.")
    peering_lifetime_seconds: int = Field(default=60, ge=5, description="How long a replica's peering record counts without a heartbeat: a killed leader is replaced after at most this long.")


class OperatorConfig(_Model):
    """Everything the builders need besides the resource itself."""

    images: Images = Field(default_factory=Images)
    storage: Storage = Field(default_factory=Storage)
    workloads: Workloads = Field(default_factory=Workloads)
    serving: Serving = Field(default_factory=Serving)
    trainer: Trainer = Field(default_factory=Trainer)
    reconcile: Reconcile = Field(default_factory=Reconcile)
    scope: Literal["cluster", "namespaced"] = Field(default="cluster", description="Watch all namespaces or only the operator's own.")
    namespace: Optional[str] = Field(default=None, description="Namespace to watch when scope is namespaced.")

    @classmethod
    def load(cls, path: str | Path | None = None) -> "OperatorConfig":
        """The operator's own configuration: PATH, else $DEVOPS_MODEL_OPERATOR_CONFIG, else
        /etc/devops-model/operator.yaml when it exists, else the defaults."""
        import os

        candidate = path or os.environ.get("DEVOPS_MODEL_OPERATOR_CONFIG")
        if candidate:
            return cls.from_values_file(candidate)
        default = Path("/etc/devops-model/operator.yaml")
        return cls.from_values_file(default) if default.exists() else cls()

    @classmethod
    def from_values_file(cls, path: str | Path) -> "OperatorConfig":
        """Read a config file: either the operator section itself or full Helm values with an
        ``operator`` key (so ``--values charts/devops-model/values.yaml`` works)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if "operator" in data and isinstance(data["operator"], dict) and "config" in data["operator"]:
            data = data["operator"]["config"]
        return cls.model_validate(data)
