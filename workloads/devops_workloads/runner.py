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

from devops_model.api import Resource
from devops_model.api.resource import load_documents, parse_resource
from devops_model.artifacts import ArtifactMismatchError, seal, verify
from devops_model.contract import (
    KINDS_WITH_ARTIFACT,
    PARENT_FILE_NAME,
    TERMINATION_MESSAGE_LIMIT,
    Env,
    ExitCode,
    Reason,
    State,
)
from devops_model.lineage import ParentState
from devops_model.lineage import resolve_parent as resolve_lineage_parent
from devops_model.registry import LocalRegistry, home, registry_path, write_entry
from devops_model.uris import UriError, local_path, parse_uri

from .processes import usable_cpus
from .ranks import is_rank0

#: kind -> "module:function" implementing it.
RUNNERS: dict[str, str] = {
    "PretrainRun": "devops_workloads.train.entry:run",
    "SFTRun": "devops_workloads.train.entry:run",
    "EvalRun": "devops_workloads.evaluate.entry:run",
    "QuantizeRun": "devops_workloads.quantize.entry:run",
    "ChatDeployment": "devops_workloads.serve.entry:run",
}


class WorkloadError(RuntimeError):
    """A failure with a reason a person understands; ``reason`` becomes the condition reason and
    ``exit_code`` tells the operator whether a new attempt can help (docs/operator.md)."""

    def __init__(self, message: str, reason: Reason = Reason.FAILED, exit_code: int = ExitCode.FAILED):
        super().__init__(message)
        self.reason = Reason(reason)
        self.exit_code = int(exit_code)


@dataclass
class RunContext:
    """What a workload gets: the typed resource, its parent (if any) and where to put things."""

    resource: Resource
    #: The parent run (resource dict with ``status``) when ``spec.model.fromRun`` is used.
    parent: dict[str, Any] | None = None
    #: The model URI after resolving ``fromRun``.
    resolved_model: str | None = None
    #: Scratch/work directory for this run (outputs go to spec.output when given).
    workdir: Path = field(default_factory=lambda: Path.cwd())
    in_cluster: bool = False
    #: The folder of the spec file (in a pod: the operator's ConfigMap, with parent.yaml, lineage.json).
    spec_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.resource.metadata.name or "run"

    @property
    def namespace(self) -> str:
        return self.resource.metadata.namespace or "default"

    @property
    def kind(self) -> str:
        return self.resource.kind


def resolve_parent(resource: Any, spec_dir: Path | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """(model URI, parent run with its status) for a resource, resolving ``spec.model.fromRun``.

    In a pod, ``status.resolvedModel`` and ``parent.yaml`` written by the operator are used (it
    resolved the parent on the API server with the same rules). Locally the run registry is the
    store of :func:`devops_model.lineage.resolve_parent`: a parent that has not run or not succeeded
    here is an error (nothing would change while we wait).
    """
    model = resource.spec.model
    if model.uri:
        return model.uri, None
    status = resource.status.to_dict() if resource.status is not None else {}
    if status.get("resolvedModel"):
        parent = None
        if spec_dir is not None and (spec_dir / PARENT_FILE_NAME).exists():
            parent = yaml.safe_load((spec_dir / PARENT_FILE_NAME).read_text(encoding="utf-8"))
        return status["resolvedModel"], parent
    found = resolve_lineage_parent(resource.kind, resource.metadata.name, model.to_dict(), LocalRegistry())
    ref = model.from_run
    if found.state == ParentState.RESOLVED:
        return found.uri, dict(found.run or {})
    if found.state == ParentState.MISSING:
        raise WorkloadError(
            f"spec.model.fromRun: {ref.kind}/{ref.name} has not run on this machine "
            f"(no {registry_path(ref.kind, ref.name)}); run it first with devops-model run -f <its file>",
            reason=Reason.PARENT_NOT_FOUND, exit_code=ExitCode.BAD_INPUT,
        )
    if found.state == ParentState.CYCLE:
        raise WorkloadError(found.message, reason=Reason.LINEAGE_CYCLE, exit_code=ExitCode.BAD_INPUT)
    raise WorkloadError(f"spec.model.fromRun: {found.message}", reason=Reason.PARENT_NOT_SUCCEEDED,
                        exit_code=ExitCode.BAD_INPUT)


def limit_cpu_threads() -> int | None:
    """Threads for the CPUs this process may use, unless OMP_NUM_THREADS says (torchrun sets it to 1
    per rank). torch starts one intra-op thread per core of the node, whatever the pod's CPU limit: in a
    500m pod on a 64-core node that is 64 threads throttled to half a core. Set before torch is imported
    (OpenMP reads it once), or on torch itself when it already is. Returns the count, or None."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    n = usable_cpus()
    torch = sys.modules.get("torch")
    if torch is None:  # a pod's process: the workload imports torch next
        os.environ["OMP_NUM_THREADS"] = str(n)
    elif torch.get_num_threads() > n:  # in-process (tests, the quickstart): only this process's pool
        torch.set_num_threads(n)
    return n


def run_resource(resource: Any, spec_path: Path | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run one resource's workload here; returns the status it ended with.

    The run is recorded in the local registry as Running before the work starts, so a re-run that
    fails never leaves the previous run's Succeeded (and its artifact) for a later ``fromRun``."""
    kind = resource.kind
    target = RUNNERS[kind]
    module_name, func_name = target.split(":")
    limit_cpu_threads()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise WorkloadError(f"{kind} cannot run here: {exc}. Install the extra: pip install 'devops-model[train,eval,quantize,serve]'",
                            reason=Reason.MISSING_DEPENDENCY, exit_code=ExitCode.BAD_INPUT) from exc
    doc = resource.to_dict()
    doc.pop("status", None)
    status: dict[str, Any] = {"state": State.RUNNING.value, "startTime": _now()}
    uri, parent = None, None
    try:
        uri, parent = resolve_parent(resource, spec_path.parent if spec_path else None)
        verify_parent_artifact(uri, parent)
        status["resolvedModel"] = uri
        ctx = RunContext(
            resource=resource,
            parent=parent,
            resolved_model=uri,
            workdir=workdir or home() / "work" / kind.lower() / resource.metadata.name,
            in_cluster=bool(os.environ.get("KUBERNETES_SERVICE_HOST")),
            spec_dir=spec_path.parent if spec_path else None,
        )
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        if is_rank0():
            write_entry(doc, status)
        started = time.time()
        result = getattr(module, func_name)(ctx) or {}
    except WorkloadError as exc:
        status.update(state=State.FAILED.value, reason=exc.reason.value, message=str(exc), completionTime=_now())
        if is_rank0():
            write_entry(doc, status)
        raise
    except BaseException as exc:
        # Interrupted or crashed: the record must not keep saying Running (or an older Succeeded).
        status.update(state=State.FAILED.value, reason=Reason.FAILED.value,
                      message=f"{type(exc).__name__}: {exc}"[:1000], completionTime=_now())
        if is_rank0():
            write_entry(doc, status)
        raise
    status.update(_plain(result))
    if status.get("state") == State.RUNNING:  # the workload returned without naming a final state
        status["state"] = State.SUCCEEDED.value
    status["completionTime"] = _now()
    status["durationSeconds"] = round(time.time() - started, 1)
    if is_rank0():
        if kind in KINDS_WITH_ARTIFACT and status.get("state") == State.SUCCEEDED:
            seal_artifact(status)
        write_entry(doc, status)
    return status


# ----------------------------------------------------------------------------- content-addressed artifacts
def _local_dir(uri: str | None) -> Path | None:
    """The local folder of a pvc:// or file:// URI, or None (remote, or not a folder)."""
    if not uri:
        return None
    try:
        path = local_path(uri) if parse_uri(uri).is_local else None
    except UriError:
        return None
    return path if path is not None and path.is_dir() else None


def _nested(inner: Path | None, outer: Path) -> tuple[str, ...]:
    """The name of ``inner`` when it is a direct subfolder of ``outer`` (sealed on its own)."""
    return (inner.name,) if inner is not None and inner.parent == outer else ()


def seal_artifact(status: dict[str, Any]) -> None:
    """Seal a succeeded run's artifact folder(s) (devops_model.artifacts): write manifest.sha256,
    record ``artifact.digest`` / ``mergedDigest`` in the status and in the folder's artifact.json."""
    art = status.get("artifact")
    if not isinstance(art, dict):
        return
    root = _local_dir(art.get("uri"))
    if root is None:
        return
    merged = _local_dir(art.get("mergedUri"))
    if merged is not None:
        art["mergedDigest"] = seal(merged)
    art["digest"] = seal(root, _nested(merged, root))
    record = root / "artifact.json"
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except ValueError:
            data = None
        if isinstance(data, dict):
            data.update({k: art[k] for k in ("digest", "mergedDigest") if k in art})
            record.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def verify_parent_artifact(uri: str | None, parent: dict[str, Any] | None) -> None:
    """Before a byte of the parent's model is used: the folder must be what the parent sealed.

    Checks the folder the run uses (the artifact, or its merged model) and, when the artifact holds
    its merged model as a subfolder, that one too (training on a LoRA parent loads ``merged/``).
    A parent recorded before digests existed is used with a warning; remote URIs are not checked."""
    if not uri or not parent:
        return
    art = (parent.get("status") or {}).get("artifact") or {}
    label = f"{parent.get('kind', 'run')}/{(parent.get('metadata') or {}).get('name', '?')}"
    if uri not in (art.get("uri"), art.get("mergedUri")):
        return
    root, merged = _local_dir(art.get("uri")), _local_dir(art.get("mergedUri"))
    checks: list[tuple[Path, str | None, tuple[str, ...], str]] = []
    if uri == art.get("mergedUri") and merged is not None:
        checks.append((merged, art.get("mergedDigest"), (), art["mergedUri"]))
    elif root is not None:
        checks.append((root, art.get("digest"), _nested(merged, root), art["uri"]))
        if merged is not None and _nested(merged, root):
            checks.append((merged, art.get("mergedDigest"), (), art["mergedUri"]))
    for folder, digest, skip, where in checks:
        if not digest:
            print(f"warning: {label}'s artifact {where} has no digest (recorded before artifacts were sealed); "
                  "it is used without verification", file=sys.stderr)
            continue
        try:
            verify(folder, digest, skip, label=f"{label}'s artifact {where}")
        except ArtifactMismatchError as exc:
            raise WorkloadError(str(exc), reason=Reason.ARTIFACT_MISMATCH, exit_code=ExitCode.BAD_INPUT) from None


def _plain(result: Any) -> dict[str, Any]:
    """A workload's result (typed status models or plain dicts) as the status dict the API has."""
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    out: dict[str, Any] = {}
    for key, value in dict(result).items():
        out[key] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main(argv: list[str] | None = None) -> int:
    """``python -m devops_workloads.runner -f FILE`` (what pods and torchrun run)."""
    ap = argparse.ArgumentParser(prog="devops_workloads.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("-f", "--file", required=True, help="resource YAML (one document)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--verify-only", action="store_true",
                    help="only check that the parent run's artifact is the one it sealed (its digests), then exit: "
                         "what a vLLM or TGI pod's init container runs before the engine loads the model")
    args = ap.parse_args(argv)
    if args.verify_only:
        return verify_file(Path(args.file))
    return run_file(Path(args.file), args.workdir)


def verify_file(path: Path) -> int:
    """For engines that load the model themselves (vLLM, TGI): the checks a run makes before using its
    parent's artifact (verify_parent_artifact), without the run. Exit 3 (bad input) when it differs."""
    from devops_model.api.resource import InvalidResource

    try:
        resources = [parse_resource(d, str(path)) for d in load_documents(path)]
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    for res in resources:
        label = f"{res.kind}/{res.metadata.name}"
        try:
            uri, parent = resolve_parent(res, path.parent)
            verify_parent_artifact(uri, parent)
        except WorkloadError as exc:
            print(f"✗ {label}: {exc}", file=sys.stderr)
            report_final({"state": State.FAILED.value, "reason": exc.reason.value, "message": str(exc)})
            return exc.exit_code
        print(f"✓ {label}: {uri} " + ("is the artifact its parent sealed" if parent else "(not from a run: nothing to verify)"))
    return ExitCode.OK


def run_file(path: Path, workdir: Path | None = None, only: str | None = None) -> int:
    from devops_model.api.resource import InvalidResource

    try:
        docs = load_documents(path)
        resources = [parse_resource(d, str(path)) for d in docs]
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if only:
        resources = [r for r in resources if r.metadata.name == only]
    for res in resources:
        label = f"{res.kind}/{res.metadata.name}"
        try:
            status = run_resource(res, path, workdir)
        except WorkloadError as exc:
            print(f"✗ {label} failed ({exc.reason}): {exc}", file=sys.stderr)
            report_final({"state": State.FAILED.value, "reason": exc.reason.value, "message": str(exc)})
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"✗ {label} interrupted", file=sys.stderr)
            return 130
        if is_rank0():
            print(f"✓ {label} {status.get('state')}: {status.get('summary') or status.get('message') or ''}".rstrip(": "))
        report_final(status)
    return ExitCode.OK


# ----------------------------------------------------------------------------- final report (in a pod)
#: Kept in the termination message when the whole result does not fit (largest others go first).
_ESSENTIAL = ("state", "reason", "message", "artifact", "summary", "endpoint")


def termination_message(status: dict[str, Any]) -> str:
    """``{"status": {...}}`` within the kubelet's 4096 bytes: the largest non-essential fields are
    dropped first; of the scores, the per-exam rows go before the overall ones."""
    report = dict(status)

    def text() -> str:
        return json.dumps({"status": report}, ensure_ascii=False, separators=(",", ":"))

    while len(text().encode()) > TERMINATION_MESSAGE_LIMIT:
        scores = report.get("scores")
        if isinstance(scores, dict) and scores.get("exams"):
            report["scores"] = {k: v for k, v in scores.items() if k != "exams"}
            continue
        others = [k for k in report if k not in _ESSENTIAL]
        if not others:
            report["message"] = str(report.get("message", ""))[:1000]
            return text()[:TERMINATION_MESSAGE_LIMIT]
        report.pop(max(others, key=lambda k: len(json.dumps(report[k], ensure_ascii=False))))
    return text()


def report_final(status: dict[str, Any]) -> None:
    """Hand the final status to the operator (docs/operator.md, "How a run's result reaches its status").

    In a pod, rank 0 writes ``{"status": {...}}`` to ``$DEVOPS_MODEL_TERMINATION_LOG`` (the
    container's terminationMessagePath): the kubelet copies it into the pod's status, a channel no
    other pod can write, and the operator takes the run's outcome (artifact, scores, endpoint) from
    there. The worker never patches an outcome into the run's status itself; its status patches carry
    progress only. Locally the variable is not set and this does nothing.
    """
    if not is_rank0():
        return
    path = os.environ.get(Env.TERMINATION_LOG)
    if not path:
        return
    try:
        Path(path).write_text(termination_message(status), encoding="utf-8")
    except OSError as exc:  # reporting must never turn a finished run into a failed one
        print(f"warning: could not write the termination message to {path}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    # torchrun -m devops_workloads.runner loads this file as __main__: run the imported module's
    # main, so that `except WorkloadError` catches the class the workloads raise (one class, one module).
    from devops_workloads.runner import main as _main

    sys.exit(_main())
