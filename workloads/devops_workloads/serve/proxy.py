"""The web chat in front of another engine (vLLM, TGI): serve the page, the lineage, and pass the API through.

    devops-model serve --upstream http://127.0.0.1:8001 --port 8000 --lineage-file lineage.json

vLLM and TGI have no web chat and know nothing of the model's lineage. Run this next to them (a
sidecar in the same pod): it serves the page at ``/``, ``/v1/info`` with the lineage and exam
scores, and forwards every API route (``/v1/...``, ``/generate``, ``/generate_stream``) to the
upstream, streaming responses through as they come. ``/health`` is the upstream's health, so the
same probes keep working; ``/metrics`` is the engine's metrics followed by the proxied-request
counter, ``/livez`` the proxy's own liveness. No model is loaded here.
"""

from __future__ import annotations

from typing import Any

# httpx2: the maintained HTTPX line that openai's client is built on; declared in the serve extra
import httpx2 as httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.background import BackgroundTask

from .app import WEB_PAGE

#: Hop-by-hop headers are never forwarded (RFC 9110 §7.6.1); content-length is recomputed.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length", "host"}


def create_proxy_app(upstream: str, served_model_name: str | None = None, lineage: dict[str, Any] | None = None,
                     ui: bool = True, engine: str = "upstream") -> FastAPI:
    from contextlib import asynccontextmanager

    upstream = upstream.rstrip("/")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    app = FastAPI(title="devops-model web chat proxy", docs_url=None, redoc_url=None, lifespan=lifespan)
    registry = CollectorRegistry()
    proxied = Counter("devops_model_proxy_requests", "Requests passed to the upstream engine", ["status"], registry=registry)
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(600, connect=10))

    async def forward(request: Request, path: str) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        req = client.build_request(request.method, "/" + path, params=request.query_params, headers=headers,
                                   content=await request.body())
        try:
            resp = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            proxied.labels("502").inc()
            return JSONResponse({"error": {"message": f"the engine at {upstream} did not answer: {exc}",
                                           "type": "server_error", "param": None, "code": "upstream_unreachable"}},
                                status_code=502)
        proxied.labels(str(resp.status_code)).inc()
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return StreamingResponse(resp.aiter_raw(), status_code=resp.status_code, headers=out_headers,
                                 background=BackgroundTask(resp.aclose))

    @app.get("/v1/info")
    async def info(request: Request):
        # Always ask the engine first, with the caller's key: the lineage is shown only to callers the
        # engine would answer (vLLM and TGI check their API key there), and the model id comes from it
        # unless --served-model-name names it.
        try:
            r = await client.get("/v1/models", headers={k: v for k, v in request.headers.items()
                                                         if k.lower() == "authorization"})
        except httpx.HTTPError as exc:
            return JSONResponse({"error": {"message": f"the engine at {upstream} did not answer: {exc}",
                                           "type": "server_error", "param": None, "code": "upstream_unreachable"}},
                                status_code=502)
        if r.status_code in (401, 403):
            return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
        name = served_model_name
        if name is None and r.status_code == 200:
            try:
                data = r.json().get("data") or []
            except ValueError:
                data = []
            if data:
                name = data[0].get("id")
        return {"model": name, "engine": engine, "upstream": upstream, **(lineage or {})}

    @app.get("/metrics")
    async def metrics():
        # The engine's own metrics (vLLM's and TGI's, what a scraper of the Service expects) followed by
        # this proxy's counter; the proxy's alone when the engine does not answer.
        own = generate_latest(registry)
        try:
            r = await client.get("/metrics", timeout=10)
        except httpx.HTTPError:
            return Response(own, media_type=CONTENT_TYPE_LATEST)
        engine_text = r.content if r.status_code == 200 else b""
        if engine_text and not engine_text.endswith(b"\n"):
            engine_text += b"\n"
        return Response(engine_text + own, media_type=CONTENT_TYPE_LATEST)

    @app.get("/livez")
    async def livez():
        """The proxy itself is alive (the pod's liveness probe); /health is the engine's readiness."""
        return {"status": "ok"}

    if ui:
        @app.get("/", response_class=HTMLResponse)
        async def web_chat():
            return HTMLResponse(WEB_PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    async def passthrough(path: str, request: Request):
        return await forward(request, path)

    return app
