"""From the engine's thread to the HTTP response: submit sequences, await their events, send SSE.

``generate(state, eng, [(ids, params), …], route)`` submits every sequence of one request (a
completion with several prompts has several), yields ``(index, Event)`` as they come, records the
metrics, and gives the request's admission place back at the end, also when the client goes away
(the engine then drops the unfinished sequences at its next step).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from sse_starlette import EventSourceResponse

from .engine import BatchingEngine, Event, SamplingParams
from .protocol import RequestError


async def generate(state, eng: BatchingEngine, seqs: list[tuple[list[int], SamplingParams]],
                   route: str) -> AsyncIterator[tuple[int, Event]]:
    """Submit ``seqs`` (already admitted) and yield their events; releases the admission place at the end."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    m = state.metrics
    t0 = time.monotonic()
    reqs = []
    try:
        for i, (ids, params) in enumerate(seqs):
            reqs.append(eng.submit(ids, params, lambda ev, i=i: loop.call_soon_threadsafe(q.put_nowait, (i, ev))))
            m.prompt_tokens.inc(len(ids))
        first = True
        open_ = set(range(len(seqs)))
        while open_:
            i, ev = await q.get()
            if first:
                m.ttft.observe(time.monotonic() - t0)
                first = False
            if ev.finish_reason:
                open_.discard(i)
                m.generation_tokens.inc(ev.completion_tokens)
                if ev.finish_reason == "error":
                    raise RequestError(f"generation failed: {ev.error}", status=500, code="engine_error", kind="server_error")
            yield i, ev
        m.latency.labels(route).observe(time.monotonic() - t0)
    finally:
        for r in reqs:
            r.cancel()  # a no-op for finished sequences; frees the rows of a client that went away
        state.release()


async def collect(gen: AsyncIterator[tuple[int, Event]], n: int) -> list[list[Event]]:
    """Every event of every sequence, by sequence."""
    out: list[list[Event]] = [[] for _ in range(n)]
    async for i, ev in gen:
        out[i].append(ev)
    return out


def sse(gen: AsyncIterator[dict | str]) -> EventSourceResponse:
    """Server-sent events, one JSON object (or the literal ``[DONE]``) per ``data:`` line."""
    async def encode():
        async for item in gen:
            yield {"data": item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)}
    # ping every 15 s keeps proxies from closing a slow stream
    return EventSourceResponse(encode(), ping=15, headers={"X-Accel-Buffering": "no"})


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
