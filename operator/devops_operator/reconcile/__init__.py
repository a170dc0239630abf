"""One reconcile pass of a resource: lineage, children (create-if-absent), the failure policy, and
the status that follows from what the children say.

    outcome = reconcile(body, kube, config, now=now_rfc3339())
    # outcome.status: fields to merge into status; outcome.events: (type, reason, message);
    # outcome.requeue: seconds until the next look (None: nothing more to do)

Everything here is deterministic given the API's answers and ``now``; all I/O goes through the
:class:`~devops_operator.kubeapi.KubeApi` passed in (tests pass the real one against a real API
server). Runs (:mod:`.runs`) and chat services (:mod:`.chat`) each have their module; the lineage
and gate rules they apply are :mod:`devops_model.lineage`'s, the same a local run applies.
"""

from __future__ import annotations

from typing import Optional

from ..config import OperatorConfig
from ..kubeapi import KubeApi, Obj
from .chat import reconcile_chat
from .common import Outcome, now_rfc3339
from .runs import reconcile_run

__all__ = ["Outcome", "now_rfc3339", "reconcile", "reconcile_chat", "reconcile_run"]


def reconcile(body: Obj, kube: KubeApi, config: OperatorConfig, now: Optional[str] = None) -> Outcome:
    now = now or now_rfc3339()
    if body["kind"] == "ChatDeployment":
        return reconcile_chat(body, kube, config, now)
    return reconcile_run(body, kube, config, now)
