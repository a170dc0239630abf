"""Request bodies of the built-in server's APIs (OpenAI and TGI) and their validation.

Every field a client can get wrong is checked here, and a bad request is refused with an error that
names the parameter (``temperature``, ``messages[2].role``, ``parameters.top_p``) and the value,
never with a stack trace. Unknown fields are ignored, as the OpenAI API does, so that newer
clients keep working.
"""

from __future__ import annotations

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
        elif part in ("str", "list[str]", "int", "list[int]", "function-after[_check_content(), union[str,list[ContentPart]]]"):
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
    if err["type"] == "value_error":  # our own messages already show the value
        msg, got = msg[len("Value error, "):] if msg.startswith("Value error, ") else msg, ""
    else:
        short = not isinstance(value, (dict, list)) or len(repr(value)) < 80
        got = f" (got {value!r})" if short else ""
    raise RequestError(f"{param}: {msg}{got}" if param else f"{msg}{got}", param=param or None) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# ----------------------------------------------------------------------------- OpenAI


class ContentPart(_Body):
    type: Literal["text"] = Field(description="only text parts are supported")
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[ContentPart]]

    @field_validator("content")
    @classmethod
    def _check_content(cls, v):
        if isinstance(v, list):
            return "".join(p.text for p in v)
        return v


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


class SamplingFields(_Body):
    """Sampling parameters shared by /v1/chat/completions and /v1/completions."""

    model: Optional[str] = Field(default=None, max_length=256)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=-1, le=100_000)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=1_048_576)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=1_048_576)
    repetition_penalty: Optional[float] = Field(default=None, gt=0, le=10)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    stop: Stop = None
    seed: Optional[int] = Field(default=None, ge=0, le=2**63 - 1)
    n: Optional[int] = Field(default=None, ge=1, le=1)
    ignore_eos: bool = Field(default=False, description="vLLM's extension: generate max_tokens tokens whatever comes")
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    user: Optional[str] = None

    model_config = ConfigDict(extra="ignore", strict=False)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        return _check_stop(v)

    @field_validator("stream", mode="before")
    @classmethod
    def _stream_bool(cls, v):
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v

    @field_validator("n", mode="before")
    @classmethod
    def _n(cls, v):
        if v not in (None, 1):
            raise ValueError("only n = 1 is supported; send several requests for several answers")
        return v


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, v):
        # as the seed's api_demo: the model answers the user's last message
        if v[-1].role != "user":
            raise ValueError(f"the last message must come from the user (got role {v[-1].role!r})")
        return v


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str]]
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError(f"one prompt per request (got {len(v)})")
            v = v[0]
        if not v:
            raise ValueError("must not be empty")
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
