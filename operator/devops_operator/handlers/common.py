"""What every kind's handlers share: run one reconcile pass under a per-resource lock, write the
status on purpose (a merge patch of the status subresource, inside the lock), post Events on transitions, and ask kopf to come back later
(``kopf.TemporaryError``) while something is still waiting or running.

Process state lives in kopf's ``memo`` (set up in :mod:`devops_operator.handlers.startup`):
``memo.kube``, ``memo.config``, ``memo.locks``, ``memo.metrics``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import kopf

from devops_model.api import API_VERSION
from devops_model.contract import TERMINAL_STATES, State

from ..reconcile import Outcome, reconcile


def _lock_for(memo: Any, key: str) -> threading.Lock:
    with memo.locks_guard:
        lock: threading.Lock | None = memo.locks.get(key)
        if lock is None:
            lock = memo.locks[key] = threading.Lock()
        return lock


def run_pass(body: Any, memo: Any, logger: Any) -> Outcome:
    """One reconcile pass of ``body`` (serialized per resource: handlers, the sweeper and child events
    may fire together), with its latency and errors counted."""
    plain = _plain(body)
    key = f"{plain['kind']}/{plain['metadata'].get('namespace')}/{plain['metadata']['name']}"
    started = time.perf_counter()
    with _lock_for(memo, key):
        try:
            # kopf's body may predate the last pass's status write (the watch lags): read it fresh,
            # so decisions such as the restart count build on what the previous pass wrote.
            fresh = memo.kube.get(API_VERSION, plain["kind"], plain["metadata"].get("namespace"), plain["metadata"]["name"])
            if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                return Outcome()
            plain = _plain(fresh)
            outcome = reconcile(plain, memo.kube, memo.config)
            # Written inside the lock, on purpose (a merge patch of the status subresource): the
            # next pass over this resource (the sweeper, a child event) must read what this one decided,
            # e.g. the restart count, or it could act on a stale status.
            memo.kube.patch_status(API_VERSION, plain["kind"], plain["metadata"].get("namespace"),
                                   plain["metadata"]["name"], outcome.status)
        except Exception:
            memo.metrics.errors(plain["kind"])
            raise
        finally:
            memo.metrics.latency(plain["kind"], time.perf_counter() - started)
    memo.metrics.state(key, plain["kind"], outcome.status.get("state") or (plain.get("status") or {}).get("state"))
    memo.observed.update(outcome.observed)
    # When the sweeper should look again: the pass's own wish (a starting pod soon, a running run at
    # the watchdog interval); a pass with nothing more to do leaves it to the watchdog interval.
    wait = outcome.requeue if outcome.requeue is not None else memo.config.reconcile.watchdog_interval_seconds
    memo.next_look[key] = time.monotonic() + float(wait)
    return outcome


def _key(body: Any) -> str:
    meta = body.get("metadata") or {}
    return f"{body.get('kind')}/{meta.get('namespace')}/{meta.get('name')}"


def _plain(body: Any) -> dict[str, Any]:
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": dict(body.get("metadata", {})),
            "spec": _thaw(body.get("spec", {})), "status": _thaw(body.get("status", {}))}


def _thaw(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def post_events(body: Any, outcome: Outcome) -> None:
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message[:1024])


#: States in which a change handler retries itself ("not yet"); otherwise the sweeper and the
#: child events keep looking, so a long run does not keep a handler open for days.
WAITING = (State.WAITING,)


def handle(body: Any, patch: Any, memo: Any, logger: Any) -> None:
    """The whole of a kind's handler: reconcile (which writes the status), events, come back when waiting."""
    outcome = run_pass(body, memo, logger)
    post_events(body, outcome)
    if outcome.requeue is not None and outcome.status.get("state") in WAITING:
        # Not an error: "look again soon" (the parent or the gate's EvalRun has not succeeded yet).
        # This retry is the quick look; the sweeper need not look as well.
        memo.next_look[_key(body)] = time.monotonic() + float(memo.config.reconcile.watchdog_interval_seconds)
        raise kopf.TemporaryError(outcome.status.get("message") or "waiting", delay=outcome.requeue)


def handle_timer(body: Any, patch: Any, memo: Any, logger: Any) -> None:
    """Periodic pass (stall watchdog, parents finishing, pod-level news such as Unschedulable);
    terminal runs are skipped, and so is a wake-up before the time the last pass asked for."""
    if (body.get("status") or {}).get("state") in TERMINAL_STATES and body.get("kind") != "ChatDeployment":
        return
    if time.monotonic() < memo.next_look.get(_key(body), 0.0):
        return
    outcome = run_pass(body, memo, logger)
    post_events(body, outcome)
