"""kopf handlers of SFTRun: create/resume/update run one reconcile pass; a timer keeps looking
while it waits or runs (see devops_operator.reconcile)."""

from __future__ import annotations

import kopf

from .common import handle, handle_timer
from .settings import GROUP, TICK, VERSION


@kopf.on.resume(GROUP, VERSION, "sftruns")
@kopf.on.create(GROUP, VERSION, "sftruns")
@kopf.on.update(GROUP, VERSION, "sftruns", field="spec")
def reconcile_sftrun(body, patch, memo, logger, **_):
    handle(body, patch, memo, logger)


@kopf.timer(GROUP, VERSION, "sftruns", interval=TICK, initial_delay=TICK)
def watch_sftrun(body, patch, memo, logger, **_):
    handle_timer(body, patch, memo, logger)
