"""ChatDeployment on this machine: run the built-in server in the foreground until interrupted.

    devops-model run -f examples/local/chat.yaml        # then open http://127.0.0.1:8000/

In a cluster the operator runs ``devops-model serve`` (engine builtin), vLLM or TGI directly in a
Deployment; this entry point is the local equivalent of that Deployment. Whatever
``spec.engine.name`` says, the local run uses the built-in engine (vLLM and TGI need GPUs and their
own images) and says so.

Before serving it:
* resolves the model (``spec.model.uri`` or the ``fromRun`` artifact) to a local folder;
* applies the gate (``spec.gate``): the named EvalRun must have succeeded with an overall accuracy of
  at least ``minAccuracy`` for the given shots, else the run fails with reason ``GateNotPassed``;
* builds the lineage (``PretrainRun/x → SFTRun/y → QuantizeRun/z``) from the local run registry
  and the exam scores of the closest EvalRun of that chain, shown by the web chat and /v1/info;
* takes the API key (``spec.auth``) from ``DEVOPS_MODEL_API_KEY``: a Secret cannot be read locally.

Environment: ``DEVOPS_MODEL_SERVE_HOST`` (default 127.0.0.1 locally, 0.0.0.0 in a pod) and
``DEVOPS_MODEL_SERVE_PORT`` (default ``spec.port``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..runner import EXIT_BAD_INPUT, RunContext, WorkloadError, home, read_registry


def run(ctx: RunContext) -> dict[str, Any]:
    from ..sources import materialize_model
    from .app import ServerConfig

    spec = ctx.resource.spec
    model_dir = materialize_model(ctx.resolved_model)
    if spec.engine.name != "builtin":
        print(f"note: spec.engine.name is {spec.engine.name}; on this machine the built-in engine serves the model "
              "(vLLM and TGI run in the cluster)", flush=True)
    scores_from = check_gate(ctx)
    lineage = build_lineage(ctx, scores_from)
    (ctx.workdir / "lineage.json").write_text(json.dumps(lineage, indent=2, ensure_ascii=False))
    api_key = None
    if spec.auth is not None:
        api_key = os.environ.get("DEVOPS_MODEL_API_KEY", "").strip()
        if not api_key:
            raise WorkloadError(
                f"spec.auth.apiKeySecret ({spec.auth.api_key_secret.name}/{spec.auth.api_key_secret.key}) cannot be read "
                "on this machine: set DEVOPS_MODEL_API_KEY to the key, or remove spec.auth for a local run",
                reason="MissingApiKey", exit_code=EXIT_BAD_INPUT,
            )
    name = spec.served_model_name or ctx.name
    config = ServerConfig(
        model_dir=str(model_dir),
        served_model_name=name,
        max_concurrency=spec.engine.max_concurrency,
        max_model_len=spec.engine.max_model_length,
        api_key=api_key,
        lineage=lineage,
        ui=spec.ui == "enabled",
        trust_remote_code=spec.model.trust_remote_code,
    )
    host = os.environ.get("DEVOPS_MODEL_SERVE_HOST") or ("0.0.0.0" if ctx.in_cluster else "127.0.0.1")
    port = int(os.environ.get("DEVOPS_MODEL_SERVE_PORT") or spec.port)
    _serve_until_stopped(config, host, port)
    url = f"http://{host}:{port}"
    return {
        "endpoint": {"url": url, "model": name, "ui": url + "/" if config.ui else None},
        "lineage": lineage.get("lineage"),
        "message": f"served {name} at {url} until interrupted",
    }


def _serve_until_stopped(config, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM, then return normally so that the run is recorded.

    uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal with the previous
    handlers restored; SIGTERM's default would kill the process before the status is written, so
    both are turned into KeyboardInterrupt here and caught.
    """
    import signal

    from .cli import serve

    def interrupt(_sig, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        serve(config, host, port)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _overall(scores: dict[str, Any], shots: int) -> float | None:
    for row in (scores or {}).get("overall", []):
        if row.get("shots") == shots:
            return float(row["accuracy"])
    return None


def check_gate(ctx: RunContext) -> str | None:
    """Apply ``spec.gate``; returns the gating EvalRun's name (its scores are shown) or None."""
    gate = ctx.resource.spec.gate
    if gate is None:
        return None
    entry = read_registry("EvalRun", gate.eval_run)
    where = f"spec.gate.evalRun: EvalRun/{gate.eval_run}"
    if entry is None:
        raise WorkloadError(f"{where} has not run on this machine; run it first (devops-model run -f <its file>)",
                            reason="GateNotPassed", exit_code=EXIT_BAD_INPUT)
    status = entry.get("status", {})
    if status.get("state") != "Succeeded":
        raise WorkloadError(f"{where} has not succeeded (state {status.get('state')!r})",
                            reason="GateNotPassed", exit_code=EXIT_BAD_INPUT)
    acc = _overall(status.get("scores") or {}, gate.shots)
    if acc is None:
        raise WorkloadError(f"{where} has no overall score for {gate.shots} shots (spec.gate.shots)",
                            reason="GateNotPassed", exit_code=EXIT_BAD_INPUT)
    need = float(gate.min_accuracy)
    if acc < need:
        raise WorkloadError(f"{where} scored {acc:.3f} at {gate.shots} shots, below spec.gate.minAccuracy {need}; "
                            "the model is not served", reason="GateNotPassed", exit_code=EXIT_BAD_INPUT)
    return gate.eval_run


def build_lineage(ctx: RunContext, scores_from: str | None = None) -> dict[str, Any]:
    """{"lineage": [oldest … served], "artifact": ..., "scores": ...} from the local run registry."""
    chain: list[tuple[str, str]] = []
    artifact = None
    parent = ctx.parent
    seen = set()
    while parent is not None:
        kind, name = parent.get("kind"), (parent.get("metadata") or {}).get("name")
        if not kind or not name or (kind, name) in seen:
            break
        seen.add((kind, name))
        chain.append((kind, name))
        if artifact is None:
            artifact = (parent.get("status") or {}).get("artifact")
        ref = ((parent.get("spec") or {}).get("model") or {}).get("fromRun")
        if not ref:
            base = ((parent.get("spec") or {}).get("model") or {}).get("uri")
            if base:
                chain.append(("base", base))
            break
        entry = read_registry(ref["kind"], ref["name"])
        parent = {**entry["resource"], "status": entry.get("status", {})} if entry else None
        if parent is None:
            chain.append((ref["kind"], ref["name"]))
    chain.reverse()
    if not chain and ctx.resource.spec.model.uri:
        chain = [("base", ctx.resource.spec.model.uri)]
    out: dict[str, Any] = {"lineage": [n if k == "base" else f"{k}/{n}" for k, n in chain]}
    if artifact:
        out["artifact"] = artifact
    scores = _scores_for(chain, scores_from)
    if scores:
        out["scores"], out["scoresFrom"] = scores
    return out


def _scores_for(chain: list[tuple[str, str]], evalrun: str | None):
    """Scores of the gating EvalRun, else of the EvalRun that examined the closest run of the chain."""
    if evalrun:
        entry = read_registry("EvalRun", evalrun)
        if entry and (entry.get("status") or {}).get("scores"):
            return entry["status"]["scores"], f"EvalRun/{evalrun}"
    runs = home() / "runs" / "evalrun"
    if not runs.is_dir():
        return None
    evals = []
    for p in sorted(runs.glob("*.json")):
        try:
            entry = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        status = entry.get("status") or {}
        ref = (((entry.get("resource") or {}).get("spec") or {}).get("model") or {}).get("fromRun")
        if status.get("state") == "Succeeded" and status.get("scores") and ref:
            evals.append(((ref.get("kind"), ref.get("name")), entry))
    for link in reversed(chain):  # the served run first, then its ancestors
        for target, entry in evals:
            if target == link:
                return entry["status"]["scores"], f"EvalRun/{entry['resource']['metadata']['name']}"
    return None
