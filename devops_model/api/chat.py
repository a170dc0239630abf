"""ChatDeployment: an in-cluster chat service with an OpenAI-compatible API and a web chat."""

from __future__ import annotations

import re
from typing import Any, Annotated, Literal, Optional

from pydantic import Field

from ..engines import ENGINES
from .base import ApiModel, Checked, ObjectMeta, Rule
from .common import CommonStatus, Image, ModelSource, Resources, RunName, SecretKeyRef, cel_quote, root_rules

#: Engines that run without a GPU (devops_model.engines).
_CPU_ENGINES = [name for name, engine in ENGINES.items() if not engine.needs_gpu]

#: Flags the operator sets on some engine (vLLM, TGI or the built-in server), from the spec:
#: extraArgs may not repeat or override them (a second --port breaks the probes and the
#: Service, --trust-remote-code undoes trustRemoteCode: false, --api-key bypasses auth). Also
#: refused: vLLM's --config (it can set any of these from a file) and the short forms.
OPERATOR_FLAGS: tuple[str, ...] = (
    "--api-key", "--api-key-file", "--config", "--host", "--hostname", "--lineage-file",
    "--max-concurrency", "--max-concurrent-requests", "--max-input-length", "--max-input-tokens",
    "--max-model-len", "--max-num-seqs", "--max-total-tokens", "--model", "--model-id", "--no-ui",
    "--num-shard", "--port", "--quantization", "--quantize", "--served-model-name", "--sharded",
    "--tensor-parallel-size", "--trust-remote-code", "--uds", "--upstream",
)
OPERATOR_SHORT_FLAGS: tuple[str, ...] = ("-p", "-q", "-tp")


def overridden_flag(arg: str) -> str | None:
    """The operator's flag that ``arg`` would set, or None. Catches ``--flag=value``,
    ``--flag_with_underscores`` (vLLM accepts them), ``--no-flag`` and the unambiguous prefixes
    that argparse expands (``--trust-remote`` is ``--trust-remote-code``)."""
    name = arg.split("=", 1)[0].replace("_", "-")
    if name in OPERATOR_SHORT_FLAGS or re.match(r"^-p[0-9]", arg) or re.match(r"^-q[a-z]", arg):
        return name[:2] if name not in OPERATOR_SHORT_FLAGS else name
    if not name.startswith("--") or len(name) < 3:
        return None
    negated = "--" + name[5:] if name.startswith("--no-") else None
    for flag in OPERATOR_FLAGS:
        if flag.startswith(name) or (negated and flag.startswith(negated)):
            return flag
    return None


def _prefix_trie(words: list[str]) -> str:
    """A regular expression (RE2 and Python alike) matching every non-empty prefix of ``words``;
    "-" also matches "_" (vLLM accepts both)."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})

    def emit(node: dict[str, Any]) -> str:
        alts = []
        for ch, sub in sorted(node.items()):
            atom = "[-_]" if ch == "-" else re.escape(ch)
            alts.append(atom + (f"(?:{emit(sub)})?" if sub else ""))
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(trie)


_LONG = [f[2:] for f in OPERATOR_FLAGS] + ["no-" + f[2:] for f in OPERATOR_FLAGS]
#: One expression for both halves: an argument that names (a prefix of) an operator flag, with
#: or without "=value", or a short form of one.
OPERATOR_FLAG_PATTERN = (
    rf"^(?:--{_prefix_trie(_LONG)}|-(?:p|q|tp))(?:=(?s:.*))?$|^-p[0-9]|^-q[a-z]"
)
_OPERATOR_FLAG_RE = re.compile(OPERATOR_FLAG_PATTERN)
_EXTRA_ARG_RULE = Rule(
    cel=f"!self.matches({cel_quote(OPERATOR_FLAG_PATTERN)})",
    message="sets a flag the operator sets from the spec (model, host, port, served name, limits, "
    "quantization, trust-remote-code, api key); use the matching spec field instead",
    message_expression="self.split('=')[0].replace('_', '-') + ' is set by the operator from the spec and cannot be repeated or "
    "overridden in extraArgs; use the matching spec field instead'",
    explain=lambda a: f"{a.split('=', 1)[0].replace('_', '-')} is set by the operator from the spec and cannot "
    "be repeated or overridden in extraArgs; use the matching spec field instead",
    check=lambda a: _OPERATOR_FLAG_RE.search(a) is None,
)
ExtraArg = Annotated[str, Field(max_length=1024), Checked(_EXTRA_ARG_RULE)]


class AuthSpec(ApiModel):
    """API key authentication (Authorization: Bearer KEY)."""

    api_key_secret: SecretKeyRef = Field(description="Secret key holding the API key.")


class ServeGate(ApiModel):
    """Serve only a model that passed its exams."""

    eval_run: RunName = Field(description="EvalRun whose overall accuracy is checked.")
    min_accuracy: str = Field(pattern=r"^(0(\.[0-9]+)?|1(\.0+)?)$", max_length=16, description='Minimum overall accuracy (0-1), e.g. "0.55".')
    shots: int = Field(default=0, ge=0, le=5, description="Which shots setting of the EvalRun to read.")


class EngineSpec(ApiModel):
    """Serving engine settings."""

    name: Literal["vllm", "tgi", "builtin"] = Field(default="vllm", description="vllm (default), tgi (maintenance mode upstream) or builtin (CPU and small GPUs).")
    image: Optional[Image] = Field(default=None, description="Override the engine image from the operator's configuration.")
    max_model_length: int = Field(default=4096, ge=128, le=1_048_576, description="Maximum tokens of prompt plus answer.")
    max_concurrency: int = Field(default=16, ge=1, le=4096, description="Concurrent requests before the server answers 429.")
    tool_call_parser: Optional[str] = Field(default=None, max_length=64, pattern=r"^[a-z0-9_]+$", description="OpenAI tool calls: the parser of the model's tool-call output (Qwen2.5 and DevOps-Model chat models: hermes). vLLM gets --enable-auto-tool-choice --tool-call-parser with it; the builtin server parses hermes whenever the chat template renders tools (only hermes is accepted for it); TGI parses tools itself and takes no parser.")
    extra_args: Optional[list[ExtraArg]] = Field(default=None, max_length=32, description="Extra engine command-line arguments, appended after the operator's; flags the operator sets from the spec (--model, --port, --host, --trust-remote-code, --api-key, --served-model-name, limits, quantization) are refused.")


class ChatSpec(ApiModel):
    """The chat service."""

    model: ModelSource = Field(description="The model to serve (plain, LoRA-merged or GPTQ).")
    served_model_name: Optional[str] = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._/-]+$", description="Model id in the API (default: the resource name).")
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(default=1, ge=0, le=100, description="Number of server pods behind the Service.")
    resources: Resources = Field(default_factory=Resources)
    auth: Optional[AuthSpec] = Field(default=None, description="Require an API key.")
    ui: Literal["enabled", "disabled"] = Field(default="enabled", description="Serve the web chat page at /.")
    gate: Optional[ServeGate] = Field(default=None, description="Only serve when an EvalRun reached a minimum score.")
    network_policy: Literal["none", "namespace"] = Field(default="none", description="namespace: only pods of the same namespace may connect.")
    port: int = Field(default=8000, ge=1024, le=65535, description="Port of the API and the web chat (Service and container).")

    rules = (
        Rule(
            # From the engine registry: the engines that run on CPU need no GPU.
            cel=f"(has(self.engine) && self.engine.name in {_CPU_ENGINES!r}) || "
                "(has(self.resources) && self.resources.gpusPerNode >= 1)",
            message=f"engines {', '.join(n for n in ENGINES if n not in _CPU_ENGINES)} need resources.gpusPerNode >= 1; "
                    f"use engine.name: {_CPU_ENGINES[0]} on CPU",
            check=lambda m: not ENGINES[m.engine.name].needs_gpu or m.resources.gpus_per_node >= 1,
            field=".engine.name",
        ),
        Rule(
            cel="!(has(self.engine) && self.engine.name == 'builtin' && has(self.engine.extraArgs))",
            message="the builtin engine takes no extraArgs: its pod runs the worker entry point, which reads "
                    "everything from the spec",
            check=lambda m: not (m.engine.name == "builtin" and m.engine.extra_args),
            field=".engine.extraArgs",
        ),
        Rule(
            cel="!has(self.engine) || !has(self.engine.toolCallParser) || self.engine.name == 'vllm' || "
                "(self.engine.name == 'builtin' && self.engine.toolCallParser == 'hermes')",
            message="toolCallParser is vLLM's setting: the builtin server parses hermes tool calls (set hermes or "
                    "leave it unset) and TGI parses tools itself (leave it unset)",
            check=lambda m: not m.engine.tool_call_parser or m.engine.name == "vllm"
            or (m.engine.name == "builtin" and m.engine.tool_call_parser == "hermes"),
            field=".engine.toolCallParser",
        ),
        Rule(
            cel="!(has(self.engine) && self.engine.name == 'tgi' && has(self.model.uri) && "
                "self.model.uri.startsWith('modelscope://'))",
            message="TGI cannot download from ModelScope: use engine.name vllm or builtin, or copy the model "
                    "to a PVC (pvc://claim/path)",
            check=lambda m: not (m.engine.name == "tgi" and (m.model.uri or "").startswith("modelscope://")),
            field=".model.uri",
        ),
        Rule(
            cel="!has(self.resources) || self.resources.nodes == 1",
            message="a ChatDeployment replica runs on one node; scale with replicas",
            check=lambda m: m.resources.nodes == 1,
            field=".resources.nodes",
        ),
    )


class Endpoint(ApiModel):
    url: str = Field(description="In-cluster base URL of the OpenAI-compatible API (append /v1).")
    model: str = Field(description="Model id to send in requests.")
    ui: Optional[str] = Field(default=None, description="Web chat URL.")


class ChatStatus(CommonStatus):
    endpoint: Optional[Endpoint] = None
    replicas: Optional[int] = None
    ready_replicas: Optional[int] = None
    resolved_model: Optional[str] = None
    lineage: Optional[list[str]] = Field(default=None, description="kind/name chain that produced the served model.")
    children: Optional[list[str]] = None


class ChatDeployment(ApiModel):
    """An in-cluster chat service (OpenAI-compatible API, optional web chat)."""

    api_version: Literal["devops-model.io/v1alpha1"] = "devops-model.io/v1alpha1"
    kind: Literal["ChatDeployment"] = "ChatDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ChatSpec
    status: Optional[ChatStatus] = None

    rules = root_rules("ChatDeployment", immutable=False)
