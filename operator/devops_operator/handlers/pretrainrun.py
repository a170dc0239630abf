"""kopf handlers of PretrainRun: create/resume/update run one reconcile pass; a timer keeps looking
while it waits or runs (see devops_operator.reconcile)."""

from __future__ import annotations

import kopf

from .common import handle, handle_timer
from .settings import GROUP, TICK, VERSION


@kopf.on.resume(GROUP, VERSION, "pretrainruns")
@kopf.on.create(GROUP, VERSION, "pretrainruns")
@kopf.on.update(GROUP, VERSION, "pretrainruns", field="spec")
def reconcile_pretrainrun(body, patch, memo, logger, **_):
    handle(body, patch, memo, logger)


@kopf.timer(GROUP, VERSION, "pretrainruns", interval=TICK, initial_delay=TICK)
def watch_pretrainrun(body, patch, memo, logger, **_):
    handle_timer(body, patch, memo, logger)
