"""The built-in chat server: an ASGI app (FastAPI + uvicorn + sse-starlette) over the batching engine.

    devops-model serve --model /models/sft-int4 --port 8000 --served-model-name devops-chat
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "什么是 Pod？"}]}'

Routes (docs/serving.md has the full reference): OpenAI ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``; TGI ``/generate``, ``/generate_stream`` and ``/``; ``/health``
(200 once the model is loaded and the batching loop runs, else 503); Prometheus ``/metrics``;
``/v1/info`` (model, limits, lineage, exam scores); the web chat at ``/``.

The port opens at once and the model loads in a background thread, so that Kubernetes probes can
tell "loading" (503) from "dead" (no answer). Requests beyond ``max_concurrency`` (running plus
queued) get 429 at once instead of piling up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sse_starlette import EventSourceResponse

from ..chat.client import render_chatml
from .engine import BatchingEngine, Event, SamplingParams
from .protocol import ChatCompletionRequest, CompletionRequest, RequestError, TGIRequest, parse_body

log = logging.getLogger("devops_model.serve")

WEB_PAGE = Path(__file__).parent / "web" / "index.html"


@dataclass
class ServerConfig:
    """Everything ``devops-model serve`` was told (see docs/serving.md for each flag)."""

    model_dir: str
    served_model_name: str
    max_concurrency: int = 16
    max_batch_size: int | None = None
    max_model_len: int | None = None
    api_key: str | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    ui: bool = True
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False

    @property
    def batch_size(self) -> int:
        return self.max_batch_size or min(16, self.max_concurrency)


class Metrics:
    """Prometheus metrics of one server (own registry, so tests can run several servers)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("devops_model_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.rejected = Counter("devops_model_rejected", "Requests refused with 429 (over --max-concurrency)", registry=r)
        self.prompt_tokens = Counter("devops_model_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("devops_model_generation_tokens", "Tokens generated", registry=r)
        self.latency = Histogram("devops_model_request_seconds", "Time from request to last token", ["route"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160))
        self.ttft = Histogram("devops_model_time_to_first_token_seconds", "Time from request to first token", registry=r,
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20))
        self.batch_size = Histogram("devops_model_batch_size", "Sequences per forward step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.queue_depth = Gauge("devops_model_queue_depth", "Requests waiting for a place in the batch", registry=r)
        self.running = Gauge("devops_model_running_requests", "Sequences in the running batch", registry=r)
        self.in_flight = Gauge("devops_model_requests_in_flight", "Admitted requests (running + waiting)", registry=r)


class RequestCounter:
    """Pure ASGI middleware counting requests by route and status (BaseHTTPMiddleware would get in
    the way of streaming and of noticing that a client went away)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = {"status": 500}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unmatched"), str(seen["status"])).inc()


class ServerState:
    def __init__(self, config: ServerConfig, engine: BatchingEngine | None = None):
        self.config = config
        self.engine = engine
        self.error: str | None = None
        self.in_flight = 0
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.created = int(time.time())

    # admission: running + waiting requests are capped; the excess gets 429 at once
    def try_admit(self) -> bool:
        with self.lock:
            if self.in_flight >= self.config.max_concurrency:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def load(self) -> None:
        try:
            t0 = time.time()
            engine = BatchingEngine.load(self.config.model_dir, device=self.config.device, dtype=self.config.dtype,
                                         trust_remote_code=self.config.trust_remote_code,
                                         max_batch_size=self.config.batch_size, max_model_len=self.config.max_model_len)
            self._attach(engine)
            log.info("model %s loaded in %.1fs; serving as %r", self.config.model_dir, time.time() - t0,
                     self.config.served_model_name)
        except Exception as exc:  # reported by /health (503 failed) and in the log
            log.exception("could not load the model")
            self.error = f"could not load {self.config.model_dir}: {type(exc).__name__}: {exc}"

    def _attach(self, engine: BatchingEngine) -> None:
        m = self.metrics
        engine.stats.on_step = m.batch_size.observe
        m.queue_depth.set_function(lambda: engine.queue_depth)
        m.running.set_function(lambda: engine.running)
        m.in_flight.set_function(lambda: self.in_flight)
        if engine._thread is None:
            engine.start()
        self.engine = engine


def _openai_error(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}},
                        status_code=exc.status, headers={"Retry-After": "1"} if exc.status in (429, 503) else None)


def _tgi_error(exc: RequestError) -> JSONResponse:
    # TGI answers validation errors with 422 and {"error", "error_type"}; huggingface_hub parses that.
    status = 422 if exc.status == 400 else exc.status
    kind = {422: "validation", 429: "overloaded", 401: "unauthorized", 503: "unavailable"}.get(status, "validation")
    return JSONResponse({"error": exc.message, "error_type": kind}, status_code=status,
                        headers={"Retry-After": "1"} if status in (429, 503) else None)


def create_app(config: ServerConfig, engine: BatchingEngine | None = None) -> FastAPI:
    """The ASGI app. Without ``engine``, the model is loaded in a background thread at startup."""
    from contextlib import asynccontextmanager

    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app):
        if engine is not None:
            state._attach(engine)
        else:
            threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="devops-model built-in server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = state
    name = config.served_model_name

    # ------------------------------------------------------------------ plumbing
    app.add_middleware(RequestCounter, metrics=state.metrics)

    def check_key(request: Request) -> None:
        if not config.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not given or not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise RequestError("missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                               param=None, status=401, code="invalid_api_key", kind="authentication_error")

    def check_ready() -> BatchingEngine:
        eng = state.engine
        if eng is None or not eng.alive:
            why = state.error or (eng.failed if eng else None) or "the model is still loading"
            raise RequestError(f"not ready: {why}", status=503, code="not_ready", kind="server_error")
        return eng

    async def read_json(request: Request) -> Any:
        body = await request.body()
        if not body:
            raise RequestError("the request body is empty; send a JSON object", param=None)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}", param=None) from None

    def check_model(requested: str | None) -> None:
        if requested and requested != name:
            raise RequestError(f"model {requested!r} does not exist; this server serves {name!r} (see /v1/models)",
                               param="model", status=404, code="model_not_found")

    def tokenize_prompt(eng: BatchingEngine, text: str, max_tokens: int | None, param: str) -> tuple[list[int], int]:
        ids = eng.tokenizer(text, add_special_tokens=False).input_ids
        room = eng.max_model_len - len(ids)
        if room < 1:
            raise RequestError(f"{param}: the prompt has {len(ids)} tokens; the maximum model length is "
                               f"{eng.max_model_len} (prompt + answer)", param=param)
        if max_tokens is not None and max_tokens > room:
            raise RequestError(f"max_tokens: {max_tokens} is too many; the prompt has {len(ids)} tokens and the maximum "
                               f"model length is {eng.max_model_len}, so at most {room} can be generated",
                               param="max_tokens")
        limit = max_tokens if max_tokens is not None else min(int(eng.defaults["max_tokens"]), room)
        return ids, limit

    def sampling(eng: BatchingEngine, body, max_tokens: int) -> SamplingParams:
        d = eng.defaults
        top_k = body.top_k if body.top_k is not None else d["top_k"]
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
        )

    async def events(eng: BatchingEngine, ids: list[int], params: SamplingParams, route: str) -> AsyncIterator[Event]:
        """Submit to the engine and yield its events; releases the admission slot at the end."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()
        t0 = time.monotonic()
        req = eng.submit(ids, params, lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev))
        state.metrics.prompt_tokens.inc(len(ids))
        first = True
        finished = False
        try:
            while True:
                ev = await q.get()
                if first:
                    state.metrics.ttft.observe(time.monotonic() - t0)
                    first = False
                if ev.finish_reason:
                    finished = True
                    state.metrics.generation_tokens.inc(ev.completion_tokens)
                    state.metrics.latency.labels(route).observe(time.monotonic() - t0)
                    if ev.finish_reason == "error":
                        raise RequestError(f"generation failed: {ev.error}", status=500, code="engine_error",
                                           kind="server_error")
                yield ev
                if finished:
                    return
        finally:
            if not finished:
                req.cancel()
            state.release()

    def admit() -> None:
        if not state.try_admit():
            state.metrics.rejected.inc()
            raise RequestError(f"the server is busy: {config.max_concurrency} requests are in progress "
                               f"(--max-concurrency {config.max_concurrency}); retry shortly",
                               status=429, code="too_many_requests", kind="rate_limit_error")

    def sse(gen: AsyncIterator[dict | str]) -> EventSourceResponse:
        async def encode():
            async for item in gen:
                yield {"data": item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)}
        # ping every 15 s keeps proxies from closing a slow stream
        return EventSourceResponse(encode(), ping=15, headers={"X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ OpenAI
    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_key(request)
        except RequestError as exc:
            return _openai_error(exc)
        eng = state.engine
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": state.created, "owned_by": "devops-model",
            "max_model_len": eng.max_model_len if eng else config.max_model_len, "root": config.model_dir,
        }]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            check_key(request)
            body = parse_body(ChatCompletionRequest, await read_json(request))
            check_model(body.model)
            eng = check_ready()
            messages = [{"role": m.role, "content": m.content} for m in body.messages]
            messages = fit_history(eng, messages, body.max_completion_tokens or body.max_tokens)
            prompt = render_prompt(eng.tokenizer, messages)
            ids, limit = tokenize_prompt(eng, prompt, body.max_completion_tokens or body.max_tokens, "messages")
            params = sampling(eng, body, limit)
            admit()
        except RequestError as exc:
            return _openai_error(exc)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        gen = events(eng, ids, params, "/v1/chat/completions")

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))

            async def stream():
                yield chunk({"role": "assistant", "content": ""})
                try:
                    async for ev in gen:
                        if ev.text:
                            yield chunk({"content": ev.text})
                        if ev.finish_reason:
                            yield chunk({}, ev.finish_reason)
                            if include_usage:
                                yield {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                                       "choices": [], "usage": _usage(ev)}
                except RequestError as exc:
                    yield {"error": {"message": exc.message, "type": exc.kind, "code": exc.code}}
                yield "[DONE]"

            return sse(stream())
        try:
            last = await _last(gen)
        except RequestError as exc:
            return _openai_error(exc)
        return {"id": rid, "object": "chat.completion", "created": created, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": last.full_text},
                             "logprobs": None, "finish_reason": last.finish_reason}],
                "usage": _usage(last)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            check_key(request)
            body = parse_body(CompletionRequest, await read_json(request))
            check_model(body.model)
            eng = check_ready()
            ids, limit = tokenize_prompt(eng, body.prompt, body.max_tokens, "prompt")
            params = sampling(eng, body, limit)
            admit()
        except RequestError as exc:
            return _openai_error(exc)
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        gen = events(eng, ids, params, "/v1/completions")
        prefix = body.prompt if body.echo else ""

        def chunk(text: str, finish: str | None = None) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

        if body.stream:
            async def stream():
                if prefix:
                    yield chunk(prefix)
                try:
                    async for ev in gen:
                        if ev.text or ev.finish_reason:
                            yield chunk(ev.text, ev.finish_reason)
                except RequestError as exc:
                    yield {"error": {"message": exc.message, "type": exc.kind, "code": exc.code}}
                yield "[DONE]"

            return sse(stream())
        try:
            last = await _last(gen)
        except RequestError as exc:
            return _openai_error(exc)
        out = chunk(prefix + last.full_text, last.finish_reason)
        out["usage"] = _usage(last)
        return out

    # ------------------------------------------------------------------ TGI
    def tgi_prepare(body: TGIRequest, eng: BatchingEngine):
        p = body.parameters
        ids, limit = tokenize_prompt(eng, body.inputs, p.max_new_tokens, "inputs")
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

    def tgi_finish(ev: Event, eng: BatchingEngine) -> str:
        if ev.finish_reason == "length":
            return "length"
        return "eos_token" if ev.token_id in eng.eos_ids else "stop_sequence"

    def tgi_token(ev: Event, eng: BatchingEngine) -> dict:
        return {"id": ev.token_id, "text": ev.text, "logprob": ev.logprob, "special": ev.token_id in eng.eos_ids}

    async def tgi_generate(request: Request, stream: bool | None):
        try:
            check_key(request)
            body = parse_body(TGIRequest, await read_json(request))
            eng = check_ready()
            ids, params = tgi_prepare(body, eng)
            admit()
        except RequestError as exc:
            return _tgi_error(exc)
        stream = body.stream if stream is None else stream
        p = body.parameters
        gen = events(eng, ids, params, "/generate_stream" if stream else "/generate")
        prefix = body.inputs if p.return_full_text else ""
        if stream:
            async def streamer():
                tokens = 0
                try:
                    async for ev in gen:
                        tokens += 1
                        item: dict[str, Any] = {"index": tokens, "token": tgi_token(ev, eng), "top_tokens": None,
                                                "generated_text": None, "details": None}
                        if ev.finish_reason:
                            item["generated_text"] = prefix + ev.full_text
                            item["details"] = {"finish_reason": tgi_finish(ev, eng), "generated_tokens": ev.completion_tokens,
                                               "seed": params.seed, "input_length": ev.prompt_tokens}
                        yield item
                except RequestError as exc:
                    yield {"error": exc.message, "error_type": "generation"}

            return sse(streamer())
        tokens = []
        try:
            async for ev in gen:
                tokens.append(tgi_token(ev, eng))
                last = ev
        except RequestError as exc:
            return _tgi_error(exc)
        out: dict[str, Any] = {"generated_text": prefix + last.full_text}
        if p.details:
            out["details"] = {"finish_reason": tgi_finish(last, eng), "generated_tokens": last.completion_tokens,
                              "seed": params.seed, "prefill": [], "tokens": tokens}
        return out

    @app.post("/generate")
    async def generate(request: Request):
        return await tgi_generate(request, False)

    @app.post("/generate_stream")
    async def generate_stream(request: Request):
        return await tgi_generate(request, True)

    @app.post("/")
    async def tgi_compat(request: Request):
        # TGI's compatibility route: streams when the body says "stream": true, and answers a list otherwise.
        resp = await tgi_generate(request, None)
        if isinstance(resp, dict):
            return [resp]
        return resp

    @app.get("/info")
    async def tgi_info():
        eng = state.engine
        return {"model_id": name, "model_sha": None, "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": config.max_concurrency, "max_best_of": 1, "max_stop_sequences": 8,
                "max_input_tokens": (eng.max_model_len - 1) if eng else None,
                "max_total_tokens": eng.max_model_len if eng else None,
                "max_batch_size": config.batch_size, "router": "devops-model-builtin", "version": _version()}

    # ------------------------------------------------------------------ deployment info, health, metrics, web
    @app.get("/v1/info")
    async def info(request: Request):
        try:
            check_key(request)
        except RequestError as exc:
            return _openai_error(exc)
        eng = state.engine
        return {"model": name, "engine": "builtin", "version": _version(),
                "maxModelLen": eng.max_model_len if eng else config.max_model_len,
                "maxConcurrency": config.max_concurrency, "maxBatchSize": config.batch_size,
                "apiKeyRequired": bool(config.api_key), **config.lineage}

    @app.get("/health")
    async def health():
        eng = state.engine
        if state.error:
            return JSONResponse({"status": "failed", "error": state.error}, status_code=503)
        if eng is None:
            return JSONResponse({"status": "loading", "model": name}, status_code=503)
        if not eng.alive:
            return JSONResponse({"status": "failed", "error": eng.failed or "the batching loop stopped"}, status_code=503)
        return {"status": "ok", "model": name, "running": eng.running, "waiting": eng.queue_depth,
                "inFlight": state.in_flight}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if config.ui:
        @app.get("/", response_class=HTMLResponse)
        async def web_chat():
            return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError):
        return _openai_error(exc)

    return app


async def _last(gen: AsyncIterator[Event]) -> Event:
    last = None
    async for ev in gen:
        last = ev
    assert last is not None
    return last


def _usage(ev: Event) -> dict:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


def _version() -> str:
    from devops_model import __version__

    return __version__


def fit_history(eng, messages: list[dict[str, str]], max_tokens: int | None) -> list[dict[str, str]]:
    """Drop the oldest turns that do not fit (Qwen-1's make_context keeps its max_window_size the same way)."""
    from ..conventions import fit_history as fit

    def count(msgs, generation_prompt):
        text = (eng.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
                if getattr(eng.tokenizer, "chat_template", None) else render_prompt(eng.tokenizer, msgs))
        return len(eng.tokenizer(text, add_special_tokens=False).input_ids)

    window = getattr(getattr(eng.model, "generation_config", None), "max_window_size", None)
    return fit(messages, count, eng.max_model_len - (max_tokens or 1), window)


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt for a chat: the tokenizer's own chat template, else chatml."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_chatml(messages)
