"""pytest plugin: the Helm chart (charts/devops-model) rendered and installed for tests.

Rendering (no cluster):
    render_chart(values_files=(...), set_values=(...), namespace=..., release=...) -> list[dict]
    helm_template(...) -> CompletedProcess (to look at refusals: values.schema.json errors)

Fixtures:
    helm              (session)  Path of the helm binary built by tests/cluster/build.sh. Missing: the
                                 test FAILS and says `make cluster-build` (never skips).
    chart_rbac        (function) a factory for the control plane: chart_rbac(namespace, scope="namespaced")
                                 installs the chart's RBAC and ServiceAccount (no CRDs, no operator pod:
                                 crds.install=false, operator.replicas=0) into the namespace, and returns a
                                 ChartRBAC with the operator's ServiceAccount kubeconfig (workload pods have
                                 no chart identity: the operator creates one per run).
                                 Requests made with operator_kubeconfig get exactly the chart's RBAC, so an
                                 operator started with it proves the chart grants enough (tests/cluster/test_operator.py
                                 uses it). The releases are uninstalled after the test; request the
                                 namespace's fixture before chart_rbac so the uninstall (which also
                                 removes the release's cluster-scoped roles) runs while it still exists.
                                 scope="cluster" binds ClusterRoles named after the release (dm-<ns>).
"""
from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent.parent
CHART = REPO / "charts" / "devops-model"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def helm_binary() -> Path:
    """The helm that tests/cluster/build.sh built (the pinned HELM_VERSION); fails the test when absent."""
    from tests.plugins.cluster import cp_mod  # the control-plane engineer's locator of the binaries

    path = cp_mod.bin_dir() / "helm"
    if not path.is_file():
        pytest.fail(f"helm is not built ({path} is missing): run `make cluster-build` "
                    "(tests/cluster/build.sh builds helm with the control plane from the Go module proxy)",
                    pytrace=False)
    return path


def helm_template(*, values_files: Iterable[Path | str] = (), set_values: Iterable[str] = (),
                  namespace: str = "devops-model", release: str = "rel", chart: Path = CHART,
                  extra: Iterable[str] = ()) -> subprocess.CompletedProcess:
    args = [str(helm_binary()), "template", release, str(chart), "--namespace", namespace]
    for f in values_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    args += list(extra)
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@functools.lru_cache(maxsize=64)
def _render_cached(values_files: tuple[str, ...], set_values: tuple[str, ...], namespace: str,
                   release: str) -> str:
    r = helm_template(values_files=values_files, set_values=set_values, namespace=namespace, release=release)
    if r.returncode != 0:
        raise AssertionError(f"helm template failed (exit {r.returncode}):\n{r.stderr}")
    return r.stdout


def render_chart(values_files: Iterable[Path | str] = (), set_values: Iterable[str] = (), *,
                 namespace: str = "devops-model", release: str = "rel") -> list[dict]:
    """Every object `helm template` renders (fresh dicts on each call; the YAML text is cached)."""
    text = _render_cached(tuple(str(f) for f in values_files), tuple(set_values), namespace, release)
    return [d for d in yaml.safe_load_all(text) if d]


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


@dataclass
class ChartRBAC:
    release: str
    namespace: str
    operator_service_account: str
    operator_kubeconfig: Path


@pytest.fixture
def chart_rbac(control_plane) -> Callable[..., ChartRBAC]:
    installed: list[tuple[str, str]] = []

    def install(namespace: str, scope: str = "namespaced", set_values: Iterable[str] = ()) -> ChartRBAC:
        release = f"dm-{namespace}"[:53].rstrip("-")
        args = ["install", release, str(CHART), "--namespace", namespace, "--wait=false",
                "--set", f"scope.mode={scope}", "--set", "crds.install=false",
                "--set", "operator.replicas=0"]
        for s in set_values:
            args += ["--set", s]
        control_plane.helm(*args)
        installed.append((release, namespace))
        # fullname = RELEASE-devops-model (the release name does not contain the chart name).
        operator_sa = f"{release}-devops-model"[:63].rstrip("-")
        return ChartRBAC(
            release=release, namespace=namespace, operator_service_account=operator_sa,
            operator_kubeconfig=control_plane.service_account_kubeconfig(namespace, operator_sa),
        )

    yield install
    for release, namespace in reversed(installed):
        control_plane.helm("uninstall", release, "--namespace", namespace, check=False)
