"""What one built-in server knows and checks for every request: its configuration, its metrics,
the loaded engine, admission (``--max-concurrency``), the API key and the model name.

The route modules (openai_routes.py, tgi_routes.py) call these checks in the same order: key,
body, model name, readiness, prompt length, admission; each raises :class:`RequestError`, which
the route turns into its API's error shape.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..processes import usable_cpus
from .engine import BatchingEngine
from .protocol import RequestError
from .streaming import EventRelay

log = logging.getLogger("devops_model.serve")


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
    #: Refuse (404) a request naming another model. Off by default: with one model served, any
    #: name is taken to mean it, as TGI does (huggingface_hub's InferenceClient sends a placeholder).
    strict_model_name: bool = False
    #: torch threads for a model on the CPU; None = :func:`cpu_threads`' default.
    threads: int | None = None

    @property
    def batch_size(self) -> int:
        return self.max_batch_size or min(16, self.max_concurrency)


def cpu_threads(requested: int | None) -> int | None:
    """torch's intra-op threads for a model on the CPU (None: leave torch's setting alone).

    Every usable core: the affinity mask capped by a cgroup CPU limit, which torch's own default
    ignores (a 2-CPU pod on a 64-core node would otherwise run 64 threads and be throttled). Measured
    on a quiet 2-core machine (bench/serve.py, 16 streaming clients): 717 tokens/s with two threads
    against 484 with one, although the HTTP event loop and the batching loop share those cores; one
    thread only looked better while other jobs kept the cores busy. ``--threads`` or OMP_NUM_THREADS
    decide instead.
    """
    if requested is not None:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # torch already follows it
    return usable_cpus()


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


class ServerState:
    def __init__(self, config: ServerConfig, engine: BatchingEngine | None = None):
        self.config = config
        self.engine = engine
        self.error: str | None = None
        self.in_flight = 0
        self.lock = threading.Lock()
        self.metrics = Metrics()
        self.created = int(time.time())
        self.relay = EventRelay()  # engine events → the event loop (streaming.py)
        self._grammars = None  # guided.Grammars, built on the first constrained request

    @property
    def name(self) -> str:
        return self.config.served_model_name

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        try:
            t0 = time.time()
            engine = BatchingEngine.load(self.config.model_dir, device=self.config.device, dtype=self.config.dtype,
                                         trust_remote_code=self.config.trust_remote_code,
                                         max_batch_size=self.config.batch_size, max_model_len=self.config.max_model_len)
            if engine.device.type == "cpu" and (threads := cpu_threads(self.config.threads)) is not None:
                engine.torch.set_num_threads(threads)
                log.info("torch uses %d thread(s) on the CPU", threads)
            self.attach(engine)
            log.info("model %s loaded in %.1fs; serving as %r", self.config.model_dir, time.time() - t0, self.name)
        except Exception as exc:  # reported by /health (503 failed) and in the log
            log.exception("could not load the model")
            self.error = f"could not load {self.config.model_dir}: {type(exc).__name__}: {exc}"

    def attach(self, engine: BatchingEngine) -> None:
        m = self.metrics
        engine.stats.on_step = m.batch_size.observe
        engine.after_step.append(self.relay.flush)
        m.queue_depth.set_function(lambda: engine.queue_depth)
        m.running.set_function(lambda: engine.running)
        m.in_flight.set_function(lambda: self.in_flight)
        if engine._thread is None:
            engine.start()
        self.engine = engine

    def grammars(self):
        """The grammar compiler for constrained decoding (xgrammar), built once per server."""
        with self.lock:
            if self._grammars is None:
                from .guided import Grammars

                eng = self.engine
                self._grammars = Grammars(eng.tokenizer, vocab_size=eng.model.config.vocab_size, stop_ids=eng.eos_ids)
            return self._grammars

    # ------------------------------------------------------------------ checks
    def check_key(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not given or not secrets.compare_digest(given.encode(), key.encode()):
            raise RequestError("missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                               param=None, status=401, code="invalid_api_key", kind="authentication_error")

    def check_ready(self) -> BatchingEngine:
        eng = self.engine
        if eng is None or not eng.alive:
            why = self.error or (eng.failed if eng else None) or "the model is still loading"
            raise RequestError(f"not ready: {why}", status=503, code="not_ready", kind="server_error")
        return eng

    def check_model(self, requested: str | None) -> None:
        if requested and requested != self.name and self.config.strict_model_name:
            raise RequestError(f"model {requested!r} does not exist; this server serves {self.name!r} (see /v1/models)",
                               param="model", status=404, code="model_not_found")

    @staticmethod
    async def read_json(request: Request) -> Any:
        body = await request.body()
        if not body:
            raise RequestError("the request body is empty; send a JSON object", param=None)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}", param=None) from None

    def token_limit(self, eng: BatchingEngine, ids: list[int], max_tokens: int | None, param: str,
                    max_param: str = "max_tokens") -> int:
        """How many tokens may be generated after ``ids``; 400 when the prompt or max_tokens is too long."""
        room = eng.max_model_len - len(ids)
        if room < 1:
            raise RequestError(f"{param}: the prompt has {len(ids)} tokens; the maximum model length is "
                               f"{eng.max_model_len} (prompt + answer)", param=param)
        if max_tokens is not None and max_tokens > room:
            raise RequestError(f"{max_param}: {max_tokens} is too many; the prompt has {len(ids)} tokens and the maximum "
                               f"model length is {eng.max_model_len}, so at most {room} can be generated",
                               param=max_param)
        return max_tokens if max_tokens is not None else min(int(eng.defaults["max_tokens"]), room)

    # ------------------------------------------------------------------ admission
    def admit(self) -> None:
        """Take a place among the running + waiting requests, or 429 at once."""
        with self.lock:
            if self.in_flight < self.config.max_concurrency:
                self.in_flight += 1
                return
        self.metrics.rejected.inc()
        n = self.config.max_concurrency
        raise RequestError(f"the server is busy: {n} requests are in progress (--max-concurrency {n}); retry shortly",
                           status=429, code="too_many_requests", kind="rate_limit_error")

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1
