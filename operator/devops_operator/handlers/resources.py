"""The handlers of all five kinds, registered by one function (no copy per kind).

Create, resume and spec updates run one reconcile pass; a watch handler tracks every resource for
the operator's sweeper (:mod:`.sweeper`), which keeps looking while a run waits or runs. None of
them needs a finalizer: kopf puts none on the runs (no delete handlers, no kopf timers), and
``kubectl delete`` of a run never waits for the operator. ``register(config)`` is called by ``devops-model operator`` once the configuration
is loaded — nothing happens at import time.
"""

from __future__ import annotations

from typing import Any

import kopf

from devops_model.api import GROUP, KINDS, VERSION
from devops_model.contract import CONTROLLER

from ..config import OperatorConfig
from .common import handle
from .sweeper import track

#: Children carry this label; the child-event handlers watch only those.
MANAGED_BY = {"app.kubernetes.io/managed-by": CONTROLLER}


def on_change(body: Any, patch: Any, memo: Any, logger: Any, **_: Any) -> None:
    handle(body, patch, memo, logger)


def timer_tick(config: OperatorConfig) -> float:
    """How often the sweeper wakes up. A wake-up costs nothing unless the last pass asked
    to be looked at again by then (``Outcome.requeue``): runs whose pods are starting (Pending,
    Unschedulable, ImagePullBackOff) every reconcile.requeueSeconds, running ones every
    watchdogIntervalSeconds (the stall watchdog)."""
    return float(min(config.reconcile.requeue_seconds, config.reconcile.watchdog_interval_seconds))


def register(config: OperatorConfig, registry: kopf.OperatorRegistry | None = None) -> None:
    registry = registry or kopf.get_default_registry()
    for info in KINDS.values():
        plural = info.plural
        for decorator in (kopf.on.resume, kopf.on.create):
            decorator(GROUP, VERSION, plural, registry=registry, id="reconcile")(on_change)
        kopf.on.update(GROUP, VERSION, plural, field="spec", registry=registry, id="reconcile")(on_change)
        kopf.on.event(GROUP, VERSION, plural, registry=registry, id="track")(track)
