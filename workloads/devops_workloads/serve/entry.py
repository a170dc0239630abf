"""ChatDeployment: run the built-in server in the foreground until interrupted — on this machine and,
the same way, in the cluster's server pod (which runs ``devops-model run -f /etc/devops-model/resource.yaml``).

    devops-model run -f examples/local/chat.yaml        # then open http://127.0.0.1:8000/

Whatever ``spec.engine.name`` says, this entry point serves with the built-in engine (vLLM and TGI
need GPUs and their own images: in a cluster the operator runs them directly) and says so.

Before serving it:
* resolves the model (``spec.model.uri`` or the ``fromRun`` artifact) to a local folder with the
  same code as every other stage (hub, ModelScope, S3, PVC);
* applies the gate (``spec.gate``) with :func:`devops_model.lineage.check_gate` — locally against
  the run registry; in a pod the operator applied it and wrote what it found to ``lineage.json``;
* builds the lineage (base → PretrainRun/x → SFTRun/y → QuantizeRun/z) and the exam scores of the
  gating (else the closest) EvalRun, shown by the web chat and /v1/info;
* takes the API key (``spec.auth``) from ``DEVOPS_MODEL_API_KEY`` (set from the Secret in a pod).

Environment: ``DEVOPS_MODEL_SERVE_HOST`` (default 127.0.0.1 locally, 0.0.0.0 in a pod) and
``DEVOPS_MODEL_SERVE_PORT`` (default ``spec.port``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from devops_model.api.chat import ChatStatus, Endpoint
from devops_model.contract import LINEAGE_FILE_NAME, Env, ExitCode, Reason
from devops_model.lineage import Parent, ParentState, check_gate, lineage_record
from devops_model.registry import LocalRegistry

from ..runner import RunContext, WorkloadError


def run(ctx: RunContext) -> ChatStatus:
    from ..sources import materialize_model
    from .app import ServerConfig

    spec = ctx.resource.spec
    lineage = operator_lineage(ctx)
    if lineage is None:  # a local run: the gate and the lineage come from the run registry
        lineage = local_lineage(ctx)
    model_dir = materialize_model(ctx.resolved_model)
    if spec.engine.name != "builtin":
        print(f"note: spec.engine.name is {spec.engine.name}; on this machine the built-in engine serves the model "
              "(vLLM and TGI run in the cluster)", flush=True)
    (ctx.workdir / LINEAGE_FILE_NAME).write_text(json.dumps(lineage, indent=2, ensure_ascii=False))
    api_key = None
    if spec.auth is not None:
        api_key = os.environ.get(Env.API_KEY, "").strip()
        if not api_key:
            raise WorkloadError(
                f"spec.auth.apiKeySecret ({spec.auth.api_key_secret.name}/{spec.auth.api_key_secret.key}) cannot be read "
                f"here: set {Env.API_KEY} to the key, or remove spec.auth for a local run",
                reason=Reason.MISSING_API_KEY, exit_code=ExitCode.BAD_INPUT,
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
    host = os.environ.get(Env.SERVE_HOST) or ("0.0.0.0" if ctx.in_cluster else "127.0.0.1")
    port = int(os.environ.get(Env.SERVE_PORT) or spec.port)
    _serve_until_stopped(config, host, port)
    url = f"http://{host}:{port}"
    return ChatStatus(
        endpoint=Endpoint(url=url, model=name, ui=url + "/" if config.ui else None),
        lineage=lineage.get("lineage"),
        message=f"served {name} at {url} until interrupted",
    )


def operator_lineage(ctx: RunContext) -> dict[str, Any] | None:
    """In a pod: the lineage file the operator wrote into the spec ConfigMap (it applied the gate)."""
    if ctx.spec_dir is None or not (ctx.spec_dir / LINEAGE_FILE_NAME).is_file():
        return None
    try:
        data = json.loads((ctx.spec_dir / LINEAGE_FILE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("lineage") is not None else None


def local_lineage(ctx: RunContext) -> dict[str, Any]:
    """The gate and the lineage from the local run registry, with the rules the operator applies."""
    store = LocalRegistry()
    spec = ctx.resource.spec
    gate = check_gate(spec.gate.to_dict() if spec.gate is not None else None, store)
    if not gate.open:
        hint = " (run it first: devops-model run -f <its file>)" if gate.reason == Reason.WAITING_FOR_GATE else ""
        raise WorkloadError(f"{gate.message}{hint}", reason=Reason(gate.reason or Reason.GATE_NOT_MET),
                            exit_code=ExitCode.BAD_INPUT)
    parent = Parent(ParentState.RESOLVED if ctx.parent else ParentState.NONE, uri=ctx.resolved_model, run=ctx.parent)
    return lineage_record(ctx.resource.to_dict(), parent, gate, store).to_dict()


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


