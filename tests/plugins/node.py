"""pytest plugin: a one-node Kubernetes cluster that runs real pods (tests/cluster/node.py).

Fixtures
--------
node_cluster  (session)  a NodeClusterFixture: a control plane on free loopback ports (like
                         `control_plane`) with a node joined to it -- containerd + runc, bridge CNI kept
                         inside the machine, kubelet, kube-proxy, kube-scheduler, CoreDNS and Kubeflow's
                         training-operator -- hostPath volumes of the default StorageClass, and the
                         project's images built from images/ (cached by input hash) loaded into containerd.

One node per machine (it owns the bridge, the kubelet's iptables chains and port 53 of the bridge
address): a second session waits for the first one's node to stop. The node needs root, the Debian
packages of `make node-deps` and the binaries of `make cluster-build NODE=1`; a missing prerequisite
FAILS the tests that use it (never skips), naming the command that provides it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.plugins.cluster import ControlPlaneError, ControlPlaneFixture, cp_mod

import sys  # noqa: E402

sys.path.insert(0, str(cp_mod.HERE))
import images as images_mod  # noqa: E402  (tests/cluster/images.py)
import node as node_mod  # noqa: E402  (tests/cluster/node.py)

#: The images the chain and the plain-pod tests use (busybox is the node's sandbox image, loaded at start).
IMAGES = ("operator", "workload", "serve")


class NodeClusterFixture(ControlPlaneFixture):
    """A ControlPlaneFixture whose cluster has a node; plus what the node tests need."""

    def __init__(self, cp, work_dir: Path, node):
        super().__init__(cp, work_dir)
        self.node = node

    @property
    def node_name(self) -> str:
        return node_mod.NODE_NAME

    def image(self, name: str) -> str:
        return images_mod.ref(name)

    def pods(self, namespace: str, selector: str | None = None) -> list[dict]:
        args = ["get", "pods", "-n", namespace, "-o", "json"] + (["-l", selector] if selector else [])
        return json.loads(self.kubectl(*args).stdout)["items"]

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        args = ["logs", "-n", namespace, pod] + (["-c", container] if container else [])
        r = self.kubectl(*args, check=False)
        return r.stdout + r.stderr

    def describe(self, kind: str, namespace: str) -> str:
        """`kubectl describe` + Events of a namespace, for failure messages."""
        r = self.kubectl("describe", kind, "-n", namespace, check=False, timeout=60)
        ev = self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False, timeout=60)
        return (r.stdout + r.stderr)[-6000:] + "\n--- events\n" + ev.stdout[-4000:]


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory):
    problems = node_mod.preflight()
    if problems:
        pytest.fail("the node cannot start on this machine:\n  " + "\n  ".join(problems), pytrace=False)
    base = tmp_path_factory.mktemp("node-cluster")
    cp = cp_mod.ControlPlane(base / "state", ports=cp_mod.Ports.free(), die_with_parent=True, node=True)
    t0 = time.monotonic()
    try:
        cp.start()
        fx = NodeClusterFixture(cp, base / "work", None)
        fx.apply_crds(cp_mod.kubeflow_crd_files())  # the project's CRDs come with `helm install`, as for a user
        node = cp.node()
        node.start()
        fx.node = node
    except ControlPlaneError as e:
        _stop(cp, base)
        pytest.fail(f"the node cluster did not start: {e}", pytrace=False)
    print(f"\n[node] control plane and node Ready in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    try:
        t = time.monotonic()
        images_mod.load(list(IMAGES), socket=node_mod.containerd_socket())
        print(f"[node] images built/loaded in {time.monotonic() - t:.0f}s", file=sys.stderr)
    except images_mod.ImageError as e:
        _stop(cp, base)
        pytest.fail(f"the images could not be built or loaded: {e}", pytrace=False)
    yield fx
    _stop(cp, base)


from tests.plugins.cluster import _stop  # noqa: E402  (logs kept next to the removed state, then stop)
