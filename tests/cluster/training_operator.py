"""Kubeflow's training-operator (PyTorchJob controller) for the node, run on the host.

It is the binary that `tests/cluster/build.sh --node` builds from github.com/kubeflow/training-operator at
TRAINING_OPERATOR_VERSION (the version whose PyTorchJob CRD the cluster has), set up as its own
manifests set it up, with these differences:

- it runs on the host as a user (client certificate) bound to the manifests' ClusterRole, not in a pod;
- its webhook server listens on :9443 of the host; the `training-operator` Service in `kubeflow` has no
  selector but an EndpointSlice to the bridge address, so the API server reaches it through the Service
  as it would reach the pod (the node's INPUT guard admits that port from loopback and the bridge only);
- its own certificate rotator (open-policy-agent/cert-controller, as upstream) makes the serving
  certificate, stores it in the Secret `kubeflow/training-operator-webhook-cert` and writes the
  webhook configuration's caBundle: the webhook validates every PyTorchJob, as in a real install;
- the PyTorch init container (waits for the master's DNS name) uses the node's busybox image and a
  template with a restricted security context, so workers pass `pod-security.kubernetes.io/enforce: restricted`;
  it looks the master up under the pod's own namespace domain (the first `search` entry of its resolv.conf):
  Debian's busybox `nslookup` tries every search domain and exits 1 when any of them has no answer, while
  upstream's alpine image resolves through musl, which stops at the first answer.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import controlplane as cpm

NAMESPACE = "kubeflow"
SERVICE = "training-operator"
SECRET = "training-operator-webhook-cert"
WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
WEBHOOK_PORT = 9443
# Hard-coded in training-operator's pkg/cert (the rotator writes the serving certificate there).
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
USER = "system:devops-model:training-operator"

# training-operator renders this with html/template: no `<`, `>` (they would be escaped).
INIT_CONTAINER_TEMPLATE = """\
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources:
    limits:
      cpu: 100m
      memory: 20Mi
    requests:
      cpu: 10m
      memory: 10Mi
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    runAsUser: 65534
    runAsGroup: 65534
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  command: ['sh', '-c', 'd=; p=; for w in $(cat /etc/resolv.conf); do [ "$p" = search ] && [ -z "$d" ] && d=$w; p=$w; done; err=1;for i in $(seq {{.MaxTries}}); do if nslookup {{.MasterAddr}}.$d; then err=0 && break; fi;echo waiting for master; sleep 2; done; exit $err']
"""


def module_dir() -> Path:
    version = cpm.read_versions()["TRAINING_OPERATOR_VERSION"]
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("go") else ""
    d = Path(gomodcache or Path.home() / "go" / "pkg" / "mod") / f"github.com/kubeflow/training-operator@{version}"
    if not (d / "manifests" / "base").is_dir():
        raise cpm.ControlPlaneError(f"training-operator {version}'s manifests are not in {d}: "
                                    "run `make cluster-build NODE=1` (tests/cluster/build.sh --node)")
    return d


def _as_json(cp: "cpm.ControlPlane", path: Path) -> list[dict]:
    """YAML -> objects, through kubectl (the harness uses the standard library only)."""
    out = json.loads(cp.kubectl("create", "--dry-run=client", "-o", "json", "-f", str(path)).stdout)
    return out["items"] if out.get("kind") == "List" else [out]


def manifests(cp: "cpm.ControlPlane", gateway: str) -> list[dict]:
    base = module_dir() / "manifests" / "base"
    objs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    role = [o for o in _as_json(cp, base / "rbac" / "role.yaml") if o["kind"] == "ClusterRole"]
    objs += role
    objs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "devops-model:training-operator"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role[0]["metadata"]["name"]},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]})
    # The rotator updates the webhook configuration's caBundle and its own Secret (the manifests' role
    # only lets it get/list webhook configurations, as upstream's kustomize adds the rest).
    objs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "devops-model:training-operator-webhook"},
                 "rules": [{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                            "resourceNames": [WEBHOOK_CONFIG], "verbs": ["get", "update", "patch"]},
                           {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                            "verbs": ["list", "watch"]}]})
    objs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "devops-model:training-operator-webhook"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "devops-model:training-operator-webhook"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]})
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": NAMESPACE}})
    objs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                 "spec": {"ports": [{"name": "webhook-server", "port": 443, "protocol": "TCP", "targetPort": WEBHOOK_PORT}]}})
    objs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                 "metadata": {"name": f"{SERVICE}-host", "namespace": NAMESPACE,
                              "labels": {"kubernetes.io/service-name": SERVICE,
                                         "endpointslice.kubernetes.io/managed-by": "devops-model.io-node"}},
                 "addressType": "IPv4",
                 "endpoints": [{"addresses": [gateway], "conditions": {"ready": True}}],
                 "ports": [{"name": "webhook-server", "port": WEBHOOK_PORT, "protocol": "TCP"}]})
    for vwc in _as_json(cp, base / "webhook" / "manifests.yaml"):
        vwc["metadata"]["name"] = WEBHOOK_CONFIG
        for wh in vwc["webhooks"]:
            wh["clientConfig"]["service"].update({"name": SERVICE, "namespace": NAMESPACE})
        objs.append(vwc)
    return objs


def start(node) -> None:
    cp = node.cp
    from node import PAUSE_IMAGE, POD_GATEWAY  # noqa: PLC0415 (node imports this module lazily too)
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
               input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(cp, POD_GATEWAY)}))
    template = node.dir / "pytorch-init-container.yaml"
    template.write_text(INIT_CONTAINER_TEMPLATE)
    metrics, probe = cpm.free_port(), cpm.free_port()
    node._save_state(training_operator_probe_port=probe)
    env = dict(os.environ, KUBECONFIG=str(node.training_operator_kubeconfig), MY_POD_NAMESPACE=NAMESPACE)
    node._spawn("training-operator", [
        str(cpm.bin_dir() / "training-operator"), "--enable-scheme=pytorchjob",
        f"--metrics-bind-address={cpm.LOOPBACK}:{metrics}", f"--health-probe-bind-address={cpm.LOOPBACK}:{probe}",
        f"--webhook-server-port={WEBHOOK_PORT}", f"--webhook-service-name={SERVICE}", f"--webhook-secret-name={SECRET}",
        f"--pytorch-init-container-image={PAUSE_IMAGE}", f"--pytorch-init-container-template-file={template}",
        "--pytorch-init-container-max-tries=150", "--zap-log-level=info"], env=env)

    # In a pod the kubelet mounts the rotator's Secret at CERT_DIR and the rotator waits for the files;
    # on the host this plays that volume, once the rotator has filled the Secret.
    def secret_filled() -> dict | None:
        r = cp.kubectl("get", "secret", SECRET, "-n", NAMESPACE, "-o", "json", check=False)
        data = json.loads(r.stdout).get("data", {}) if r.returncode == 0 else {}
        return data if data.get("tls.crt") and data.get("tls.key") else None
    node._wait("training-operator", secret_filled, 120, f"its certificate rotator to fill Secret {NAMESPACE}/{SECRET}")
    data = secret_filled()
    CERT_DIR.mkdir(parents=True, exist_ok=True)
    for key, value in data.items():
        f = CERT_DIR / key
        f.write_bytes(base64.b64decode(value))
        f.chmod(0o600)

    node._wait("training-operator", lambda: cpm.http_ok(f"http://{cpm.LOOPBACK}:{probe}/readyz"), 120, "its /readyz (webhook certificate made and served)")


def cleanup() -> None:
    shutil.rmtree(CERT_DIR.parent, ignore_errors=True)
