"""Values the handler decorators need at import time (kopf takes a timer's interval then).

They come from the same operator configuration as everything else (``OperatorConfig.load()``:
$DEVOPS_MODEL_OPERATOR_CONFIG or /etc/devops-model/operator.yaml), read once when the handlers
are imported by ``devops-model operator``.
"""

from __future__ import annotations

from devops_model.api import GROUP, VERSION

from ..config import OperatorConfig

CONFIG = OperatorConfig.load()
#: Seconds between timer passes over each resource (reconcile.watchdogIntervalSeconds): the stall
#: watchdog and pod-level news (Unschedulable, ImagePullBackOff). Transitions of the children come
#: as child events, and waiting for a parent retries every reconcile.requeueSeconds.
INTERVAL = float(CONFIG.reconcile.watchdog_interval_seconds)
#: How often each resource's timer wakes up. A wake-up costs nothing unless the last pass asked to
#: be looked at again by then (``Outcome.requeue``): runs whose pods are starting (Pending,
#: Unschedulable, ImagePullBackOff) every reconcile.requeueSeconds, running ones every INTERVAL.
TICK = float(min(CONFIG.reconcile.requeue_seconds, CONFIG.reconcile.watchdog_interval_seconds))
MANAGED_BY = {"app.kubernetes.io/managed-by": "devops-model-operator"}

__all__ = ["CONFIG", "GROUP", "INTERVAL", "MANAGED_BY", "TICK", "VERSION"]
