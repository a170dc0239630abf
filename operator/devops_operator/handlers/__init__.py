"""kopf handlers: every kind's (:mod:`.resources`), child events (:mod:`.children`) and start-up
(:mod:`.startup`). ``register(config)`` adds them to kopf's registry; ``devops-model operator``
calls it once the configuration is loaded (nothing is registered or read at import time)."""

from __future__ import annotations

import kopf

from ..config import OperatorConfig
from . import children, resources, startup


def register(config: OperatorConfig, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    registry = registry or kopf.get_default_registry()
    resources.register(config, registry)
    children.register(registry)
    startup.register(config, registry)
    return registry
