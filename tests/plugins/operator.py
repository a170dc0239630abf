"""pytest plugin: the operator as a real process against the real control plane.

Fixtures
--------
operator_identity (session)  the chart's RBAC (``helm template charts/devops-model``: the operator's
                             ClusterRole and binding, the progress-only admission policy), a kubeconfig of the
                             chart's operator ServiceAccount, and the chart's operator.yaml.
run_operator     (function)  start(namespace) -> OperatorProcess: ``devops-model operator
                             --namespace NS`` as that identity, with a fast reconcile config;
                             .stop() (SIGKILL with kill=True) and .restart(); stopped after the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from devops_workloads.processes import free_port

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NS = "devops-model-system"
OPERATOR_SA = "devops-model-operator"

#: Fast reconcile for tests: waits retry every second, timers every 2 s, restarts have no back-off.
FAST_CONFIG = {
    "reconcile": {"requeueSeconds": 1, "watchdogIntervalSeconds": 2, "restartBackoffSeconds": 0},
}



def render_chart_with(cp, *args: str) -> list[dict]:
    """``helm template`` of the chart (release devops-model) with extra helm arguments."""
    r = cp.helm("template", "devops-model", str(REPO / "charts" / "devops-model"), "--namespace", OPERATOR_NS, *args)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def render_chart(cp) -> list[dict]:
    """``helm template`` of the chart with its default values."""
    return render_chart_with(cp)


@pytest.fixture(scope="session")
def operator_identity(control_plane):
    """(kubeconfig, chart's operator config): the chart's ClusterRoles and binding applied, and a
    kubeconfig of the chart's operator ServiceAccount, so the tests run with exactly its RBAC."""
    cp = control_plane
    docs = render_chart(cp)
    # The RBAC and the admission policy that keeps a run's own ServiceAccount to status.progress.
    rbac = [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
                                             "ValidatingAdmissionPolicyBinding")]
    binding = next(d for d in rbac if d["kind"] == "ClusterRoleBinding")
    (subject,) = binding["subjects"]
    assert subject["namespace"] == OPERATOR_NS
    if cp.get("namespace", OPERATOR_NS) is None:
        cp.kubectl("create", "namespace", OPERATOR_NS)
    cp.apply(rbac)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and "operator.yaml" in d.get("data", {}))
    chart_config = yaml.safe_load(config_map["data"]["operator.yaml"]) or {}
    return cp.service_account_kubeconfig(OPERATOR_NS, subject["name"], duration="2h"), chart_config


class OperatorProcess:
    def __init__(self, cp, kubeconfig: Path, namespace: str, work: Path, config: dict, env: dict | None = None):
        self.cp = cp
        self.extra_env = dict(env or {})
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.work = work
        self.config_file = work / "operator.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log = work / "operator.log"
        self.proc: subprocess.Popen | None = None
        self.health_port = free_port()
        self.metrics_port = free_port()

    def start(self) -> "OperatorProcess":
        env = self.cp.env(self.kubeconfig)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env["DEVOPS_MODEL_OPERATOR_CONFIG"] = str(self.config_file)
        env.update(self.extra_env)
        cmd = [str(REPO / ".venv" / "bin" / "devops-model"), "operator", "--namespace", self.namespace,
               "--kubeconfig", str(self.kubeconfig), "--health-port", str(self.health_port),
               "--metrics-port", str(self.metrics_port)]
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.work)
        self.cp.wait_for(self.ready, timeout=60, message=lambda: f"operator /readyz; log:\n{self.tail()}")
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            # pytest.fail (not an Exception) ends the wait at once instead of retrying until the timeout.
            pytest.fail(f"the operator exited with {self.proc.returncode}:\n{self.tail()}", pytrace=False)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> "OperatorProcess":
        self.stop()
        self.health_port, self.metrics_port = free_port(), free_port()
        return self.start()

    def tail(self, n: int = 60) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def run_operator(control_plane, operator_identity, tmp_path):
    started: list[OperatorProcess] = []

    kubeconfig, chart_config = operator_identity

    def start(namespace: str, config: dict | None = None, env: dict | None = None) -> OperatorProcess:
        # The chart's configuration, with fast reconcile timings (and the test's own overrides).
        cfg = json.loads(json.dumps(chart_config))
        for override in (FAST_CONFIG, config or {}):
            for k, v in override.items():
                cfg.setdefault(k, {}).update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
        work = tmp_path / f"operator-{len(started)}"
        work.mkdir()
        op = OperatorProcess(control_plane, kubeconfig, namespace, work, cfg, env)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()
