"""The built-in chat server: an ASGI app (FastAPI + uvicorn + sse-starlette) over the batching engine.

    devops-model serve --model /models/sft-int4 --port 8000 --served-model-name devops-chat
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "什么是 Pod？"}]}'

Routes (docs/serving.md has the full reference): OpenAI ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models``, ``/v1/models/{id}`` (openai_routes.py); TGI ``/generate``,
``/generate_stream``, ``/`` and ``/info`` (tgi_routes.py); ``/health`` (200 once the model is
loaded and the batching loop runs, else 503); Prometheus ``/metrics``; ``/v1/info`` (model, limits,
lineage, exam scores); the web chat at ``/``. Any other path gets a 404 in OpenAI's error shape.

The port opens at once and the model loads in a background thread, so that Kubernetes probes can
tell "loading" (503) from "dead" (no answer). Requests beyond ``max_concurrency`` (running plus
queued) get 429 at once instead of piling up.

Layout: state.py (config, metrics, the checks every request passes), streaming.py (engine events
→ HTTP), prompts.py (the chat prompt), tools.py (tool calls), guided.py (constrained decoding),
openai_routes.py, tgi_routes.py, and this module, which wires them together.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from .engine import BatchingEngine
from .openai_routes import key_refused, openai_error, openai_router
from .protocol import RequestError
from .state import Metrics, ServerConfig, ServerState
from .tgi_routes import tgi_router

__all__ = ["ServerConfig", "ServerState", "Metrics", "create_app", "WEB_PAGE"]

WEB_PAGE = Path(__file__).parent / "web" / "index.html"


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


def create_app(config: ServerConfig, engine: BatchingEngine | None = None) -> FastAPI:
    """The ASGI app. Without ``engine``, the model is loaded in a background thread at startup."""
    from contextlib import asynccontextmanager

    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app):
        if engine is not None:
            state.attach(engine)
        else:
            threading.Thread(target=state.load, name="model-loader", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.stop()

    app = FastAPI(title="devops-model built-in server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.server = state
    app.add_middleware(RequestCounter, metrics=state.metrics)
    app.include_router(openai_router(state))
    app.include_router(tgi_router(state))

    @app.get("/v1/info")
    async def info(request: Request):
        if (refused := key_refused(state, request)) is not None:
            return refused
        eng = state.engine
        return {"model": state.name, "engine": "builtin", "version": version(),
                "maxModelLen": eng.max_model_len if eng else config.max_model_len,
                "maxConcurrency": config.max_concurrency, "maxBatchSize": config.batch_size,
                "apiKeyRequired": bool(config.api_key), **config.lineage}

    @app.get("/health")
    async def health():
        eng = state.engine
        if state.error:
            return JSONResponse({"status": "failed", "error": state.error}, status_code=503)
        if eng is None:
            return JSONResponse({"status": "loading", "model": state.name}, status_code=503)
        if not eng.alive:
            return JSONResponse({"status": "failed", "error": eng.failed or "the batching loop stopped"}, status_code=503)
        return {"status": "ok", "model": state.name, "running": eng.running, "waiting": eng.queue_depth,
                "inFlight": state.in_flight}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if config.ui:
        @app.get("/", response_class=HTMLResponse)
        async def web_chat():
            return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """OpenAI's error shape on every path: refused requests, unknown routes, wrong methods."""

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError):
        return openai_error(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; see docs/serving.md for the routes"
            code = "not_found"
        elif exc.status_code == 405:
            msg = f"{request.method} is not allowed on {request.url.path}"
            code = "method_not_allowed"
        else:
            msg, code = str(exc.detail), None
        return JSONResponse({"error": {"message": msg, "type": "invalid_request_error", "param": None, "code": code}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"][1:]) or None
        return openai_error(RequestError(f"{param}: {err['msg']}" if param else err["msg"], param=param))


def version() -> str:
    from devops_model import __version__

    return __version__

