"""The TGI API of the built-in server: ``/generate``, ``/generate_stream``, ``/`` and ``/info``,
as ``huggingface_hub.InferenceClient.text_generation`` sends and parses them.

Validation errors are 422 ``{"error", "error_type": "validation"}``, as TGI answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .engine import BatchingEngine, Event, SamplingParams
from .protocol import RequestError, TGIRequest, parse_body
from .streaming import collect, generate, sse


def tgi_error(exc: RequestError) -> JSONResponse:
    status = 422 if exc.status == 400 else exc.status
    kind = {422: "validation", 429: "overloaded", 401: "unauthorized", 503: "unavailable"}.get(status, "validation")
    return JSONResponse({"error": exc.message, "error_type": kind}, status_code=status,
                        headers={"Retry-After": "1"} if status in (429, 503) else None)


def tgi_router(state) -> APIRouter:
    router = APIRouter()
    config = state.config

    def prepare(body: TGIRequest, eng: BatchingEngine):
        p = body.parameters
        ids = eng.tokenizer(body.inputs, add_special_tokens=False).input_ids
        limit = state.token_limit(eng, ids, p.max_new_tokens, "inputs", "parameters.max_new_tokens")
        if p.max_new_tokens is None:
            limit = min(limit, 100)  # TGI's default max_new_tokens is 100
        # TGI samples when do_sample is set or any sampling knob is given; otherwise it is greedy.
        sample = bool(p.do_sample) or any(x is not None for x in (p.temperature, p.top_p, p.top_k))
        params = SamplingParams(
            max_tokens=limit,
            temperature=(p.temperature or 1.0) if sample else 0.0,
            top_p=p.top_p or 1.0,
            top_k=p.top_k or 0,
            repetition_penalty=p.repetition_penalty or 1.0,
            frequency_penalty=p.frequency_penalty or 0.0,
            stop=list(p.stop or []),
            seed=p.seed,
        )
        return ids, params

    def finish_reason(ev: Event, eng: BatchingEngine) -> str:
        if ev.finish_reason == "length":
            return "length"
        return "eos_token" if ev.token_id in eng.eos_ids else "stop_sequence"

    def token(ev: Event, eng: BatchingEngine) -> dict:
        return {"id": ev.token_id, "text": ev.text, "logprob": ev.logprob, "special": ev.token_id in eng.eos_ids}

    async def tgi_generate(request: Request, stream: bool | None):
        try:
            state.check_key(request)
            body = parse_body(TGIRequest, await state.read_json(request))
            eng = state.check_ready()
            ids, params = prepare(body, eng)
            state.admit()
        except RequestError as exc:
            return tgi_error(exc)
        stream = body.stream if stream is None else stream
        p = body.parameters
        gen = generate(state, eng, [(ids, params)], "/generate_stream" if stream else "/generate")
        prefix = body.inputs if p.return_full_text else ""
        if stream:
            async def streamer():
                tokens = 0
                try:
                    async for _, ev in gen:
                        tokens += 1
                        item: dict[str, Any] = {"index": tokens, "token": token(ev, eng), "top_tokens": None,
                                                "generated_text": None, "details": None}
                        if ev.finish_reason:
                            item["generated_text"] = prefix + ev.full_text
                            item["details"] = {"finish_reason": finish_reason(ev, eng), "generated_tokens": ev.completion_tokens,
                                               "seed": params.seed, "input_length": ev.prompt_tokens}
                        yield item
                except RequestError as exc:
                    yield {"error": exc.message, "error_type": "generation"}

            return sse(streamer())
        try:
            events = (await collect(gen, 1))[0]
        except RequestError as exc:
            return tgi_error(exc)
        last = events[-1]
        out: dict[str, Any] = {"generated_text": prefix + last.full_text}
        if p.details:
            out["details"] = {"finish_reason": finish_reason(last, eng), "generated_tokens": last.completion_tokens,
                              "seed": params.seed, "prefill": [], "tokens": [token(e, eng) for e in events]}
        return out

    @router.post("/generate")
    async def generate_route(request: Request):
        return await tgi_generate(request, False)

    @router.post("/generate_stream")
    async def generate_stream(request: Request):
        return await tgi_generate(request, True)

    @router.post("/")
    async def tgi_compat(request: Request):
        # TGI's compatibility route: streams when the body says "stream": true, and answers a list otherwise.
        resp = await tgi_generate(request, None)
        return [resp] if isinstance(resp, dict) else resp

    @router.get("/info")
    async def tgi_info():
        from .app import version

        eng = state.engine
        return {"model_id": state.name, "model_sha": None, "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": config.max_concurrency, "max_best_of": 1, "max_stop_sequences": 8,
                "max_input_tokens": (eng.max_model_len - 1) if eng else None,
                "max_total_tokens": eng.max_model_len if eng else None,
                "max_batch_size": config.batch_size, "router": "devops-model-builtin", "version": version()}

    return router
