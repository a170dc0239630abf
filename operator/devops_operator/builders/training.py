"""Children of PretrainRun and SFTRun: a Kubeflow PyTorchJob (default), a Kubeflow Trainer
(v2.2 or later) TrainJob, or a plain batch/v1 Job (one node). Also the batch Job of EvalRun and QuantizeRun.

The container runs the worker contract: ``devops-model run -f /etc/devops-model/resource.yaml``,
under ``torchrun`` when more than one process is needed. Restarts are the operator's (it recreates
the child with the next attempt number and the worker resumes from the latest checkpoint), so the
launchers themselves never retry: backoffLimit 0 and restartPolicy Never by default.
"""

from __future__ import annotations

from typing import Any

from devops_model.api import Resource
from devops_model.contract import CONTROLLER, SPEC_FILE, TERMINATION_LOG, ExitCode

from ..config import OperatorConfig
from ..naming import QUEUE_LABEL, child_metadata, child_name, run_labels
from .identity import identity_name
from .pods import (
    compute_resources,
    container_security_context,
    pod_security_context,
    pod_template,
    secret_env,
    secret_env_from,
    volumes_and_mounts,
    workload_env,
)

COMPONENT = {"PretrainRun": "train", "SFTRun": "train", "EvalRun": "eval", "QuantizeRun": "quantize"}


def child_suffix(kind: str, attempt: int) -> str:
    base = COMPONENT[kind]
    return base if attempt == 0 else f"{base}-r{attempt}"


def workload_child_name(resource: Resource, attempt: int = 0) -> str:
    """``<run>-train`` (``-eval``, ``-quantize``); restart n is ``<run>-train-rN``."""
    return child_name(resource.metadata.name, child_suffix(resource.kind, attempt))


def worker_command(nodes: int, procs: int, launcher: str) -> list[str]:
    """The worker contract's command line for this many nodes and processes per node."""
    if nodes == 1 and procs <= 1:
        return ["devops-model", "run", "-f", SPEC_FILE]
    if launcher == "Job":
        # One node, several GPUs: torchrun's standalone rendezvous on localhost.
        return ["torchrun", "--standalone", f"--nproc-per-node={procs}", "-m", "devops_workloads.runner", "-f", SPEC_FILE]
    # PyTorchJob / TrainJob set PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, which
    # torchrun reads as its --nnodes/--node-rank/--master-addr/--master-port defaults.
    return ["torchrun", f"--nproc-per-node={procs}", "-m", "devops_workloads.runner", "-f", SPEC_FILE]


def workload_container(resource: Resource, config: OperatorConfig, mounts: list[dict[str, Any]], *, name: str,
                       command: list[str], attempt: int) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": resource.spec.image or config.images.workload,
        "imagePullPolicy": config.images.pull_policy,
        "command": command,
        "env": workload_env(resource, config, attempt),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        # The runner writes its final status here (docs/operator.md); crashes fall back to the log tail.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env_from = secret_env_from(resource)
    if env_from:
        c["envFrom"] = env_from
    res = compute_resources(resource.spec.resources)
    if res:
        c["resources"] = res
    return c


def _metadata(resource: Resource, name: str, component: str, attempt: int) -> dict[str, Any]:
    labels = run_labels(resource, component)
    labels["devops-model.io/attempt"] = str(attempt)
    if resource.spec.resources.queue_name:
        labels[QUEUE_LABEL] = resource.spec.resources.queue_name
    return child_metadata(resource, name, labels)


def build_pytorchjob(resource: Resource, config: OperatorConfig, claims: list[str], attempt: int = 0) -> dict[str, Any]:
    """Kubeflow training-operator v1 PyTorchJob: one Master and nodes-1 Workers, each running
    torchrun with gpusPerNode processes (nprocPerNode)."""
    res = resource.spec.resources
    procs = max(res.gpus_per_node, 1)
    volumes, mounts = volumes_and_mounts(resource, config, claims, shared_memory=res.shared_memory)
    # Kubeflow requires the container to be named "pytorch".
    container = workload_container(resource, config, mounts, name="pytorch",
                                   command=worker_command(res.nodes, procs, "PyTorchJob"), attempt=attempt)
    replicas: dict[str, Any] = {
        "Master": {
            "replicas": 1,
            "restartPolicy": "Never",
            "template": pod_template(resource, config, container, component="train", volumes=volumes,
                                     restart_policy="Never", role="master", attempt=attempt,
                                     service_account=identity_name(resource)),
        }
    }
    if res.nodes > 1:
        replicas["Worker"] = {
            "replicas": res.nodes - 1,
            "restartPolicy": "Never",
            "template": pod_template(resource, config, container, component="train", volumes=volumes,
                                     restart_policy="Never", role="worker", attempt=attempt,
                                     service_account=identity_name(resource)),
        }
    run_policy: dict[str, Any] = {"backoffLimit": config.workloads.backoff_limit, "cleanPodPolicy": "None"}
    if config.workloads.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = config.workloads.ttl_seconds_after_finished
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(resource, workload_child_name(resource, attempt), "train", attempt),
        "spec": {"nprocPerNode": str(procs), "runPolicy": run_policy, "pytorchReplicaSpecs": replicas},
    }


#: The replicated job of Trainer's torch-distributed runtimes that runs the training nodes, and its
#: container (the Trainer API sets that container's image, command, env and resources itself).
TRAINER_NODE = "node"


def build_trainjob(resource: Resource, config: OperatorConfig, claims: list[str], attempt: int = 0) -> dict[str, Any]:
    """Kubeflow Trainer TrainJob (v2.2 and later: ``spec.runtimePatches``) on the configured runtime
    (torch-distributed). The Trainer API (``spec.trainer``) sets the node container's image,
    command, env and resources; one runtime patch, owned by this operator (``manager``), adds what
    Trainer allows a manager to patch into the runtime's pod template: labels, the run's
    ServiceAccount, volumes and mounts, the restricted security context, node selector and
    tolerations. Trainer v2.0 (``podSpecOverrides``) and v2.1 (``podTemplateOverrides``) do not know
    this field; the API server would drop it silently, so the reconciler deletes a child whose spec
    fields were dropped and fails the run saying so (docs/operator.md, "Supported Kubeflow versions")."""
    res = resource.spec.resources
    procs = max(res.gpus_per_node, 1)
    volumes, mounts = volumes_and_mounts(resource, config, claims, shared_memory=res.shared_memory)
    trainer: dict[str, Any] = {
        "image": resource.spec.image or config.images.workload,
        "command": worker_command(res.nodes, procs, "TrainJob"),
        "numNodes": res.nodes,
        "numProcPerNode": procs,
        "env": workload_env(resource, config, attempt) + secret_env(resource),
    }
    compute = compute_resources(res)
    if compute:
        trainer["resourcesPerNode"] = compute
    labels = run_labels(resource, "train")
    pod_spec: dict[str, Any] = {
        "serviceAccountName": identity_name(resource),
        "volumes": volumes,
        "containers": [{"name": TRAINER_NODE, "volumeMounts": mounts, "securityContext": container_security_context()}],
        "securityContext": pod_security_context(config),
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(res.node_selector.items()))
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_dict() for t in res.tolerations]
    node_job = {"name": TRAINER_NODE, "template": {
        "metadata": {"labels": dict(labels)},
        "spec": {"template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec}}}}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(resource, workload_child_name(resource, attempt), "train", attempt),
        "spec": {
            "runtimeRef": {"name": config.trainer.runtime_name, "apiGroup": "trainer.kubeflow.org",
                           "kind": config.trainer.runtime_kind},
            "trainer": trainer,
            "runtimePatches": [{"manager": CONTROLLER, "trainingRuntimeSpec": {"template": {
                # The run's labels on the JobSet, its node Jobs and their pods.
                "metadata": {"labels": labels},
                "spec": {"replicatedJobs": [node_job]}}}}],
        },
    }


def build_job(resource: Resource, config: OperatorConfig, claims: list[str], attempt: int = 0) -> dict[str, Any]:
    """A plain batch/v1 Job with one pod: training on one node (launcher: Job), EvalRun, QuantizeRun."""
    res = resource.spec.resources
    component = COMPONENT[resource.kind]
    procs = max(res.gpus_per_node, 1)
    volumes, mounts = volumes_and_mounts(resource, config, claims, shared_memory=res.shared_memory)
    container = workload_container(resource, config, mounts, name="worker",
                                   command=worker_command(1, procs, "Job"), attempt=attempt)
    spec: dict[str, Any] = {
        "backoffLimit": config.workloads.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        # Bad input (exit 3) fails at once even when backoffLimit allows retries.
        "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
            "containerName": "worker", "operator": "In", "values": [int(ExitCode.BAD_INPUT)]}}]},
        "template": pod_template(resource, config, container, component=component, volumes=volumes,
                                 restart_policy="Never", role="master", attempt=attempt,
                                     service_account=identity_name(resource)),
    }
    if config.workloads.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = config.workloads.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(resource, workload_child_name(resource, attempt), component, attempt),
        "spec": spec,
    }


LAUNCHERS = {"PyTorchJob": build_pytorchjob, "TrainJob": build_trainjob, "Job": build_job}


def build_workload(resource: Resource, config: OperatorConfig, claims: list[str], attempt: int = 0) -> dict[str, Any]:
    """The child that runs a run's work: per ``spec.launcher`` for training, a Job otherwise."""
    launcher = getattr(resource.spec, "launcher", "Job")
    return LAUNCHERS[launcher](resource, config, claims, attempt)
