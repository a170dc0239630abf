"""Prometheus metrics of the operator: runs by kind and state, reconcile latency, errors.

    devops_model_operator_runs{kind,state}                 gauge
    devops_model_operator_reconcile_seconds{kind}          histogram
    devops_model_operator_reconcile_errors_total{kind}     counter
"""

from __future__ import annotations

import threading
from collections import Counter as _Counter
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily


class OperatorMetrics:
    def __init__(self, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        self._latency = Histogram("devops_model_operator_reconcile_seconds", "Duration of one reconcile pass.",
                                  ["kind"], registry=self.registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self._errors = Counter("devops_model_operator_reconcile_errors_total", "Reconcile passes that raised.",
                               ["kind"], registry=self.registry)
        self._states: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.registry.register(self)

    def latency(self, kind: str, seconds: float) -> None:
        self._latency.labels(kind).observe(seconds)

    def errors(self, kind: str) -> None:
        self._errors.labels(kind).inc()

    def state(self, key: str, kind: str, state: Optional[str]) -> None:
        with self._lock:
            if state:
                self._states[key] = (kind, state)

    def forget(self, key: str) -> None:
        with self._lock:
            self._states.pop(key, None)

    def collect(self) -> Any:
        g = GaugeMetricFamily("devops_model_operator_runs", "Resources by kind and state.", labels=["kind", "state"])
        with self._lock:
            counts = _Counter(self._states.values())
        for (kind, state), n in sorted(counts.items()):
            g.add_metric([kind, state], n)
        yield g
