"""kopf handlers of EvalRun: create/resume/update run one reconcile pass; a timer keeps looking
while it waits or runs (see devops_operator.reconcile)."""

from __future__ import annotations

import kopf

from .common import handle, handle_timer
from .settings import GROUP, TICK, VERSION


@kopf.on.resume(GROUP, VERSION, "evalruns")
@kopf.on.create(GROUP, VERSION, "evalruns")
@kopf.on.update(GROUP, VERSION, "evalruns", field="spec")
def reconcile_evalrun(body, patch, memo, logger, **_):
    handle(body, patch, memo, logger)


@kopf.timer(GROUP, VERSION, "evalruns", interval=TICK, initial_delay=TICK)
def watch_evalrun(body, patch, memo, logger, **_):
    handle_timer(body, patch, memo, logger)
