"""The worker contract: every fact the operator (cluster) and the workloads (pods, local runs) share.

One home per rule. The operator may not import the workloads and the workloads may not import the
operator, so what both need lives here, next to the typed API:

* how a worker ends (:class:`ExitCode`) and how the operator reads that end;
* where a pod finds its spec (:data:`SPEC_DIR` ...) and which environment variables carry the rest
  (:class:`Env`);
* the run's phase (:class:`State`), condition types (:class:`ConditionType`) and every condition
  reason (:class:`Reason`) — operator, workloads, docs and tests use these names, never literals;
* which status fields the operator owns (:data:`OPERATOR_OWNED_STATUS`, :data:`OUTCOME_FIELDS`);
* which URI of a parent's artifact a dependent run uses (:func:`model_uri_from_artifact`);
* the operator's name as the API server sees it (:data:`CONTROLLER`).

Pure: no I/O, nothing beyond the standard library. docs/operator.md ("The contract") explains each.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any


class ExitCode(enum.IntEnum):
    """How a worker process ends; the operator turns the code into a reason and a retry decision."""

    #: Done; the final status is in the termination message.
    OK = 0
    #: Failed for a reason a restart may cure (network, a crash); the attempt is replaced.
    FAILED = 1
    #: Bad input (data, spec, model): a restart cannot help, the run fails at once.
    BAD_INPUT = 3
    #: SIGTERM (preemption, node drain) after a checkpoint was saved: the next attempt resumes.
    PREEMPTED = 143


#: 128 + SIGKILL: the kernel's OOM killer or a hard stop (the kubelet says which).
EXIT_KILLED = 137


class Env:
    """Environment variables of the worker contract (set by the operator in a pod, by hand locally)."""

    #: ``<plural>/<namespace>/<name>`` of the run a pod belongs to (progress reports go there).
    OWNER = "DEVOPS_MODEL_OWNER"
    #: Root under which ``pvc://CLAIM/PATH`` is ``CLAIM/PATH`` (the claims' mount root in a pod).
    STORAGE = "DEVOPS_MODEL_STORAGE"
    #: Local state: run registry and default work directories.
    HOME = "DEVOPS_MODEL_HOME"
    #: Seconds between progress reports to the API server.
    REPORT_INTERVAL = "DEVOPS_MODEL_REPORT_INTERVAL"
    #: The container's terminationMessagePath: the final report goes there.
    TERMINATION_LOG = "DEVOPS_MODEL_TERMINATION_LOG"
    #: Attempt number of the run (0 first, n after n restarts).
    ATTEMPT = "DEVOPS_MODEL_ATTEMPT"
    #: The chat API key (from ``spec.auth.apiKeySecret`` in a pod).
    API_KEY = "DEVOPS_MODEL_API_KEY"
    #: Bind address and port of the built-in chat server.
    SERVE_HOST = "DEVOPS_MODEL_SERVE_HOST"
    SERVE_PORT = "DEVOPS_MODEL_SERVE_PORT"
    #: Set to 1 to turn progress bars off (CI, logs).
    NO_PROGRESS = "DEVOPS_MODEL_NO_PROGRESS"
    #: Download cache for models and data.
    CACHE = "DEVOPS_MODEL_CACHE"
    #: The operator's configuration file.
    OPERATOR_CONFIG = "DEVOPS_MODEL_OPERATOR_CONFIG"


#: The operator's name towards the API server: the ``app.kubernetes.io/managed-by`` label of every
#: child, the server-side-apply field manager, and the ``reportingController`` (``source.component``)
#: of the Events it posts (``kubectl get events --field-selector reportingComponent=...``).
CONTROLLER = "devops-model-operator"
#: Environment variables that name the operator's pod (the chart sets ``POD_NAME`` from the downward
#: API; ``HOSTNAME`` is the pod name in any pod): the Events' ``reportingInstance``.
POD_NAME_ENV = ("POD_NAME", "HOSTNAME")

#: Where the spec ConfigMap is mounted in every pod.
SPEC_DIR = "/etc/devops-model"
#: The resource itself (what ``devops-model run -f`` reads), with ``status.resolvedModel`` when the
#: operator resolved ``fromRun``.
SPEC_FILE_NAME = "resource.yaml"
#: The parent run with its status (runs with ``fromRun``).
PARENT_FILE_NAME = "parent.yaml"
#: ChatDeployment: lineage and exam scores, decided by the operator (the gate is checked there).
LINEAGE_FILE_NAME = "lineage.json"
SPEC_FILE = f"{SPEC_DIR}/{SPEC_FILE_NAME}"
#: The kubelet copies this file into the container's termination message.
TERMINATION_LOG = "/dev/termination-log"
#: The kubelet keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class State(str, enum.Enum):
    """``status.state``: the phase, for printer columns. Why a run is in it is the reason of its
    ``Succeeded`` (runs) or ``Ready`` (ChatDeployment) condition, never a state of its own."""

    PENDING = "Pending"        # created; its pods are not running yet (scheduling, image pull, queue)
    WAITING = "Waiting"        # waiting for another resource: the fromRun parent or the serve gate
    RUNNING = "Running"        # the workload runs (CrashLoopBackOff is a reason of Running)
    RESTARTING = "Restarting"  # an attempt failed and is being replaced (failurePolicy)
    SUCCEEDED = "Succeeded"    # final
    FAILED = "Failed"          # final for runs; a ChatDeployment keeps being reconciled
    READY = "Ready"            # ChatDeployment: at least one replica serves

    def __str__(self) -> str:
        return self.value


#: A run in one of these states is never reconciled again.
TERMINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED})


class ConditionType(str, enum.Enum):
    SUCCEEDED = "Succeeded"        # runs: True when done, False with the failure reason
    READY = "Ready"                # ChatDeployment: serving
    RUNNING = "Running"            # the child runs (False with Pending/Restarting/... while not)
    PARENT_READY = "ParentReady"   # spec.model.fromRun resolved
    STALLED = "Stalled"            # no progress for failurePolicy.stallTimeout
    SPEC_CHANGED = "SpecChanged"   # the spec changed after the run started

    def __str__(self) -> str:
        return self.value


class Reason(str, enum.Enum):
    """Every condition reason, one-word CamelCase (Kubernetes API conventions). The operator,
    the workloads (``WorkloadError.reason``), docs/operator.md and the tests use these."""

    # lineage and gate
    WAITING_FOR_PARENT = "WaitingForParent"
    PARENT_FAILED = "ParentFailed"
    PARENT_NOT_FOUND = "ParentNotFound"          # local: the parent never ran on this machine
    PARENT_NOT_SUCCEEDED = "ParentNotSucceeded"  # local: the parent ran and did not succeed
    LINEAGE_CYCLE = "LineageCycle"
    RESOLVED = "Resolved"
    WAITING_FOR_GATE = "WaitingForGate"
    GATE_NOT_MET = "GateNotMet"
    ARTIFACT_MISMATCH = "ArtifactMismatch"
    # the child's life
    PENDING = "Pending"
    CHILD_CREATED = "ChildCreated"
    QUEUED = "Queued"
    RUNNING = "Running"
    COMPLETED = "Completed"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_BACKOFF = "ImagePullBackOff"
    OOM_KILLED = "OOMKilled"
    CRASH_LOOP_BACKOFF = "CrashLoopBackOff"
    NCCL_TIMEOUT = "NCCLTimeout"
    STALLED = "Stalled"
    PROGRESSING = "Progressing"
    PREEMPTED = "Preempted"
    RESTARTING = "Restarting"
    NO_ARTIFACT = "NoArtifact"
    SPEC_CHANGED = "SpecChangedAfterStart"
    INVALID_SPEC = "InvalidSpec"
    # serving
    AVAILABLE = "Available"
    DEPLOYING = "Deploying"
    DEGRADED = "Degraded"
    SCALED_TO_ZERO = "ScaledToZero"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    MISSING_API_KEY = "MissingApiKey"
    # what a worker reports (exit code 3 unless said otherwise)
    BAD_DATA = "BadData"
    BAD_EXAM_DATA = "BadExamData"
    BAD_SPEC = "BadSpec"
    BAD_MODEL = "BadModel"
    BAD_OUTPUT = "BadOutput"
    INVALID_OUTPUT = "InvalidOutput"
    INVALID_MODEL_SOURCE = "InvalidModelSource"
    MODEL_NOT_FOUND = "ModelNotFound"
    MISSING_DEPENDENCY = "MissingDependency"
    UNSUPPORTED_BACKEND = "UnsupportedBackend"
    MODEL_DOWNLOAD_FAILED = "ModelDownloadFailed"   # exit 1: a retry may succeed
    DATA_DOWNLOAD_FAILED = "DataDownloadFailed"     # exit 1
    DATA_TIMEOUT = "DataTimeout"                    # exit 1: rank 0 did not prepare the data in time
    QUANTIZATION_FAILED = "QuantizationFailed"      # exit 1
    VERIFICATION_FAILED = "VerificationFailed"

    def __str__(self) -> str:
        return self.value


#: Reasons after which a new attempt cannot help (the operator does not restart the run).
FINAL_REASONS = frozenset({
    Reason.BAD_DATA, Reason.BAD_EXAM_DATA, Reason.BAD_SPEC, Reason.BAD_MODEL, Reason.BAD_OUTPUT,
    Reason.INVALID_OUTPUT, Reason.INVALID_MODEL_SOURCE, Reason.INVALID_SPEC, Reason.MODEL_NOT_FOUND,
    Reason.MISSING_DEPENDENCY, Reason.UNSUPPORTED_BACKEND, Reason.PARENT_NOT_FOUND, Reason.PARENT_NOT_SUCCEEDED,
    Reason.ARTIFACT_MISMATCH, Reason.VERIFICATION_FAILED, Reason.MISSING_API_KEY, Reason.LINEAGE_CYCLE,
})

#: Status fields only the operator writes; a worker's report never sets them (its termination message
#: is read for the outcome fields below, and its progress patches are filtered to PROGRESS_FIELDS).
OPERATOR_OWNED_STATUS = frozenset({
    "conditions", "state", "reason", "message", "observedGeneration", "children", "restarts", "lastRestart",
    "startTime", "completionTime", "durationSeconds", "resolvedModel", "replicas", "readyReplicas", "lineage",
    "kopf",
})
#: What a worker may patch into its own run's status while it runs.
PROGRESS_FIELDS = frozenset({"progress"})


def outcome_fields(status_fields: Iterable[str]) -> frozenset[str]:
    """The outcome of a run (artifact, scores, summary, sizes, perplexities ...): every field of the
    kind's status that is neither the operator's nor progress. The operator takes these from the
    run's own pod (its termination message) when the child succeeded, never from a status patch."""
    return frozenset(status_fields) - OPERATOR_OWNED_STATUS - PROGRESS_FIELDS

#: Kinds whose output artifact is a model that a dependent run loads.
KINDS_WITH_ARTIFACT = frozenset({"PretrainRun", "SFTRun", "QuantizeRun"})
#: Kinds that consume a parent's *servable* model: a LoRA adapter alone is not servable, so they use
#: the merged model when the parent wrote one.
MERGED_MODEL_CONSUMERS = frozenset({"QuantizeRun", "ChatDeployment", "EvalRun"})


def model_uri_from_artifact(consumer_kind: str, artifact: Mapping[str, Any]) -> str:
    """The URI of a parent's artifact that a run of ``consumer_kind`` uses: the merged model for
    evaluation, quantization and serving, the artifact itself (e.g. an adapter to keep training)
    for training."""
    if consumer_kind in MERGED_MODEL_CONSUMERS and artifact.get("mergedUri"):
        return str(artifact["mergedUri"])
    return str(artifact["uri"])


def exit_code_for(reason: str) -> ExitCode:
    """The exit code a worker uses for a failure with this reason."""
    return ExitCode.BAD_INPUT if reason in FINAL_REASONS else ExitCode.FAILED
