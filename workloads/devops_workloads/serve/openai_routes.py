"""The OpenAI API of the built-in server: ``/v1/models``, ``/v1/models/{id}``,
``/v1/chat/completions`` and ``/v1/completions`` (docs/serving.md has the parameter reference).

Every request field is honoured or refused with a 400 naming it (protocol.py). Beyond sampling:
``logprobs``/``top_logprobs`` (raw model distribution, as vLLM), ``logit_bias``, completions with
token-id prompts and prompt lists (one choice per prompt), ``echo`` + ``logprobs`` (with
``max_tokens: 0`` or 1: prompt scoring, as lm-evaluation-harness' ``local-completions`` asks),
``tools`` rendered by the chat template and answered as ``tool_calls`` (tools.py), and
``response_format`` by constrained decoding (guided.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .engine import BatchingEngine, Event, SamplingParams
from .prompts import chat_prompt, fit_history, template_messages
from .protocol import ChatCompletionRequest, CompletionRequest, NamedToolChoice, RequestError, parse_body
from .streaming import collect, generate, sse, usage
from .tools import ToolCallStream, parse_tool_calls, supports_tools


def openai_error(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}},
                        status_code=exc.status, headers={"Retry-After": "1"} if exc.status in (429, 503) else None)


def key_refused(state: Any, request: Request) -> JSONResponse | None:
    """The 401 for a request without the right API key (None when it may pass)."""
    try:
        state.check_key(request)
    except RequestError as exc:
        return openai_error(exc)
    return None


def stream_error(exc: RequestError) -> dict:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}


def sampling(eng: BatchingEngine, body, max_tokens: int) -> SamplingParams:
    """The request's sampling parameters; unset ones come from the model's generation config."""
    d = eng.defaults
    top_k = body.top_k if body.top_k is not None else d["top_k"]
    bias = body.logit_bias or {}
    bad = [t for t in bias if t >= eng.vocab_limit]
    if bad:
        raise RequestError(f"logit_bias: token id {bad[0]} is outside the vocabulary (0..{eng.vocab_limit - 1})",
                           param="logit_bias")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature if body.temperature is not None else d["temperature"],
        top_p=body.top_p if body.top_p is not None else d["top_p"],
        top_k=max(0, top_k),
        repetition_penalty=body.repetition_penalty if body.repetition_penalty is not None else d["repetition_penalty"],
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=list(body.stop or []),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
        logit_bias=bias,
        sampled_logprob=False,  # OpenAI's logprobs are the raw distribution's (``logprobs`` below)
    )


class TokenText:
    """Token ids as the text the logprobs fields show (cached: the same ids recur)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        s = self.cache.get(tid)
        if s is None:
            s = self.cache[tid] = self.tokenizer.decode([tid])
        return s


def _generated(events: list[Event], eos_ids: set[int], ignore_eos: bool) -> list[Event]:
    """Events of tokens that belong to the answer (an end-of-sequence token does not)."""
    return [e for e in events if e.token_id is not None and (ignore_eos or e.token_id not in eos_ids)]


def openai_router(state) -> APIRouter:
    router = APIRouter()

    def card(eng) -> dict:
        cfg = state.config
        return {"id": state.name, "object": "model", "created": state.created, "owned_by": "devops-model",
                "max_model_len": eng.max_model_len if eng else cfg.max_model_len, "root": cfg.model_dir}

    @router.get("/v1/models")
    async def models(request: Request):
        if (refused := key_refused(state, request)) is not None:
            return refused
        return {"object": "list", "data": [card(state.engine)]}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        try:
            state.check_key(request)
            if model_id != state.name:
                raise RequestError(f"model {model_id!r} does not exist; this server serves {state.name!r}",
                                   param="model", status=404, code="model_not_found")
        except RequestError as exc:
            return openai_error(exc)
        return card(state.engine)

    # ------------------------------------------------------------------ chat
    async def chat_setup(request: Request):
        state.check_key(request)
        body = parse_body(ChatCompletionRequest, await state.read_json(request))
        state.check_model(body.model)
        eng = state.check_ready()
        use_tools = bool(body.tools) and body.tool_choice != "none"
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if use_tools else None
        if tools and not supports_tools(eng.tokenizer):
            raise RequestError("tools: this model's chat template does not render tools, so it cannot call them "
                               "(serve a model whose template supports tools, such as Qwen2.5-Instruct's, or leave tools unset)",
                               param="tools")
        try:
            messages = fit_history(eng, template_messages(body.messages), tools,
                                   body.max_completion_tokens or body.max_tokens)
            prompt = chat_prompt(eng.tokenizer, messages, tools)
        except Exception as exc:  # the template refused the conversation (e.g. roles out of order)
            raise RequestError(f"messages: the model's chat template cannot render them: {exc}", param="messages") from None
        ids = eng.tokenizer(prompt, add_special_tokens=False).input_ids
        which = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        limit = state.token_limit(eng, ids, body.max_completion_tokens or body.max_tokens, "messages", which)
        params = sampling(eng, body, limit)
        if body.logprobs:
            params.logprobs = body.top_logprobs or 0
        fmt = body.response_format
        forced = body.tool_choice == "required" or isinstance(body.tool_choice, NamedToolChoice)
        if use_tools and forced:
            named = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
            chosen = [t for t in tools if named is None or t["function"]["name"] == named]
            params.constraint = await _constraint(lambda g: g.tool_call(chosen), "tools")
        elif fmt is not None and fmt.type == "json_object":
            params.constraint = await _constraint(lambda g: g.json_object(), "response_format")
        elif fmt is not None and fmt.type == "json_schema":
            schema = fmt.json_schema.schema_ or {"type": "object"}
            params.constraint = await _constraint(lambda g: g.json_schema(schema), "response_format.json_schema.schema")
        state.admit()
        return body, eng, ids, params, use_tools

    async def _constraint(build, param: str):
        def make():
            return build(state.grammars())
        try:
            return await asyncio.to_thread(make)
        except ValueError as exc:
            raise RequestError(f"{param}: {exc}", param=param) from None

    def chat_logprobs(events: list[Event], text_of: TokenText) -> list[dict]:
        def entry(tid: int, lp: float) -> dict:
            s = text_of(tid)
            return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
        return [{**entry(e.token_id, e.raw_logprob), "top_logprobs": [entry(t, lp) for t, lp in e.top_logprobs or []]}
                for e in events]

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body, eng, ids, params, use_tools = await chat_setup(request)
        except RequestError as exc:
            return openai_error(exc)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        name = state.name
        gen = generate(state, eng, [(ids, params)], "/v1/chat/completions")
        text_of = TokenText(eng.tokenizer)
        want_lp = params.logprobs is not None

        def chunk(delta: dict, finish: str | None = None, logprobs: list | None = None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": {"content": logprobs} if want_lp and logprobs else None,
                                 "finish_reason": finish}]}

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def stream():
                yield chunk({"role": "assistant", "content": ""})
                parser = ToolCallStream() if use_tools else None
                pending: list[Event] = []  # tokens whose text has not been sent yet
                try:
                    async for _, ev in gen:
                        pending += _generated([ev], eng.eos_ids, params.ignore_eos)
                        deltas = parser.feed(ev.text) if parser else ([{"content": ev.text}] if ev.text else [])
                        if ev.finish_reason and parser:
                            deltas += parser.finish()
                        for d in deltas:
                            lp = chat_logprobs(pending, text_of) if want_lp and "content" in d else None
                            if lp:
                                pending = []
                            yield chunk(d, logprobs=lp)
                        if ev.finish_reason:
                            finish = "tool_calls" if parser and parser.calls else ev.finish_reason
                            yield chunk({}, finish, chat_logprobs(pending, text_of) if want_lp and pending else None)
                            if include_usage:
                                yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                                       "choices": [], "usage": usage(ev.prompt_tokens, ev.completion_tokens)}
                except RequestError as exc:
                    yield stream_error(exc)
                yield "[DONE]"

            return sse(stream())
        try:
            events = (await collect(gen, 1))[0]
        except RequestError as exc:
            return openai_error(exc)
        last = events[-1]
        message: dict[str, Any] = {"role": "assistant", "content": last.full_text}
        finish = last.finish_reason
        if use_tools:
            content, calls = parse_tool_calls(last.full_text)
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
                finish = "tool_calls"
        lp = {"content": chat_logprobs(_generated(events, eng.eos_ids, params.ignore_eos), text_of)} if want_lp else None
        return {"id": rid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": message, "logprobs": lp, "finish_reason": finish}],
                "usage": usage(last.prompt_tokens, last.completion_tokens)}

    # ------------------------------------------------------------------ completions
    async def completion_setup(request: Request):
        state.check_key(request)
        body = parse_body(CompletionRequest, await state.read_json(request))
        state.check_model(body.model)
        eng = state.check_ready()
        seqs = []
        texts = []
        for i, p in enumerate(body.prompt):
            param = "prompt" if len(body.prompt) == 1 else f"prompt[{i}]"
            if isinstance(p, str):
                ids = eng.tokenizer(p, add_special_tokens=False).input_ids
                texts.append(p)
            else:
                bad = [t for t in p if not 0 <= t < eng.vocab_limit]
                if bad:
                    raise RequestError(f"{param}: token id {bad[0]} is outside the vocabulary (0..{eng.vocab_limit - 1})",
                                       param=param)
                ids = list(p)
                texts.append(None)
            if not ids:
                raise RequestError(f"{param}: encodes to no tokens", param=param)
            params = sampling(eng, body, state.token_limit(eng, ids, body.max_tokens, param))
            params.logprobs = body.logprobs
            if body.echo and body.logprobs is not None:
                params.prompt_logprobs = body.logprobs
            seqs.append((ids, params))
        state.admit()
        return body, eng, seqs, texts

    def legacy_logprobs(prompt: list | None, events: list[Event], text_of: TokenText, offset: int) -> dict:
        """OpenAI's completions logprobs: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

        def add(tid: int, lp: float | None, top: list | None) -> None:
            nonlocal offset
            s = text_of(tid)
            out["tokens"].append(s)
            out["token_logprobs"].append(lp)
            if top is None:
                out["top_logprobs"].append(None)
            else:
                d = {text_of(t): v for t, v in top}
                if lp is not None:
                    d.setdefault(s, lp)  # the chosen token is always listed, as vLLM does
                out["top_logprobs"].append(d)
            out["text_offset"].append(offset)
            offset += len(s)
        for tid, lp, top in prompt or []:
            add(tid, lp, top)
        for e in events:
            add(e.token_id, e.raw_logprob, e.top_logprobs)
        return out

    @router.post("/v1/completions")
    async def completions(request: Request):
        try:
            body, eng, seqs, texts = await completion_setup(request)
        except RequestError as exc:
            return openai_error(exc)
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        name = state.name
        gen = generate(state, eng, seqs, "/v1/completions")
        text_of = TokenText(eng.tokenizer)
        want_lp = body.logprobs is not None

        def echo_text(i: int) -> str:
            if not body.echo:
                return ""
            return texts[i] if texts[i] is not None else eng.tokenizer.decode(seqs[i][0])

        def choice(i: int, text: str, finish: str | None, lp: dict | None) -> dict:
            return {"index": i, "text": text, "logprobs": lp, "finish_reason": finish}

        if body.stream:
            async def stream():
                started: set[int] = set()
                offsets = [0] * len(seqs)
                try:
                    async for i, ev in gen:
                        text = ev.text
                        lp = None
                        if i not in started:
                            started.add(i)
                            text = echo_text(i) + text
                        toks = _generated([ev], eng.eos_ids, seqs[i][1].ignore_eos)
                        if want_lp and (toks or ev.prompt_logprobs):
                            lp = legacy_logprobs(ev.prompt_logprobs if body.echo else None, toks, text_of, offsets[i])
                            offsets[i] += sum(len(t) for t in lp["tokens"])
                        if text or ev.finish_reason or lp:
                            yield {"id": rid, "object": "text_completion", "created": created, "model": name,
                                   "choices": [choice(i, text, ev.finish_reason, lp)]}
                except RequestError as exc:
                    yield stream_error(exc)
                yield "[DONE]"

            return sse(stream())
        try:
            per_seq = await collect(gen, len(seqs))
        except RequestError as exc:
            return openai_error(exc)
        choices = []
        prompt_tokens = completion_tokens = 0
        for i, events in enumerate(per_seq):
            last = events[-1]
            prompt_lp = next((e.prompt_logprobs for e in events if e.prompt_logprobs is not None), None)
            lp = None
            if want_lp:
                lp = legacy_logprobs(prompt_lp if body.echo else None, _generated(events, eng.eos_ids, seqs[i][1].ignore_eos),
                                     text_of, 0)
            choices.append(choice(i, echo_text(i) + last.full_text, last.finish_reason, lp))
            prompt_tokens += last.prompt_tokens
            completion_tokens += last.completion_tokens
        return {"id": rid, "object": "text_completion", "created": created, "model": name, "choices": choices,
                "usage": usage(prompt_tokens, completion_tokens)}

    return router
