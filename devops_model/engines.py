"""The serving engines of a ChatDeployment, one record each: what the API, the operator's builders,
the docs and the tests need to know about vLLM, TGI and the built-in server.

    engine = ENGINES[chat.spec.engine.name]
    command, args = engine.command, engine.args(chat.spec, model="/models/sft", served_name="chat",
                                                artifact_format="gptq-int4")

The built-in server runs the same worker entry point as every other pod
(``devops-model run -f /etc/devops-model/resource.yaml``), so its model arrives through the same
code as locally (hub, ModelScope, S3, PVC) and it needs no flags (the API refuses extraArgs for it);
vLLM and TGI get flags built from the spec, which ``spec.engine.extraArgs`` may not repeat or override
(``devops_model.api.chat.OPERATOR_FLAGS``).

Pure: no I/O, no imports beyond the standard library and the contract.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from .contract import SPEC_FILE, Env


def is_gptq(artifact_format: Optional[str]) -> bool:
    return bool(artifact_format) and "gptq" in str(artifact_format).lower()


def _gpus(spec: Any) -> int:
    return max(int(spec.resources.gpus_per_node or 0), 1)


def web_chat_sidecar(spec: Any) -> bool:
    """Whether the pod gets the web chat sidecar (``devops-model serve --upstream``): the UI is asked
    for and the engine does not serve one itself (vLLM, TGI)."""
    return bool(spec.ui == "enabled" and not ENGINES[spec.engine.name].serves_ui)


def engine_port(spec: Any) -> int:
    """The port the engine listens on. With the web chat sidecar the sidecar takes ``spec.port`` (the
    Service's target) and the engine the next port (the one below for 65535), reachable only inside
    the pod through the sidecar; otherwise the engine takes ``spec.port``."""
    if not web_chat_sidecar(spec):
        return int(spec.port)
    return int(spec.port) + 1 if spec.port < 65535 else int(spec.port) - 1


def _vllm_args(spec: Any, model: str, served_name: str, artifact_format: Optional[str]) -> list[str]:
    args = [
        "--model", model,
        "--served-model-name", served_name,
        "--host", "0.0.0.0",
        "--port", str(engine_port(spec)),
        "--max-model-len", str(spec.engine.max_model_length),
        "--max-num-seqs", str(spec.engine.max_concurrency),
        "--tensor-parallel-size", str(_gpus(spec)),
    ]
    # No --quantization flag for GPTQ: vLLM reads quantize_config.json and picks its fastest kernel
    # (gptq_marlin on Ampere and newer); "--quantization gptq" would force the slow exllama path.
    if spec.engine.tool_call_parser:
        # OpenAI tool calls: vLLM parses the model's output with the named parser (Qwen2.5: hermes).
        args += ["--enable-auto-tool-choice", "--tool-call-parser", spec.engine.tool_call_parser]
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def _tgi_args(spec: Any, model: str, served_name: str, artifact_format: Optional[str]) -> list[str]:
    args = [
        "--model-id", model,
        "--hostname", "0.0.0.0",
        "--port", str(engine_port(spec)),
        "--max-total-tokens", str(spec.engine.max_model_length),
        "--max-input-tokens", str(spec.engine.max_model_length - 1),
        "--max-concurrent-requests", str(spec.engine.max_concurrency),
        "--num-shard", str(_gpus(spec)),
    ]
    if is_gptq(artifact_format):
        args += ["--quantize", "gptq"]
    if spec.model.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def _no_args(spec: Any, model: str, served_name: str, artifact_format: Optional[str]) -> list[str]:
    return []


@dataclass(frozen=True)
class Engine:
    name: str
    #: Key of the image in the operator's configuration (``images.<key>``).
    image_key: str
    command: tuple[str, ...]
    #: (spec, model path or hub id, served model name, artifact format) -> arguments.
    build_args: Callable[[Any, str, str, Optional[str]], list[str]]
    #: Needs resources.gpusPerNode >= 1.
    needs_gpu: bool
    #: Serves the web chat at / itself.
    serves_ui: bool
    #: Environment variables that receive the API key from spec.auth.apiKeySecret (by reference).
    api_key_env: tuple[str, ...]
    #: Environment variables set from the spec (name -> function of the spec).
    env: tuple[tuple[str, Callable[[Any], str]], ...] = ()
    #: The readiness/liveness route (200 once the model is loaded).
    health_path: str = "/health"
    #: Whether the engine downloads hub ids itself (vLLM, TGI) or gets them from the worker (builtin).
    loads_hub_ids: bool = True
    #: The variable that makes the engine download hub ids from ModelScope; "" when it cannot (TGI).
    modelscope_env: str = ""

    def args(self, spec: Any, model: str, served_name: str, artifact_format: Optional[str] = None) -> list[str]:
        return self.build_args(spec, model, served_name, artifact_format)

    def env_from_spec(self, spec: Any) -> list[tuple[str, str]]:
        return [(name, fn(spec)) for name, fn in self.env]


ENGINES: dict[str, Engine] = {
    "vllm": Engine(
        name="vllm", image_key="vllm",
        # vLLM's image entrypoint changed between releases; the module is stable.
        command=("python3", "-m", "vllm.entrypoints.openai.api_server"),
        build_args=_vllm_args, needs_gpu=True, serves_ui=False,
        api_key_env=("VLLM_API_KEY",), modelscope_env="VLLM_USE_MODELSCOPE",
    ),
    "tgi": Engine(
        name="tgi", image_key="tgi", command=("text-generation-launcher",),
        build_args=_tgi_args, needs_gpu=True, serves_ui=False,
        # TGI reads its key from API_KEY (text-generation-launcher --api-key / env API_KEY).
        api_key_env=("API_KEY",),
    ),
    "builtin": Engine(
        name="builtin", image_key="serve",
        command=("devops-model", "run", "-f", SPEC_FILE),
        build_args=_no_args, needs_gpu=False, serves_ui=True,
        api_key_env=(Env.API_KEY,),
        env=((Env.SERVE_HOST, lambda spec: "0.0.0.0"), (Env.SERVE_PORT, lambda spec: str(spec.port))),
        loads_hub_ids=False,
    ),
}

ENGINE_NAMES: tuple[str, ...] = tuple(ENGINES)

