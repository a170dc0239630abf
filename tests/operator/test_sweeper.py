"""The operator's periodic look (handlers.sweeper): finalizer-free registration, kopf's peering rule,
and one round over the tracked runs."""

from __future__ import annotations

import copy
import datetime
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import kopf
import pytest

from devops_operator.config import OperatorConfig
from devops_operator.handlers import register
from devops_operator.handlers import sweeper as sweeper_module
from devops_operator.handlers.sweeper import Sweeper, peering_allows, track

NOW = datetime.datetime(2026, 12, 2, 6, 0, tzinfo=datetime.timezone.utc)


def peer(priority, seconds_ago=1, lifetime=60):
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - datetime.timedelta(seconds=seconds_ago)).isoformat()}


def test_no_handler_asks_kopf_for_a_finalizer():
    """kopf adds its finalizer when a spawning (timer, daemon) or a mandatory delete handler exists:
    with none, `kubectl delete` of a run never waits for the operator."""
    registry = register(OperatorConfig(), kopf.OperatorRegistry())
    assert registry._spawning.get_all_handlers() == []  # no kopf timers or daemons
    changing = registry._changing.get_all_handlers()
    assert changing and not any(h.requires_finalizer for h in changing)
    assert {h.id for h in registry._watching.get_all_handlers()} >= {"track", "child-jobs"}


@pytest.mark.parametrize(("peers", "allowed"), [
    ({"me": peer(10)}, True),                                   # alone
    ({"me": peer(10), "other": peer(5)}, True),                 # the highest priority works
    ({"me": peer(10), "other": peer(20)}, False),               # outranked: paused
    ({"me": peer(10), "other": peer(10)}, False),               # a tie pauses both, as in kopf
    ({"me": peer(10), "other": peer(20, seconds_ago=90)}, True),  # a dead peer does not count
    ({}, True),                                                 # own record not written yet
])
def test_peering_allows_follows_kopfs_rule(peers, allowed):
    assert peering_allows(peers, 10, now=NOW) is allowed


def test_track_keeps_the_little_the_sweeper_needs_and_forgets_deleted_runs():
    memo = SimpleNamespace(tracked={}, next_look={"SFTRun/ns/a": 1.0}, handler_context={})
    body = {"apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u"}, "spec": {"big": "x"}, "status": {"state": "Running"}}
    track(None, body, memo)
    assert memo.tracked == {"SFTRun/ns/a": {"apiVersion": "devops-model.io/v1alpha1", "kind": "SFTRun",
                                            "metadata": {"name": "a", "namespace": "ns"}, "status": {"state": "Running"}}}
    track("DELETED", body, memo)
    assert memo.tracked == {} and memo.next_look == {}


class FakeKube:
    def __init__(self, peering):
        self.peering, self.asked = peering, []

    def get(self, api_version, kind, namespace, name):
        self.asked.append((api_version, kind, namespace, name))
        return self.peering


def test_a_round_looks_at_every_tracked_run_only_while_leading(monkeypatch):
    looked = []
    monkeypatch.setattr(sweeper_module, "handle_timer", lambda body, patch, memo, logger: looked.append(body["metadata"]["name"]))
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    kube = FakeKube({"status": {"me": {"priority": 7, "lifetime": 60, "lastseen": now}}})
    memo = SimpleNamespace(kube=kube, handler_context={}, tracked={f"SFTRun/ns/{n}": {"kind": "SFTRun", "metadata": {"name": n, "namespace": "ns"}}
                                               for n in ("a", "b")})
    sweeper = Sweeper(memo, tick=1.0, workers=2, peering="devops-model", priority=7, namespaces=["ns"])
    with ThreadPoolExecutor(2) as pool:
        assert sweeper.sweep(pool) == 2
        assert sorted(looked) == ["a", "b"]
        assert kube.asked == [("kopf.dev/v1", "KopfPeering", "ns", "devops-model")]
        kube.peering["status"]["new-replica"] = {"priority": 9, "lifetime": 60, "lastseen": now}
        assert sweeper.sweep(pool) == 0 and len(looked) == 2  # outranked: kopf pauses this replica, so does the sweeper
        kube.peering = None
        assert sweeper.sweep(pool) == 0  # no peering object: kopf would not work either


def test_standalone_sweeper_needs_no_peering_and_survives_a_failing_pass(monkeypatch):
    def fail(body, patch, memo, logger):
        raise RuntimeError("API server gone")

    monkeypatch.setattr(sweeper_module, "handle_timer", fail)
    memo = SimpleNamespace(kube=None, handler_context={}, tracked={"EvalRun/ns/e": {"kind": "EvalRun", "metadata": {"name": "e", "namespace": "ns"}}})
    sweeper = Sweeper(memo, tick=0.01, workers=1, peering=None, priority=0, namespaces=None)
    with ThreadPoolExecutor(1) as pool:
        assert sweeper.sweep(pool) == 1  # the failure is logged, the round goes on
    sweeper.start()
    sweeper.stop()
    assert sweeper.thread is not None and not sweeper.thread.is_alive()


def test_looks_run_in_the_context_of_a_kopf_resource_handler(monkeypatch):
    """kopf.event() needs kopf's Event queue, which kopf puts in a resource handler's context: the
    sweeper's looks run in copies of the context `track` ran in (a thread of its own has none)."""
    import contextvars

    queue = contextvars.ContextVar("stand-in for kopf's event queue")
    seen = []
    monkeypatch.setattr(sweeper_module, "handle_timer",
                        lambda body, patch, memo, logger: seen.append(queue.get("missing")))
    memo = SimpleNamespace(tracked={}, next_look={}, handler_context={})
    body = {"apiVersion": "devops-model.io/v1alpha1", "kind": "EvalRun", "metadata": {"name": "e", "namespace": "ns"}}

    def in_kopf_handler():
        queue.set("kopf's queue")
        # kopf gives each resource's handlers a shallow copy of memo: what track keeps must be
        # in memo's containers, not in attributes of the copy.
        track(None, body, copy.copy(memo))

    contextvars.copy_context().run(in_kopf_handler)
    memo.kube = None
    sweeper = Sweeper(memo, tick=1.0, workers=2, peering=None, priority=0, namespaces=None)
    with ThreadPoolExecutor(2) as pool:
        assert sweeper.sweep(pool) == 1
    assert seen == ["kopf's queue"]
