"""The operator process: kopf with our handlers, health endpoints and Prometheus metrics.

    devops-model operator [--namespace NS | --all-namespaces] [--kubeconfig FILE]
                          [--health-port 8080] [--metrics-port 9090] [--config FILE]

Health (``--health-port``): ``GET /healthz`` 200 while the kopf loop runs; ``GET /readyz`` 200
once start-up finished (handlers registered, API reachable). Metrics (``--metrics-port``):
``GET /metrics`` (see :mod:`devops_operator.metrics`). With ``reconcile.peering`` set (the chart
does when replicas > 1) the replicas register in that kopf peering object with random priorities
and only the highest handles resources; the others pause until it is gone
(``$DEVOPS_MODEL_PEERING_PRIORITY`` fixes a replica's priority).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Sequence


def _health_server(port: int, ready: threading.Event, alive: threading.Event) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.startswith("/healthz"):
                ok = alive.is_set()
            elif self.path.startswith("/readyz"):
                ok = ready.is_set() and alive.is_set()
            else:
                self.send_response(404)
                self.end_headers()
                return
            body = b"ok\n" if ok else b"not ready\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # probes every few seconds: keep the log for real events
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def run_operator(*, namespaces: Sequence[str] = (), all_namespaces: bool = False, kubeconfig: Optional[str] = None,
                 health_port: Optional[int] = 8080, metrics_port: Optional[int] = 9090,
                 config_path: Optional[str] = None, stop_flag: Optional[threading.Event] = None,
                 ready_flag: Optional[threading.Event] = None) -> None:
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
    if config_path:
        os.environ["DEVOPS_MODEL_OPERATOR_CONFIG"] = config_path
    import kopf
    from prometheus_client import start_http_server

    from .config import OperatorConfig
    from .handlers import register
    from .metrics import OperatorMetrics

    CONFIG = OperatorConfig.load()
    registry = register(CONFIG)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    memo = kopf.Memo()
    memo.metrics = OperatorMetrics()
    ready = ready_flag or threading.Event()
    alive = threading.Event()
    alive.set()
    if metrics_port:
        start_http_server(metrics_port, registry=memo.metrics.registry)
    health = _health_server(health_port, ready, alive) if health_port else None
    if not namespaces and not all_namespaces and CONFIG.scope == "namespaced" and CONFIG.namespace:
        namespaces = [CONFIG.namespace]
    # kopf peering pauses every operator when peers share a priority, and the one with the highest
    # priority works: a random priority per process makes that a leader election (a new replica of
    # a rolling update may take over; handlers are idempotent, so that is harmless).
    priority = None
    if CONFIG.reconcile.peering:
        priority = int(os.environ.get("DEVOPS_MODEL_PEERING_PRIORITY") or random.SystemRandom().randint(1, 2**30))
    memo.namespaces = list(namespaces)  # the sweeper reads the peering object in each (namespaced peering)
    try:
        kopf.run(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            standalone=CONFIG.reconcile.peering is None,
            peering_name=CONFIG.reconcile.peering,
            priority=priority,
            memo=memo,
            registry=registry,
            ready_flag=ready,
            stop_flag=stop_flag,
        )
    finally:
        alive.clear()
        if health is not None:
            health.shutdown()
