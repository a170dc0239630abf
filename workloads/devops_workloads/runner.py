"""The worker contract: one entry point runs every workload, in a pod and on a laptop alike.

    devops-model run -f examples/local/sft-lora.yaml            # locally
    devops-model run -f /etc/devops-model/resource.yaml         # in a pod (the operator's ConfigMap)
    torchrun --nproc-per-node 8 -m devops_workloads.runner -f /etc/devops-model/resource.yaml

The spec file is the resource itself (the very typed model the CRD was generated from). In a pod
the operator also writes ``status.resolvedModel`` (the URI that ``spec.model.fromRun`` resolved to)
and, for runs with a parent, ``parent.yaml`` (the parent resource with its status) next to it.
Locally, ``fromRun`` is resolved from the local run registry: every local run records its
resource and final status under ``$DEVOPS_MODEL_HOME/runs/<kind>/<name>.json``.

Each workload module exposes ``run(ctx: RunContext) -> dict`` returning the status fields to
record (``artifact``, ``scores``, ...); the runner records them and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devops_model.api import ApiModel
from devops_model.api.resource import load_documents, parse_resource

#: kind -> "module:function" implementing it.
RUNNERS: dict[str, str] = {
    "PretrainRun": "devops_workloads.train.entry:run",
    "SFTRun": "devops_workloads.train.entry:run",
    "EvalRun": "devops_workloads.evaluate.entry:run",
    "QuantizeRun": "devops_workloads.quantize.entry:run",
    "ChatDeployment": "devops_workloads.serve.entry:run",
}

#: Exit code after a SIGTERM that saved a checkpoint (the pod is restarted and resumes).
EXIT_PREEMPTED = 143
#: Exit code for bad input (data, spec) — retrying will not help.
EXIT_BAD_INPUT = 3


class WorkloadError(RuntimeError):
    """A failure with a reason a person understands; ``reason`` becomes the condition reason."""

    def __init__(self, message: str, reason: str = "Failed", exit_code: int = 1):
        super().__init__(message)
        self.reason = reason
        self.exit_code = exit_code


def home() -> Path:
    """Local state: run registry, default work dirs (``DEVOPS_MODEL_HOME``)."""
    env = os.environ.get("DEVOPS_MODEL_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "devops-model"


def registry_path(kind: str, name: str) -> Path:
    return home() / "runs" / kind.lower() / f"{name}.json"


def read_registry(kind: str, name: str) -> dict[str, Any] | None:
    p = registry_path(kind, name)
    return json.loads(p.read_text()) if p.exists() else None


def write_registry(resource: ApiModel, status: dict[str, Any]) -> Path:
    p = registry_path(resource.kind, resource.metadata["name"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"resource": resource.to_dict(), "status": status}, indent=2, ensure_ascii=False))
    tmp.replace(p)
    return p


@dataclass
class RunContext:
    """What a workload gets: the typed resource, its parent (if any) and where to put things."""

    resource: Any
    #: The parent run (resource dict with ``status``) when ``spec.model.fromRun`` is used.
    parent: dict[str, Any] | None = None
    #: The model URI after resolving ``fromRun``.
    resolved_model: str | None = None
    #: Scratch/work directory for this run (outputs go to spec.output when given).
    workdir: Path = field(default_factory=lambda: Path.cwd())
    in_cluster: bool = False

    @property
    def name(self) -> str:
        return self.resource.metadata.get("name", "run")

    @property
    def namespace(self) -> str:
        return self.resource.metadata.get("namespace", "default")

    @property
    def kind(self) -> str:
        return self.resource.kind


def resolve_parent(resource: Any, spec_dir: Path | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """(model URI, parent resource+status) for a resource, resolving ``spec.model.fromRun``.

    In a pod, ``status.resolvedModel`` and ``parent.yaml`` written by the operator are used.
    Locally the run registry is read; a missing or unfinished parent is a clear error.
    """
    model = resource.spec.model
    if model.uri:
        return model.uri, None
    ref = model.from_run
    status = resource.status.to_dict() if resource.status is not None else {}
    parent = None
    if spec_dir is not None and (spec_dir / "parent.yaml").exists():
        parent = yaml.safe_load((spec_dir / "parent.yaml").read_text())
    if status.get("resolvedModel"):
        return status["resolvedModel"], parent
    entry = read_registry(ref.kind, ref.name)
    if entry is None:
        raise WorkloadError(
            f"spec.model.fromRun: {ref.kind}/{ref.name} has not run on this machine "
            f"(no {registry_path(ref.kind, ref.name)}); run it first with devops-model run -f <its file>",
            reason="ParentNotFound", exit_code=EXIT_BAD_INPUT,
        )
    pstatus = entry.get("status", {})
    if pstatus.get("state") != "Succeeded" or not pstatus.get("artifact"):
        raise WorkloadError(
            f"spec.model.fromRun: {ref.kind}/{ref.name} has not succeeded (state {pstatus.get('state')!r})",
            reason="ParentNotSucceeded", exit_code=EXIT_BAD_INPUT,
        )
    art = pstatus["artifact"]
    uri = art.get("mergedUri") or art["uri"] if resource.kind in ("QuantizeRun", "ChatDeployment", "EvalRun") else art["uri"]
    parent = {**entry["resource"], "status": pstatus}
    return uri, parent


def run_resource(resource: Any, spec_path: Path | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run one resource's workload here; returns the status it ended with."""
    kind = resource.kind
    target = RUNNERS[kind]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise WorkloadError(f"{kind} cannot run here: {exc}. Install the extra: pip install 'devops-model[train,eval,quantize,serve]'") from exc
    uri, parent = resolve_parent(resource, spec_path.parent if spec_path else None)
    ctx = RunContext(
        resource=resource,
        parent=parent,
        resolved_model=uri,
        workdir=workdir or home() / "work" / kind.lower() / resource.metadata["name"],
        in_cluster=bool(os.environ.get("KUBERNETES_SERVICE_HOST")),
    )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    status: dict[str, Any] = {"state": "Running", "startTime": _now(), "resolvedModel": uri}
    try:
        result = getattr(module, func_name)(ctx) or {}
    except WorkloadError as exc:
        status.update(state="Failed", reason=exc.reason, message=str(exc), completionTime=_now())
        if _is_rank0():
            write_registry(resource, status)
        raise
    status.update(result)
    if status.get("state") == "Running":  # the workload returned without naming a final state
        status["state"] = "Succeeded"
    status["completionTime"] = _now()
    status["durationSeconds"] = round(time.time() - started, 1)
    if _is_rank0():
        write_registry(resource, status)
    return status


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main(argv: list[str] | None = None) -> int:
    """``python -m devops_workloads.runner -f FILE`` (what pods and torchrun run)."""
    ap = argparse.ArgumentParser(prog="devops_workloads.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--file", required=True, help="resource YAML (one document)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    return run_file(Path(args.file), args.workdir)


def run_file(path: Path, workdir: Path | None = None, only: str | None = None) -> int:
    from devops_model.api.resource import InvalidResource

    try:
        docs = load_documents(path)
        resources = [parse_resource(d, str(path)) for d in docs]
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if only:
        resources = [r for r in resources if r.metadata.get("name") == only]
    for res in resources:
        label = f"{res.kind}/{res.metadata['name']}"
        try:
            status = run_resource(res, path, workdir)
        except WorkloadError as exc:
            print(f"✗ {label} failed ({exc.reason}): {exc}", file=sys.stderr)
            report_final({"state": "Failed", "reason": exc.reason, "message": str(exc)})
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"✗ {label} interrupted", file=sys.stderr)
            return 130
        if _is_rank0():
            print(f"✓ {label} {status.get('state')}: {status.get('summary') or status.get('message') or ''}".rstrip(": "))
        report_final(status)
    return 0


# ----------------------------------------------------------------------------- final report (in a pod)
#: The kubelet keeps at most 4096 bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096
#: Fields the operator owns (it decides the run's state from the child); never patched by a worker.
_OPERATOR_FIELDS = ("state", "reason", "message", "startTime", "completionTime", "durationSeconds", "resolvedModel")
#: Kept in the termination message when the whole result does not fit (largest others go first).
_ESSENTIAL = ("state", "reason", "message", "artifact", "summary")


def report_final(status: dict[str, Any]) -> None:
    """Hand the final status to the operator (docs/operator.md, "How a run's result reaches its status").

    In a pod (rank 0 only): (1) write ``{"status": {...}}`` to ``$DEVOPS_MODEL_TERMINATION_LOG``
    (the container's terminationMessagePath; the kubelet copies it into the pod status), cut to
    4096 bytes by dropping the largest non-essential fields; (2) merge-patch the result fields
    (not the state, which the operator decides) into the owner's status via ``DEVOPS_MODEL_OWNER``.
    Locally neither variable is set and this does nothing.
    """
    if not _is_rank0():
        return
    path = os.environ.get("DEVOPS_MODEL_TERMINATION_LOG")
    if path:
        report = dict(status)
        text = json.dumps({"status": report}, ensure_ascii=False, separators=(",", ":"))
        while len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
            others = [k for k in report if k not in _ESSENTIAL]
            if not others:
                report["message"] = str(report.get("message", ""))[:1000]
                text = json.dumps({"status": report}, ensure_ascii=False, separators=(",", ":"))[:TERMINATION_MESSAGE_LIMIT]
                break
            report.pop(max(others, key=lambda k: len(json.dumps(report[k], ensure_ascii=False))))
            text = json.dumps({"status": report}, ensure_ascii=False, separators=(",", ":"))
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:  # reporting must never turn a finished run into a failed one
            print(f"warning: could not write the termination message to {path}: {exc}", file=sys.stderr)
    from .progress import StatusPatcher

    patcher = StatusPatcher.from_env()
    result = {k: v for k, v in status.items() if k not in _OPERATOR_FIELDS}
    if patcher is not None and result:
        patcher.patch(result)


if __name__ == "__main__":
    sys.exit(main())
