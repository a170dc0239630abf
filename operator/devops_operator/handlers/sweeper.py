"""The periodic look at every run, without a finalizer on the runs.

kopf's per-resource ``@kopf.timer`` puts kopf's finalizer on every object it serves (kopf needs it to
stop the timer's task before the object disappears, and keeps that rule on purpose:
nolar/kopf#1001, #1183). A finalizer makes ``kubectl delete`` of a run hang while the operator is
down, for nothing: a run's children go with it through their owner references (the garbage
collector), and no delete handler has work to do.

So the periodic look is the operator's, not kopf's: a finalizer-free watch handler
(``@kopf.on.event``) keeps the names and states of the runs it sees in ``memo.tracked`` (and drops a
run on its DELETED event), and one sweeper thread wakes every tick and runs
:func:`~.common.handle_timer` over them — which skips terminal runs and runs whose last pass asked
to be looked at later (``memo.next_look``), as the kopf timer did.

With more than one replica (kopf peering), only the replica kopf lets work may sweep: kopf pauses
the others' watches, not foreign threads, so the sweeper reads the peering object and applies kopf's
own rule (:func:`peering_allows`): it works while no live peer has a higher priority, or the same.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .common import handle_timer

log = logging.getLogger(__name__)

#: kopf's peering objects (kopf.dev): cluster-wide for a cluster-wide operator, else one per namespace.
PEERING_API = "kopf.dev/v1"
#: kopf assumes this lifetime for a peer whose record does not say (kopf._core.engines.peering.Peer).
DEFAULT_PEER_LIFETIME = 60


def track(type: str | None, body: Any, memo: Any, **_: Any) -> None:
    """Watch handler of every kind: remember what the sweeper needs (kind, name, namespace, state)."""
    meta = body.get("metadata") or {}
    key = f"{body.get('kind')}/{meta.get('namespace')}/{meta.get('name')}"
    if "kopf" not in memo.handler_context:
        # kopf.event() finds kopf's settings and Event queue in the context of a resource handler
        # (not of the start-up handlers): the sweeper's looks run in copies of this one, so their
        # Events post. (A dict: kopf hands each resource's handlers a shallow copy of memo.)
        memo.handler_context["kopf"] = contextvars.copy_context()
    if type == "DELETED":
        memo.tracked.pop(key, None)
        memo.next_look.pop(key, None)
        return
    memo.tracked[key] = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                         "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
                         "status": {"state": (body.get("status") or {}).get("state")}}


def peering_allows(peers: Mapping[str, Any], priority: int, now: datetime.datetime | None = None) -> bool:
    """kopf's rule for a replica to work (kopf._core.engines.peering.process_peering_event): no live
    peer but this one has a priority higher than or equal to ``priority``. ``peers`` is the peering
    object's status (identity -> priority, lifetime, lastseen); this replica is one of the live
    peers with its own priority, so two records at ``priority`` mean a tie, which pauses both."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    at_or_above = 0
    for record in peers.values():
        if not isinstance(record, Mapping):
            continue
        lastseen = record.get("lastseen")
        if lastseen:
            seen = datetime.datetime.fromisoformat(str(lastseen).replace("Z", "+00:00"))
            if seen.tzinfo is None:
                seen = seen.replace(tzinfo=datetime.timezone.utc)
            if seen + datetime.timedelta(seconds=int(record.get("lifetime") or DEFAULT_PEER_LIFETIME)) <= now:
                continue  # dead: kopf ignores it (and cleans it up)
        prio = int(record.get("priority") or 0)
        if prio > priority:
            return False
        if prio == priority:
            at_or_above += 1
    return at_or_above <= 1


class Sweeper:
    """One thread: every ``tick`` seconds, :func:`handle_timer` over the tracked runs (in a small
    pool, as kopf ran timers in parallel), while this replica is the one that works."""

    def __init__(self, memo: Any, tick: float, workers: int, peering: str | None, priority: int,
                 namespaces: Iterable[str] | None):
        self.memo, self.tick, self.workers = memo, tick, workers
        self.peering, self.priority = peering, priority
        self.namespaces = list(namespaces) if namespaces is not None else None  # None: cluster-wide
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="devops-model-sweeper", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def leading(self) -> bool:
        if self.peering is None:
            return True
        places: list[tuple[str, str | None]] = [("ClusterKopfPeering", None)] if self.namespaces is None else [("KopfPeering", ns) for ns in self.namespaces]
        for kind, ns in places:
            obj = self.memo.kube.get(PEERING_API, kind, ns, self.peering)
            if obj is None or not peering_allows(obj.get("status") or {}, self.priority):
                return False
        return True

    def sweep(self, pool: ThreadPoolExecutor) -> int:
        """One round; returns how many runs it looked at (passes are skipped inside when not due)."""
        if not self.leading():
            return 0
        bodies = list(self.memo.tracked.values())
        futures = [pool.submit(self._look, body) for body in bodies]
        for future in futures:
            future.result()
        return len(bodies)

    def _look(self, body: Mapping[str, Any]) -> None:
        context = self.memo.handler_context.get("kopf")
        try:
            if context is not None:
                context.copy().run(handle_timer, body, None, self.memo, log)
            else:
                handle_timer(body, None, self.memo, log)
        except Exception:  # one run's failure must not stop the others' looks (counted in run_pass)
            log.exception("periodic pass over %s/%s failed", body.get("kind"), (body.get("metadata") or {}).get("name"))

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="devops-model-look") as pool:
            while not self.stop_event.wait(self.tick):
                try:
                    self.sweep(pool)
                except Exception:  # e.g. the API server unreachable: try again next tick
                    log.exception("periodic sweep failed")
