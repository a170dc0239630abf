"""DevOps-Model platform: typed API, CRDs and the `devops-model` command.

The typed API (:mod:`devops_model.api`) imports neither kopf, kubernetes nor torch; the operator
(:mod:`devops_operator`) and the workloads (:mod:`devops_workloads`) both build on it.
"""

__version__ = "0.1.0"
