"""Types shared by several kinds: model sources, datasets, resources, output, failure policy, status.

Field descriptions become ``kubectl explain`` text, so they are written for the user.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Optional

from pydantic import Field

from .base import ApiModel, Rule

# --------------------------------------------------------------------------- scalars

URI_PATTERN = r"^(hf|modelscope|pvc|s3|file)://[^\s]+$"
URI_HELP = (
    "hf://ORG/NAME[@REVISION], modelscope://ORG/NAME[@REVISION], pvc://CLAIM/PATH, "
    "s3://BUCKET/KEY or file:///ABS/PATH (file:// only for local runs)"
)
#: A decimal or scientific-notation number carried as a string (no floats in spec, per the
#: Kubernetes API conventions), e.g. "5e-5", "0.05", "1.0".
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DURATION_PATTERN = r"^([0-9]+(s|m|h))+$"
SHA1_PATTERN = r"^[0-9a-f]{40}$"

Uri = Annotated[str, Field(pattern=URI_PATTERN, max_length=2048, description=f"A URI: {URI_HELP}.")]
Decimal = Annotated[str, Field(pattern=DECIMAL_PATTERN, max_length=32)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
Name = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
#: A short token such as a module or exam name.
ShortStr = Annotated[str, Field(min_length=1, max_length=256)]


def decimal_value(text: str) -> float:
    """The numeric value of a validated decimal string."""
    return float(text)


def duration_seconds(text: str) -> int:
    """Seconds in a duration such as ``"30m"`` or ``"1h30m"``."""
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(s|m|h)", text))


# --------------------------------------------------------------------------- references

RunKind = Literal["PretrainRun", "SFTRun", "EvalRun", "QuantizeRun"]


class RunRef(ApiModel):
    """A reference to another run in the same namespace whose output artifact is used once it has
    succeeded. The dependent resource waits (condition ``ParentReady=False``, reason
    ``WaitingForParent``) until then, and fails if the parent fails."""

    kind: Literal["PretrainRun", "SFTRun", "QuantizeRun"] = Field(
        description="Kind of the referenced run: PretrainRun, SFTRun or QuantizeRun."
    )
    name: Name = Field(description="Name of the referenced run (same namespace).")


class EvalRunRef(ApiModel):
    """A reference to an EvalRun in the same namespace."""

    name: Name = Field(description="Name of the EvalRun (same namespace).")


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace. Secrets are only ever used by reference."""

    name: Name = Field(description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key within the Secret.")


class ModelSource(ApiModel):
    """Where a model comes from: exactly one of ``uri`` or ``fromRun``."""

    uri: Optional[Uri] = Field(
        default=None,
        description=f"Model location: {URI_HELP}. hf:// and modelscope:// download into the cache.",
    )
    from_run: Optional[RunRef] = Field(
        default=None, description="Use the output artifact of another run once it has succeeded."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run (transformers "
        "trust_remote_code). Off unless you trust the repository; Qwen2/Qwen2.5 do not need it.",
    )
    credentials_secret: Optional[Name] = Field(
        default=None,
        description="Secret with credentials for the source, used by reference: HF_TOKEN, "
        "MODELSCOPE_API_TOKEN or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL.",
    )

    rules = (
        Rule(
            cel="has(self.uri) != has(self.fromRun)",
            message="exactly one of uri or fromRun must be set",
            check=lambda m: (m.uri is None) != (m.from_run is None),
        ),
    )


# --------------------------------------------------------------------------- datasets


class ColumnMapping(ApiModel):
    """Column names of a dataset, as in the seed's ``dataset_info.json`` ``columns``.
    An empty string means "no such column"."""

    prompt: Optional[str] = Field(default=None, max_length=128, description='Instruction column (default "instruction"; the text column for pretraining).')
    query: Optional[str] = Field(default=None, max_length=128, description='Input column appended to the prompt after a newline (default "input").')
    response: Optional[str] = Field(default=None, max_length=128, description='Response column (default "output").')
    history: Optional[str] = Field(default=None, max_length=128, description="Column holding earlier [query, response] pairs (default: none).")
    system: Optional[str] = Field(default=None, max_length=128, description="Column holding a per-row system prompt (default: none).")
    messages: Optional[str] = Field(default=None, max_length=128, description='Column holding sharegpt/OpenAI-style messages (default "conversations" or "messages").')


class DatasetRef(ApiModel):
    """One dataset: a name from the registry (``data.registry``) or a plain URI."""

    name: Optional[str] = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Name of a dataset in the registry's dataset_info.json.",
    )
    uri: Optional[Uri] = Field(
        default=None,
        description="A jsonl/json/csv/parquet/txt file or a directory of them: " + URI_HELP + ".",
    )
    sha1: Optional[str] = Field(
        default=None,
        pattern=SHA1_PATTERN,
        max_length=40,
        description="Expected SHA-1 of the file (40 lowercase hex digits). A mismatch fails the "
        "run before any training starts. Overrides the registry's file_sha1.",
    )
    format: Literal["auto", "alpaca", "sharegpt", "text"] = Field(
        default="auto",
        description="Row shape: alpaca (prompt/query/response columns), sharegpt (a list of "
        "messages), text (one document per row, pretraining), or auto (detected).",
    )
    columns: Optional[ColumnMapping] = Field(default=None, description="Column names, when they differ from the defaults.")
    max_samples: Optional[int] = Field(default=None, ge=1, le=100_000_000, description="Use at most this many rows.")

    rules = (
        Rule(
            cel="has(self.name) != has(self.uri)",
            message="exactly one of name or uri must be set",
            check=lambda m: (m.name is None) != (m.uri is None),
        ),
    )


class DataSpec(ApiModel):
    """Training data: one or more datasets mixed together."""

    registry: Optional[Uri] = Field(
        default=None,
        description="Directory holding a seed-format dataset_info.json; datasets given by name "
        "are looked up there and their file names resolved relative to it.",
    )
    datasets: list[DatasetRef] = Field(min_length=1, max_length=64, description="Datasets to use, in order.")
    mix_strategy: Literal["concat", "interleaveUnder", "interleaveOver"] = Field(
        default="concat",
        description="How several datasets are combined: concat, or interleaved until the "
        "smallest (interleaveUnder) or the largest (interleaveOver) is exhausted.",
    )
    val_size: Decimal = Field(
        default="0",
        description='Held-out share for evaluation: a fraction below 1 ("0.01") or a row count ("200").',
    )
    system_prompt: Optional[str] = Field(default=None, max_length=8192, description="System prompt for every sample (overrides the template's).")

    rules = (
        Rule(
            cel="self.datasets.all(d, !has(d.name)) || has(self.registry)",
            message="datasets given by name need data.registry (the folder with dataset_info.json)",
            check=lambda m: all(d.name is None for d in m.datasets) or m.registry is not None,
            field=".registry",
        ),
    )


# --------------------------------------------------------------------------- resources


class Toleration(ApiModel):
    """A Kubernetes toleration (see ``kubectl explain pod.spec.tolerations``)."""

    key: Optional[str] = Field(default=None, max_length=317, description="Taint key; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: Optional[str] = Field(default=None, max_length=63, description="Taint value (operator Equal).")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(default=None, description="Taint effect to match; all effects when empty.")
    toleration_seconds: Optional[int] = Field(default=None, ge=0, description="How long a NoExecute taint is tolerated.")


class Resources(ApiModel):
    """Compute for the workload's pods."""

    nodes: int = Field(default=1, ge=1, le=512, description="Number of nodes (pods) for distributed training.")
    gpus_per_node: int = Field(default=0, ge=0, le=16, description="GPUs per node; also torchrun's --nproc-per-node. 0 runs on CPU.")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[a-z0-9.-]+/[a-z0-9._-]+$",
        description="Extended resource name of the GPU (nvidia.com/gpu, amd.com/gpu, or a MIG profile).",
    )
    cpu: Optional[Quantity] = Field(default=None, description='CPU request and limit per pod, e.g. "8".')
    memory: Optional[Quantity] = Field(default=None, description='Memory request and limit per pod, e.g. "64Gi".')
    shared_memory: Quantity = Field(default="8Gi", description="Size of /dev/shm (NCCL and data loaders need more than the container default).")
    node_selector: Optional[dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]]] = Field(default=None, max_length=64, description="Node labels the pods must match.")
    tolerations: Optional[list[Toleration]] = Field(default=None, max_length=32, description="Taints the pods tolerate.")
    priority_class_name: Optional[Name] = Field(default=None, description="PriorityClass of the pods.")
    queue_name: Optional[str] = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Kueue LocalQueue; sets the kueue.x-k8s.io/queue-name label so Kueue admits the job.",
    )


class OutputSpec(ApiModel):
    """Where the run writes its artifact."""

    uri: Uri = Field(description="Output location (pvc://CLAIM/PATH in a cluster, file:// locally). Checkpoints live below it.")


class FailurePolicy(ApiModel):
    """What happens when a pod fails or the work stalls."""

    max_restarts: int = Field(default=3, ge=0, le=100, description="Restarts before the run is marked Failed. Each restart resumes from the latest checkpoint.")
    stall_timeout: Duration = Field(
        default="30m",
        description='Fail (and restart) when no progress was reported for this long, e.g. "30m", "1h".',
    )
    resume: Literal["Latest", "Never"] = Field(default="Latest", description="Latest: resume from the newest complete checkpoint; Never: start over.")


# --------------------------------------------------------------------------- status


class Condition(ApiModel):
    """A condition per the Kubernetes API conventions."""

    type: str = Field(max_length=316, description="Condition type: Ready, Succeeded, ParentReady, Running, Stalled, Verified.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", description="One-word CamelCase reason.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: Optional[int] = Field(default=None, ge=0)


class Artifact(ApiModel):
    """The output of a run, as written to ``artifact.json`` by the workload."""

    uri: str = Field(description="Where the artifact is.")
    format: str = Field(description="hf-full, hf-lora, hf-merged, gptq, ...")
    base_model: Optional[str] = Field(default=None, description="URI of the model this one was derived from.")
    parent: Optional[str] = Field(default=None, description="kind/name of the run that produced the input model.")
    template: Optional[str] = Field(default=None, description="Chat template the model was tuned with.")
    merged_uri: Optional[str] = Field(default=None, description="LoRA merged into the base weights, when asked for.")


class TrainingProgress(ApiModel):
    """Progress reported by the worker (rank 0), throttled."""

    step: int = Field(default=0, ge=0)
    total_steps: Optional[int] = Field(default=None, ge=0)
    epoch: Optional[float] = None
    loss: Optional[float] = None
    learning_rate: Optional[float] = None
    tokens_per_second: Optional[float] = None
    eta_seconds: Optional[int] = None
    last_checkpoint: Optional[str] = None
    percent: Optional[int] = Field(default=None, ge=0, le=100)
    updated: Optional[str] = Field(default=None, description="When the worker last reported (RFC 3339).")


class RestartRecord(ApiModel):
    """Why the latest attempt was replaced (Events expire after an hour; this stays)."""

    attempt: int = Field(ge=1, description="The attempt that replaced the failed one (1 = the first restart).")
    reason: str = Field(max_length=1024, description="Why the previous attempt failed: OOMKilled, NCCLTimeout, Preempted, Stalled, ...")
    message: str = Field(default="", max_length=32768, description="The detail, as in the Restarting Event.")
    time: str = Field(description="When the failed attempt was replaced (RFC 3339).")


class CommonStatus(ApiModel):
    """Status fields common to all kinds."""

    observed_generation: Optional[int] = Field(default=None, ge=0)
    conditions: Optional[list[Condition]] = Field(default=None, description="Latest observations, keyed by type.")
    state: Optional[str] = Field(default=None, description="Summary for printer columns (the reason of the Succeeded/Ready condition).")
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    restarts: Optional[int] = Field(default=None, ge=0)
    last_restart: Optional[RestartRecord] = Field(default=None, description="Why the latest restart happened.")
    message: Optional[str] = Field(default=None, description="Human summary of the current state.")
