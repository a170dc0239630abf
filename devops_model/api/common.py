"""Types shared by several kinds: model sources, datasets, resources, output, failure policy, status.

Field descriptions become ``kubectl explain`` text, so they are written for the user.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal as _Dec
from decimal import InvalidOperation
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field, ValidationInfo

from ..uris import CLUSTER_URI_PATTERN, MAX_URI_LENGTH, URI_HELP, UriError, check_uri
from .base import ApiModel, Checked, Rule

# --------------------------------------------------------------------------- scalars

#: Kept for error hints: the schema pattern of every URI field (what the API server accepts).
URI_PATTERN = CLUSTER_URI_PATTERN
#: A decimal or scientific-notation number carried as a string (no floats in spec, per the
#: Kubernetes API conventions), e.g. "5e-5", "0.05", "1.0". The exponent has at most two
#: digits, so every value is finite ("1e999" is refused at the field, locally and on the server).
DECIMAL_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,2})?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A run's name: a DNS-1035 label (starts with a letter), as Kubeflow requires of its jobs.
RUN_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: Kubernetes' quantity grammar (k8s.io/apimachinery resource.Quantity), without a sign:
#: digits with an optional fraction, then a binary-SI (Ki..Ei), decimal-SI (n, u, m, k, M..E)
#: suffix or a decimal exponent. "1.2.3" and "8Gii" do not match.
QUANTITY_PATTERN = r"^[+]?([0-9]{1,18}(\.[0-9]{0,9})?|\.[0-9]{1,9})([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]{1,2})?$"
#: A Go duration with hours, minutes and seconds in that order, each at most 5 digits ("1h30m").
DURATION_PATTERN = (
    r"^([0-9]{1,5}h([0-9]{1,5}m)?([0-9]{1,5}s)?|[0-9]{1,5}m([0-9]{1,5}s)?|[0-9]{1,5}s)$"
)
SHA1_PATTERN = r"^[0-9a-f]{40}$"
#: A label or annotation key: an optional DNS-subdomain prefix and "/", then a name of at most
#: 63 characters (letters, digits, "-", "_", "."; alphanumeric at both ends).
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A container image reference: no spaces or shell characters.
IMAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"

_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)


def _uri(value: str, info: ValidationInfo) -> str:
    """The Python half of every URI field: the grammar of devops_model.uris (the same
    expressions as the schema pattern). ``file://`` is refused when validating for a cluster."""
    cluster = bool((info.context or {}).get("cluster"))
    try:
        check_uri(value, allow_file=not cluster)
    except UriError as exc:
        raise ValueError(str(exc)) from None
    return value


Uri = Annotated[
    str,
    Field(max_length=MAX_URI_LENGTH, description=f"A URI: {URI_HELP}.",
          json_schema_extra={"pattern": CLUSTER_URI_PATTERN}),
    AfterValidator(_uri),
]
DecimalStr = Annotated[str, Field(pattern=DECIMAL_PATTERN, max_length=48)]
Decimal = DecimalStr
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Name = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
#: The name of a run referenced by another (fromRun, baseline, gate): what a run may be named.
RunName = Annotated[str, Field(pattern=RUN_NAME_PATTERN, max_length=63)]
#: A short token such as a module name.
ShortStr = Annotated[str, Field(min_length=1, max_length=256)]
#: An exam as BENCHMARK/SUBJECT: two names without "." or ".." segments (they become paths).
ExamName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*/[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$", max_length=256)]
Image = Annotated[str, Field(pattern=IMAGE_PATTERN, max_length=512)]


def decimal_value(text: str) -> float:
    """The numeric value of a validated decimal string."""
    return float(text)


def _fmt(x: float) -> str:
    return f"{x:g}"


def decimal_range(lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False,
                  example: str, what: str = "") -> Any:
    """A decimal string whose value lies in a range, checked on the field itself (CEL and Python).
    ``what`` names the range in words ("a fraction below 1")."""
    cel: list[str] = []
    if lo is not None:
        cel.append(f"double(self) {'>' if lo_open else '>='} {float(lo)!r}")
    if hi is not None:
        cel.append(f"double(self) {'<' if hi_open else '<='} {float(hi)!r}")
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f"{left}{_fmt(lo) if lo is not None else '-inf'}, {_fmt(hi) if hi is not None else 'inf'}{right}"
    message = f"must be {what + ' ' if what else ''}in {interval}, written as a string, e.g. \"{example}\""

    def check(v: str) -> bool:
        x = float(v)
        if not math.isfinite(x):
            return False
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        if hi is not None and (x >= hi if hi_open else x > hi):
            return False
        return True

    return Annotated[DecimalStr, Checked(Rule(cel=" && ".join(cel), message=message, check=check))]


def cel_quote(text: str) -> str:
    """``text`` as a single-quoted CEL string literal (regular expressions carry backslashes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quantity_positive(text: str) -> bool:
    m = re.match(r"^[+]?([0-9.]+)", text)
    try:
        return m is not None and _Dec(m.group(1)) > 0
    except InvalidOperation:
        return False


Quantity = Annotated[
    str,
    Field(pattern=QUANTITY_PATTERN, max_length=64),
    Checked(Rule(
        cel="!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))",
        message="must be a positive Kubernetes quantity, e.g. \"8\", \"500m\" or \"64Gi\"",
        check=_quantity_positive,
    )),
]


def label_key_ok(key: str) -> bool:
    """Kubernetes' IsQualifiedName: the pattern, and a prefix of at most 253 characters."""
    return bool(_LABEL_KEY_RE.match(key)) and len(key.rpartition("/")[0]) <= 253


_LABEL_KEY_RULE = Rule(
    cel=f"self.matches({cel_quote(LABEL_KEY_PATTERN)}) && (!self.contains('/') || self.indexOf('/') <= 253)",
    message="must be a label key: an optional DNS-subdomain prefix and '/', then at most 63 letters, "
    "digits, '-', '_' or '.', starting and ending with a letter or digit (e.g. nvidia.com/gpu.product)",
    check=label_key_ok,
)
LabelKey = Annotated[str, Field(max_length=317), Checked(_LABEL_KEY_RULE)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]


def duration_seconds(text: str) -> int:
    """Seconds in a duration such as ``"30m"`` or ``"1h30m"``."""
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(s|m|h)", text))


# --------------------------------------------------------------------------- names

#: The longest name of each kind, so that every child the operator creates and every name the
#: launchers derive from it stays a valid DNS label (≤ 63) without cutting:
#: - PretrainRun/SFTRun: the child is <name>-train-r<attempt> (attempt ≤ 100: 11 characters), and
#:   Kubeflow derives from it <job>-worker-<i> Services (PyTorchJob, 11 more) or JobSet pods
#:   <job>-node-0-<i>-<5 random> (TrainJob, 17 more, checked by JobSet's webhook):
#:   35 + 11 + 17 = 63.
#: - EvalRun, QuantizeRun, ChatDeployment: their children are Jobs, Deployments and Services whose
#:   names the operator cuts with a hash when needed; the name itself is a label value (≤ 63).
MAX_NAME_LENGTH: dict[str, int] = {
    "PretrainRun": 35,
    "SFTRun": 35,
    "EvalRun": 63,
    "QuantizeRun": 63,
    "ChatDeployment": 63,
}
_RUN_NAME_RE = re.compile(RUN_NAME_PATTERN)
IMMUTABLE_ONCE_STARTED = Rule(
    cel="!has(oldSelf.status) || !has(oldSelf.status.startTime) || self.spec == oldSelf.spec",
    message="spec is immutable once the run has started; create a new run (e.g. name-v2) instead",
    transition=True,
)


def _name(m: Any) -> str:
    return str(m.metadata.name or "")


def root_rules(kind: str, *, immutable: bool = True) -> tuple[Rule, ...]:
    """The rules on a whole resource: its name (CEL sees metadata.name at the root), no fromRun
    or baseline pointing at the resource itself, and the spec frozen once the run started."""
    limit = MAX_NAME_LENGTH[kind]
    rules = [
        Rule(
            cel=f"self.metadata.name.matches({cel_quote(RUN_NAME_PATTERN)})",
            message="must start with a lowercase letter and hold only lowercase letters, digits and '-' "
            "(a DNS-1035 label, as Kubeflow and Services require), e.g. sft-7b",
            check=lambda m: not _name(m) or bool(_RUN_NAME_RE.match(_name(m))),
            field=".metadata.name",
        ),
        Rule(
            cel=f"size(self.metadata.name) <= {limit}",
            message=f"names of kind {kind} have at most {limit} characters (so that the names of its "
            "children stay within 63; see docs/api.md)",
            check=lambda m: len(_name(m)) <= limit,
            field=".metadata.name",
        ),
    ]
    if kind in ("PretrainRun", "SFTRun", "QuantizeRun"):
        rules.append(Rule(
            cel=f"!has(self.spec.model.fromRun) || self.spec.model.fromRun.kind != '{kind}' "
            "|| self.spec.model.fromRun.name != self.metadata.name",
            message="fromRun names this run itself; a run cannot start from its own output",
            check=lambda m: m.spec.model.from_run is None or m.spec.model.from_run.kind != kind
            or m.spec.model.from_run.name != _name(m),
            field=".spec.model.fromRun",
        ))
    if kind == "EvalRun":
        rules.append(Rule(
            cel="!has(self.spec.baseline) || !has(self.spec.baseline.evalRun) "
            "|| self.spec.baseline.evalRun != self.metadata.name",
            message="baseline.evalRun names this run itself; compare with another EvalRun",
            check=lambda m: m.spec.baseline is None or m.spec.baseline.eval_run != _name(m),
            field=".spec.baseline.evalRun",
        ))
    if immutable:
        rules.append(IMMUTABLE_ONCE_STARTED)
    return tuple(rules)


# --------------------------------------------------------------------------- references

RunKind = Literal["PretrainRun", "SFTRun", "EvalRun", "QuantizeRun"]


class RunRef(ApiModel):
    """A reference to another run in the same namespace whose output artifact is used once it has
    succeeded. The dependent resource waits (condition ``ParentReady=False``, reason
    ``WaitingForParent``) until then, and fails if the parent fails."""

    kind: Literal["PretrainRun", "SFTRun", "QuantizeRun"] = Field(
        description="Kind of the referenced run: PretrainRun, SFTRun or QuantizeRun."
    )
    name: RunName = Field(description="Name of the referenced run (same namespace).")


class EvalRunRef(ApiModel):
    """A reference to an EvalRun in the same namespace."""

    name: RunName = Field(description="Name of the EvalRun (same namespace).")


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


#: valSize: 0, a fraction below 1, or a whole number of rows (at most 9 digits).
VAL_SIZE_PATTERN = r"^(0|0\.[0-9]{1,20}|[1-9][0-9]{0,8})$"


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
    val_size: str = Field(
        default="0",
        max_length=24,
        pattern=VAL_SIZE_PATTERN,
        description='Held-out share for evaluation: a fraction below 1 ("0.01") or a whole row count ("200"); "0" for none.',
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
    """A Kubernetes toleration (see ``kubectl explain pod.spec.tolerations``), with the rules the
    API server applies to pods: a key is a label key, Exists takes no value, no key needs Exists,
    tolerationSeconds needs effect NoExecute."""

    key: Optional[LabelKey] = Field(default=None, description="Taint key (a label key); omit it with operator Exists to match all taints.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: Optional[LabelValue] = Field(default=None, description="Taint value (operator Equal only; a label value).")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(default=None, description="Taint effect to match; all effects when empty.")
    toleration_seconds: Optional[int] = Field(default=None, ge=0, le=2**31 - 1, description="How long a NoExecute taint is tolerated (effect NoExecute only).")

    rules = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="a toleration with operator Exists takes no value; remove value or use operator Equal",
            check=lambda m: m.operator != "Exists" or not m.value,
            field=".value",
        ),
        Rule(
            cel="has(self.key) || self.operator == 'Exists'",
            message="a toleration without key must use operator Exists (it then matches every taint)",
            check=lambda m: m.key is not None or m.operator == "Exists",
            field=".operator",
        ),
        Rule(
            cel="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            message="tolerationSeconds needs effect NoExecute",
            check=lambda m: m.toleration_seconds is None or m.effect == "NoExecute",
            field=".tolerationSeconds",
        ),
    )


_NODE_SELECTOR_RULE = Rule(
    cel=f"self.all(k, k.matches({cel_quote(LABEL_KEY_PATTERN)}) && (!k.contains('/') || k.indexOf('/') <= 253))",
    message="every key must be a label key: an optional DNS-subdomain prefix and '/', then at most 63 "
    "letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
    check=lambda d: all(label_key_ok(k) for k in d),
    explain=lambda d: "every key must be a label key: an optional DNS-subdomain prefix and '/', then at most 63 "
    "letters, digits, '-', '_' or '.', starting and ending with a letter or digit (not "
    + ", ".join(repr(k) for k in d if not label_key_ok(k)) + ")",
)


#: An extended resource name: the kubernetes.io domain is reserved for native resources, which
#: the API server refuses as a container's extended resource.
GpuResourceName = Annotated[str, Checked(Rule(
    cel="!self.contains('kubernetes.io/')",
    message="must be an extended resource name outside the kubernetes.io domain, e.g. nvidia.com/gpu",
    check=lambda v: "kubernetes.io/" not in v,
))]


class Resources(ApiModel):
    """Compute for the workload's pods."""

    nodes: int = Field(default=1, ge=1, le=512, description="Number of nodes (pods) for distributed training.")
    gpus_per_node: int = Field(default=0, ge=0, le=16, description="GPUs per node; also torchrun's --nproc-per-node. 0 runs on CPU.")
    gpu_resource_name: GpuResourceName = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$",
        description="Extended resource name of the GPU (nvidia.com/gpu, amd.com/gpu, or a MIG profile).",
    )
    cpu: Optional[Quantity] = Field(default=None, description='CPU request and limit per pod, e.g. "8".')
    memory: Optional[Quantity] = Field(default=None, description='Memory request and limit per pod, e.g. "64Gi".')
    shared_memory: Quantity = Field(default="8Gi", description="Size of /dev/shm (NCCL and data loaders need more than the container default).")
    node_selector: Optional[Annotated[dict[Annotated[str, Field(max_length=317)], LabelValue], Checked(_NODE_SELECTOR_RULE)]] = Field(
        default=None, max_length=64, description="Node labels the pods must match (label keys and values).")
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


#: The shortest stall timeout: the watchdog runs about once a minute, and a pod reports its first
#: progress only after it started (image pull, model download).
MIN_STALL_TIMEOUT = "1m"
StallTimeout = Annotated[Duration, Checked(Rule(
    cel=f"duration(self) >= duration('{MIN_STALL_TIMEOUT}')",
    message=f"must be at least {MIN_STALL_TIMEOUT} (a duration such as \"30m\" or \"1h30m\")",
    check=lambda v: duration_seconds(v) >= duration_seconds(MIN_STALL_TIMEOUT),
))]


class FailurePolicy(ApiModel):
    """What happens when a pod fails or the work stalls."""

    max_restarts: int = Field(default=3, ge=0, le=100, description="Restarts before the run is marked Failed. Each restart resumes from the latest checkpoint.")
    stall_timeout: StallTimeout = Field(
        default="30m",
        description='Fail (and restart) when no progress was reported for this long, e.g. "30m", "1h" '
        f'(at least {MIN_STALL_TIMEOUT}: the operator checks about once a minute).',
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


#: ``sha256:`` and 64 hex digits (devops_model.artifacts).
ARTIFACT_DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Artifact(ApiModel):
    """The output of a run, as written to ``artifact.json`` by the workload."""

    uri: str = Field(description="Where the artifact is.")
    format: str = Field(description="hf-full, hf-lora, hf-merged, gptq, ...")
    base_model: Optional[str] = Field(default=None, description="URI of the model this one was derived from.")
    parent: Optional[str] = Field(default=None, description="kind/name of the run that produced the input model.")
    template: Optional[str] = Field(default=None, description="Chat template the model was tuned with.")
    merged_uri: Optional[str] = Field(default=None, description="LoRA merged into the base weights, when asked for.")
    digest: Optional[str] = Field(
        default=None, pattern=ARTIFACT_DIGEST_PATTERN,
        description="sha256 of the artifact folder's manifest.sha256, written when the run succeeded; every "
                    "consumer verifies the folder against it before use (reason ArtifactMismatch otherwise).")
    merged_digest: Optional[str] = Field(
        default=None, pattern=ARTIFACT_DIGEST_PATTERN,
        description="The same for mergedUri (its own manifest.sha256).")


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
