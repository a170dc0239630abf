"""Operator start-up: kopf settings (progress kept in annotations, since the kinds' status schema
has no room for kopf's bookkeeping; peering for more than one replica; Events that name this
operator), the process state in ``memo`` (the API client, the configuration, per-resource locks,
the metrics) and the sweeper thread (:mod:`.sweeper`), stopped at clean-up."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from devops_model.contract import CONTROLLER, POD_NAME_ENV

from ..config import OperatorConfig
from ..kube import Kube
from ..metrics import OperatorMetrics
from .resources import timer_tick
from .sweeper import Sweeper


def register(config: OperatorConfig, registry: kopf.OperatorRegistry) -> None:
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        _configure(config, settings, memo)
        # Started here, after memo is set up (kopf may run several start-up handlers at once).
        memo.sweeper = Sweeper(memo, timer_tick(config), settings.execution.max_workers or 16, config.reconcile.peering,
                               settings.peering.priority,
                               None if settings.peering.clusterwide else list(getattr(memo, "namespaces", None) or []))
        memo.sweeper.start()

    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(stopping)
    kopf.on.probe(id="api", registry=registry)(api_reachable)


def _configure(config: OperatorConfig, settings: kopf.OperatorSettings, memo: kopf.Memo) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="devops-model.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="devops-model.io", key="last-handled-configuration")
    # kopf turns handler log lines into Events ("Handler ... succeeded"); those are noise next to
    # ours (one per transition, with the reason), so only CRITICAL log lines become Events.
    settings.posting.level = logging.CRITICAL
    # Events name this operator and its pod, not kopf's defaults ("kopf", instance "dev").
    settings.posting.reporting_component = CONTROLLER
    settings.posting.reporting_instance = reporting_instance()
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    if config.reconcile.peering:
        settings.peering.name = config.reconcile.peering
        settings.peering.mandatory = True
        settings.peering.lifetime = config.reconcile.peering_lifetime_seconds
    memo.config = config
    memo.kube = getattr(memo, "kube", None) or Kube()
    memo.locks = {}
    memo.handler_context = {}  # "kopf" -> a resource handler's contextvars (handlers.sweeper.track)
    memo.tracked = {}  # "Kind/ns/name" -> the little the sweeper needs (handlers.sweeper.track)
    memo.observed = {}  # child "Kind/ns/name" -> resourceVersion last seen by a pass
    memo.next_look = {}  # "Kind/ns/name" -> time.monotonic() when the sweeper should pass over it again
    memo.locks_guard = threading.Lock()
    memo.metrics = getattr(memo, "metrics", None) or OperatorMetrics()
    memo.ready = True


def reporting_instance(environ: Mapping[str, str] | None = None) -> str:
    """The Events' ``reportingInstance``: this operator's pod (``POD_NAME`` from the chart's
    downward API, else ``HOSTNAME``, which is the pod name in a pod), else the host's name."""
    environ = os.environ if environ is None else environ
    for name in POD_NAME_ENV:
        if environ.get(name):
            return environ[name]
    return socket.gethostname()


def stopping(memo: kopf.Memo, **_: Any) -> None:
    memo.ready = False
    sweeper = getattr(memo, "sweeper", None)
    if sweeper is not None:
        sweeper.stop()


def api_reachable(memo: kopf.Memo, **_: Any) -> str:
    """Liveness detail: the API server answers."""
    from kubernetes import client

    return client.VersionApi(memo.kube.api_client).get_code().git_version
