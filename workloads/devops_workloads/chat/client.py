"""A chat client for any OpenAI-compatible endpoint (vLLM, TGI's Messages API, the built-in server)
and for TGI's native API, mirroring the seed's ``chat(query, history) -> (response, history)``.

    from devops_workloads.chat import ChatClient
    client = ChatClient("http://127.0.0.1:8000")                 # OpenAI API at /v1
    response, history = client.chat("什么是 Kubernetes？", [])
    for piece in client.stream_chat("And a Deployment?", history):
        print(piece, end="", flush=True)
    tgi = ChatClient("http://tgi:8080", api="tgi")               # TGI's /generate_stream

It uses the maintained clients: ``openai`` for the OpenAI API and
``huggingface_hub.InferenceClient`` for TGI's native routes (the old ``text-generation`` package is
gone). ``history`` is the seed's list of ``(query, response)`` pairs.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

History = list[tuple[str, str]]

#: The chatml stop marker: TGI's native API takes raw text, so the client builds the prompt itself.
IM_END = "<|im_end|>"


def render_chatml(messages: Sequence[dict[str, str]], system: str | None = None) -> str:
    """chatml, the DevOps-Model / Qwen chat format, ending with the assistant's open turn."""
    parts = []
    if system is None and (not messages or messages[0]["role"] != "system"):
        system = "You are a helpful assistant."
    if system is not None:
        parts.append(f"<|im_start|>system\n{system}{IM_END}\n")
    for m in messages:
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}{IM_END}\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def history_to_messages(query: str, history: Sequence[Sequence[str]], system: str | None = None) -> list[dict[str, str]]:
    """OpenAI messages from the seed's (query, response) history plus the new query."""
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    for pair in history:
        q, r = pair
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    messages.append({"role": "user", "content": query})
    return messages


def root_url(url: str) -> str:
    """The server's base URL without a trailing /v1 (users paste either)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ChatClient:
    """Multi-turn chat against an OpenAI-compatible endpoint (``api="openai"``) or TGI (``api="tgi"``)."""

    def __init__(self, url: str, api_key: str | None = None, api: str = "openai", model: str | None = None,
                 system: str | None = None, timeout: float = 600.0):
        if api not in ("openai", "tgi"):
            raise ValueError(f"api must be openai or tgi (got {api!r})")
        self.url = root_url(url)
        self.api = api
        self.api_key = api_key if api_key is not None else os.environ.get("DEVOPS_MODEL_API_KEY")
        self.system = system
        self._model = model
        if api == "openai":
            import openai

            # max_retries=0: a 429 or a wrong key is reported at once instead of after silent retries.
            self._openai = openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "EMPTY",
                                         timeout=timeout, max_retries=0)
        else:
            from huggingface_hub import InferenceClient

            self._tgi = InferenceClient(model=self.url, token=self.api_key or None, timeout=timeout)

    @property
    def model(self) -> str:
        """The served model id (asked from /v1/models once when not given)."""
        if self._model is None:
            if self.api == "openai":
                self._model = self._openai.models.list().data[0].id
            else:
                self._model = "tgi"
        return self._model

    def stream_chat(self, query: str, history: Sequence[Sequence[str]] = (), **params: Any) -> Iterator[str]:
        """Yield the answer's text pieces as they arrive. ``params``: max_tokens, temperature, top_p, stop, seed…"""
        messages = history_to_messages(query, history, self.system)
        if self.api == "openai":
            stream = self._openai.chat.completions.create(model=self.model, messages=messages, stream=True, **params)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
            return
        tgi_params = dict(params)
        if "max_tokens" in tgi_params:
            tgi_params["max_new_tokens"] = tgi_params.pop("max_tokens")
        stop = tgi_params.pop("stop", None) or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        with _endpoint_not_hub():
            pieces = self._tgi.text_generation(render_chatml(messages), stream=True, stop=stop + [IM_END], **tgi_params)
        for piece in pieces:
            # TGI streams the stop sequence itself as the last token; the answer ends before it.
            if piece == IM_END:
                break
            yield piece

    def chat(self, query: str, history: Sequence[Sequence[str]] = (), **params: Any) -> tuple[str, History]:
        """The seed's API: the whole answer and the history with this turn appended."""
        response = "".join(self.stream_chat(query, history, **params))
        if self.api == "tgi" and response.endswith(IM_END):
            response = response[: -len(IM_END)]
        return response, [tuple(p) for p in history] + [(query, response)]


@contextmanager
def _endpoint_not_hub():
    """Let InferenceClient reach an explicit TGI URL while HF_HUB_OFFLINE=1 (set in pods and tests so that
    nothing is downloaded from the Hub): that flag blocks every request of huggingface_hub's session,
    but a TGI server the user named is not the Hub. The request is sent inside this block; the stream
    is read after it."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def chat(query: str, history: Sequence[Sequence[str]] = (), url: str = "http://127.0.0.1:8000", **kwargs: Any) -> tuple[str, History]:
    """One-call form of :meth:`ChatClient.chat` (url, api_key, api, model, system go to the client)."""
    client_args = {k: kwargs.pop(k) for k in ("api_key", "api", "model", "system") if k in kwargs}
    return ChatClient(url, **client_args).chat(query, history, **kwargs)
