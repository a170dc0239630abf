"""Request bodies of the built-in server's APIs (OpenAI and TGI) and their validation.

Every field a client can get wrong is checked here, and a bad request is refused with an error that
names the parameter (``temperature``, ``messages[2].role``, ``parameters.top_p``) and the value,
never with a stack trace. Every field is either honoured or refused: an unknown field of an OpenAI
body is answered with a 400 naming it, as the OpenAI API does (TGI bodies ignore unknown fields,
as TGI does).
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class RequestError(Exception):
    """A request the server refuses: HTTP status, message and the parameter at fault."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str = "invalid_parameter",
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code
        self.kind = kind


def _param_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "int", "list[int]", "list[list[int]]", "NamedToolChoice",
                      "function-after[_check_content(), union[str,list[ContentPart]]]") or str(part).startswith("literal["):
            continue  # union branch names pydantic adds to the location
        else:
            out += ("." if out else "") + str(part)
    return out


def raise_for_validation(exc: ValidationError, prefix: str = "") -> None:
    """Turn the first pydantic error into a RequestError naming the parameter."""
    err = exc.errors(include_url=False)[0]
    param = _param_path(tuple(err["loc"]))
    param = f"{prefix}{param}" if prefix and param else (prefix.rstrip(".") or param)
    msg = err["msg"]
    value = err.get("input")
    if err["type"] == "missing":
        raise RequestError(f"{param} is required", param=param or None) from None
    if err["type"] == "extra_forbidden":
        raise RequestError(f"{param}: unknown parameter; the built-in server does not support it, so it is refused "
                           "rather than ignored (docs/serving.md lists the parameters)", param=param,
                           code="unknown_parameter") from None
    if err["type"] == "value_error":  # our own messages already show the value
        msg, got = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg, ""
        head = msg.split(":", 1)[0]
        if head.isidentifier() and (not param or param == prefix.rstrip(".")):
            # a rule over several fields names the field it blames at the start of its message
            raise RequestError(msg, param=f"{prefix}{head}") from None
    else:
        short = not isinstance(value, (dict, list)) or len(repr(value)) < 80
        got = f" (got {value!r})" if short else ""
    raise RequestError(f"{param}: {msg}{got}" if param else f"{msg}{got}", param=param or None) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ----------------------------------------------------------------------------- OpenAI


class _Strict(_Body):
    """OpenAI bodies: a field this server does not know is refused with a 400 naming it, as the
    OpenAI API does, instead of being silently dropped."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ContentPart(_Body):
    type: Literal["text"] = Field(description="only text parts are supported")
    text: str


class ToolCallFunction(_Body):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(description="the arguments as a JSON text, as the OpenAI API sends them")

    @field_validator("arguments")
    @classmethod
    def _json(cls, v):
        try:
            json.loads(v)
        except json.JSONDecodeError:
            raise ValueError(f"must be a JSON text (got {v[:60]!r})") from None
        return v


class ToolCall(_Body):
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(_Body):
    #: ``developer`` is the newer name of ``system`` (OpenAI's o-series); it is rendered as system.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None

    @field_validator("content")
    @classmethod
    def _check_content(cls, v):
        if isinstance(v, list):
            return "".join(p.text for p in v)
        return v

    @model_validator(mode="after")
    def _content_needed(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only in an assistant message with tool_calls)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls are allowed in assistant messages only (got role {self.role!r})")
        return self


Stop = Optional[Union[str, list[str]]]


def _check_stop(v):
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    if len(items) > 8:
        raise ValueError(f"at most 8 stop strings (got {len(items)})")
    for s in items:
        if not 1 <= len(s) <= 256:
            raise ValueError(f"each stop string must have 1 to 256 characters (got {s!r})")
    return items


def _check_logit_bias(v):
    if v is None:
        return {}
    out = {}
    for key, bias in v.items():
        try:
            tid = int(key)
        except ValueError:
            raise ValueError(f"keys are token ids (got {key!r})") from None
        if tid < 0:
            raise ValueError(f"keys are token ids (got {key!r})")
        if not -100 <= bias <= 100:
            raise ValueError(f"each bias must be between -100 and 100 (got {bias} for token {key})")
        out[tid] = float(bias)
    if len(out) > 1024:
        raise ValueError(f"at most 1024 tokens (got {len(out)})")
    return out


class SamplingFields(_Strict):
    """Sampling parameters shared by /v1/chat/completions and /v1/completions."""

    model: Optional[str] = Field(default=None, max_length=256)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=-1, le=100_000)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=1_048_576)
    repetition_penalty: Optional[float] = Field(default=None, gt=0, le=10)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    stop: Stop = None
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1)
    n: Optional[int] = Field(default=None, ge=1, le=1)
    logit_bias: Optional[dict[str, float]] = None
    ignore_eos: bool = Field(default=False, description="vLLM's extension: generate max_tokens tokens whatever comes")
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    # accepted and without effect on the answer: who asked (OpenAI's abuse monitoring), tags, storage
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return _check_stop(v)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        return _check_logit_bias(v)

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_bool(cls, v):
        if v is not None and not isinstance(v, bool):
            raise ValueError("must be true or false")
        return bool(v)

    @field_validator("n", mode="before")
    @classmethod
    def _n(cls, v):
        if v not in (None, 1):
            raise ValueError("only n = 1 is supported; send several requests for several answers")
        return v


class FunctionDef(_Body):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(_Body):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JSONSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema: {name, schema}")
        return self


class StreamOptions(_Body):
    include_usage: Optional[bool] = None
    continuous_usage_stats: Optional[bool] = None


SamplingFields.model_rebuild()


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=1_048_576)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[list[Tool]] = Field(default=None, max_length=128)
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, v):
        # as the seed's api_demo: the model answers the user's last message (or a tool's result)
        if v[-1].role not in ("user", "tool"):
            raise ValueError(f"the last message must come from the user or a tool (got role {v[-1].role!r})")
        return v

    @model_validator(mode="after")
    def _coherent(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise ValueError("tool_choice: needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in self.tools or []}:
            raise ValueError(f"tool_choice: no tool named {choice.function.name!r} in tools")
        if self.tools and self.response_format is not None and self.response_format.type != "text" \
                and choice not in (None, "none"):
            raise ValueError("response_format: cannot be combined with tools; use one or the other")
        return self


class CompletionRequest(SamplingFields):
    # text, token ids, or a list of either (one choice per prompt, in order)
    prompt: Union[str, list[str], list[int], list[list[int]]]
    # 0 is allowed here: with echo and logprobs it scores the prompt without generating
    max_tokens: Optional[int] = Field(default=None, ge=0, le=1_048_576)
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, str) or (isinstance(v, list) and v and isinstance(v[0], int)):
            v = [v]
        if not v:
            raise ValueError("must not be empty")
        if len(v) > 64:
            raise ValueError(f"at most 64 prompts per request (got {len(v)})")
        for i, p in enumerate(v):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        return v

    @field_validator("best_of", mode="before")
    @classmethod
    def _best_of(cls, v):
        if v not in (None, 1):
            raise ValueError("only best_of = 1 is supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v):
        if v:
            raise ValueError("is not supported (fill-in-the-middle needs a model trained for it); leave it unset")
        return v


# ----------------------------------------------------------------------------- TGI


class TGIParameters(_Body):
    max_new_tokens: Optional[int] = Field(default=None, ge=1, le=1_048_576)
    temperature: Optional[float] = Field(default=None, gt=0, le=100)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, gt=0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0, le=10)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    do_sample: Optional[bool] = None
    stop: Optional[list[str]] = None
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1)
    details: Optional[bool] = None
    decoder_input_details: Optional[bool] = None
    return_full_text: Optional[bool] = None
    best_of: Optional[int] = Field(default=None, ge=1, le=1)
    grammar: Optional[Any] = None
    adapter_id: Optional[str] = None
    typical_p: Optional[float] = Field(default=None, gt=0, lt=1)
    watermark: Optional[bool] = None
    truncate: Optional[int] = Field(default=None, ge=1)
    top_n_tokens: Optional[int] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return _check_stop(v)

    @model_validator(mode="after")
    def _unsupported(self):
        for name in ("grammar", "adapter_id", "top_n_tokens", "typical_p"):
            if getattr(self, name):
                raise ValueError(f"{name} is not supported by the built-in server (leave it unset)")
        return self


class TGIRequest(_Body):
    inputs: str = Field(min_length=1)
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: Optional[bool] = None


def parse_body(model: type[BaseModel], body: Any, prefix: str = "") -> Any:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object (got {type(body).__name__})", param=None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise_for_validation(exc, prefix)
