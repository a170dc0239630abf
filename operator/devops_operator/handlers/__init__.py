"""kopf handlers, one module per kind, plus child events and start-up. Importing this package
registers them with kopf's default registry (``devops-model operator`` does)."""

from . import (  # noqa: F401  (imported for their decorators)
    chatdeployment,
    children,
    evalrun,
    pretrainrun,
    quantizerun,
    sftrun,
    startup,
)
