"""From the engine's thread to the HTTP response: submit sequences, await their events, send SSE.

``generate(state, eng, [(ids, params), …], route)`` submits every sequence of one request (a
completion with several prompts has several), yields ``(index, Event)`` as they come, records the
metrics, and gives the request's admission place back at the end, also when the client goes away
(the engine then drops the unfinished sequences at its next step).

Per generated token this path runs once for every streaming client, so it is kept lean: the events
of one engine step cross to the event loop in one hand-off (:class:`EventRelay`), and each SSE
chunk is encoded straight to bytes and sent without a per-chunk cancel scope (:func:`sse`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import AsyncIterator, Callable

from sse_starlette import EventSourceResponse

from .engine import BatchingEngine, Event, SamplingParams
from .protocol import RequestError


class EventRelay:
    """Hands engine events from the engine's loop thread to the event loop, one hand-off per step.

    The engine emits one event per running sequence per decode step. Forwarding each with
    ``call_soon_threadsafe`` woke the event loop once per token and sequence (a write to its
    self-pipe, a loop iteration, and a pass of the GIL the engine thread wants back): 16 wake-ups
    per step with 16 clients. A sink made here only holds its event; the engine calls
    :meth:`flush` after every step (``BatchingEngine.after_step``), which sends the step's events
    over in one call, in the order they were emitted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, tuple[int, Event]]] = []

    def sink(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue, index: int) -> Callable[[Event], None]:
        """The engine-side callback of one sequence: its events go to ``q`` as ``(index, event)``."""
        def hold(ev: Event) -> None:
            with self._lock:
                self._held.append((loop, q, (index, ev)))
        return hold

    def flush(self) -> None:
        """Send every held event to its event loop (called on the engine's thread after each step)."""
        with self._lock:
            held, self._held = self._held, []
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for loop, q, item in held:
            by_loop.setdefault(loop, []).append((q, item))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # that loop is closed (the server is stopping): nobody waits for these
                pass


def _deliver(batch: list[tuple[asyncio.Queue, tuple[int, Event]]]) -> None:
    for q, item in batch:
        q.put_nowait(item)


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
            reqs.append(eng.submit(ids, params, state.relay.sink(loop, q, i)))
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


class EventStream(EventSourceResponse):
    """sse-starlette's response (pings, disconnect detection, shutdown) without a deadline per chunk.

    With no ``send_timeout`` set, the base class still opens an anyio cancel scope around every
    chunk it sends; at 16 streaming clients that was about a seventh of the event loop's busy time.
    A send that stalls is still noticed: the client's disconnect ends the response.
    """

    async def _send_with_timeout(self, send, message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def sse_bytes(item: dict | str) -> bytes:
    """One server-sent event: a JSON object (or a literal such as ``[DONE]``) on one ``data:`` line.

    JSON text never holds a raw line break, so the event needs no splitting into several lines."""
    data = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
    return f"data: {data}\r\n\r\n".encode()


def sse(gen: AsyncIterator[dict | str]) -> EventSourceResponse:
    """Server-sent events, one JSON object (or the literal ``[DONE]``) per ``data:`` line."""
    async def encode():
        async for item in gen:
            yield sse_bytes(item)
    # ping every 15 s keeps proxies from closing a slow stream
    return EventStream(encode(), ping=15, headers={"X-Accel-Buffering": "no"})


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
