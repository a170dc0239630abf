"""``devops-model operator``: run the operator against the current kubeconfig (registered in
devops_cli's COMMANDS; imports nothing heavy until the command runs)."""

from __future__ import annotations

from typing import Any

from devops_model.commandline import add_command

EXAMPLES = """\
examples:
  devops-model operator                             all namespaces, current kubeconfig
  devops-model operator --namespace team-a          only resources in team-a
  devops-model operator --kubeconfig ~/.kube/lab --health-port 8080 --metrics-port 9090
  DEVOPS_MODEL_OPERATOR_CONFIG=operator.yaml devops-model operator   images and defaults (docs/operator.md)
"""


def register(sub: Any) -> None:

    p = add_command(
        sub, "operator", "run the Kubernetes operator (reconciles the five kinds into Jobs, PyTorchJobs, Deployments)",
        "Run the DevOps-Model operator: watch PretrainRun, SFTRun, EvalRun, QuantizeRun and "
        "ChatDeployment resources and create their children, following each child's state into the "
        "resource's status (conditions, progress, artifact, scores, endpoint) and Events. "
        "Configuration (images, storage, defaults) comes from --config, $DEVOPS_MODEL_OPERATOR_CONFIG or "
        "/etc/devops-model/operator.yaml; see docs/operator.md.", EXAMPLES)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch only this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace, even when the configuration says scope: namespaced "
                       "(default: the configuration's scope; cluster scope watches every namespace)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--config", default=None, help="operator configuration YAML (docs/operator.md)")
    p.add_argument("--health-port", type=int, default=8080, help="port of /healthz and /readyz (0: off; default 8080)")
    p.add_argument("--metrics-port", type=int, default=9090, help="port of /metrics (0: off; default 9090)")
    p.set_defaults(func=_cmd_operator)


def _cmd_operator(args: Any) -> int:
    from .main import run_operator

    run_operator(namespaces=args.namespace, all_namespaces=args.all_namespaces, kubeconfig=args.kubeconfig,
                 health_port=args.health_port or None, metrics_port=args.metrics_port or None,
                 config_path=args.config)
    return 0
