"""The lineage and gate rules (devops_model.lineage), written once, against both of their backings
with one table: the local run registry (what `devops-model run` records) and a real API server
(what the operator reads, through devops_operator.kube.Kube and the chart's CRDs).

    .venv/bin/python -m pytest tests/cluster/test_lineage.py -q
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devops_model.api import API_VERSION
from devops_model.contract import Reason
from devops_model.lineage import ParentState, check_gate, lineage_chain, resolve_parent

REPO = Path(__file__).resolve().parents[2]

BASE = "hf://Qwen/Qwen2.5-0.5B"
ART = {"uri": "pvc://models/sft/adapter", "mergedUri": "pvc://models/sft/merged", "format": "hf-lora"}


def run(kind: str, name: str, model: dict, status: dict | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": model}
    if kind in ("PretrainRun", "SFTRun"):
        spec.update(data={"datasets": [{"uri": "pvc://d/x.jsonl"}]}, output={"uri": f"pvc://models/{name}"},
                    training={"maxSteps": 5}, launcher="Job")
    elif kind == "EvalRun":
        spec.update(exams={"uri": "pvc://d/exams"})
    elif kind == "QuantizeRun":
        spec.update(output={"uri": f"pvc://models/{name}"})
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec,
            "status": status or {}}


def scores(*rows: tuple[int, str, float]) -> dict:
    return {"overall": [{"shots": s, "style": st, "correct": int(a * 100), "total": 100, "accuracy": a}
                        for s, st, a in rows]}


PT = run("PretrainRun", "pt", {"uri": BASE}, {"state": "Succeeded", "artifact": {"uri": "pvc://models/pt", "format": "hf-full"}})
SFT_OK = run("SFTRun", "sft", {"fromRun": {"kind": "PretrainRun", "name": "pt"}}, {"state": "Succeeded", "artifact": ART})
SFT_RUNNING = run("SFTRun", "sft", {"fromRun": {"kind": "PretrainRun", "name": "pt"}},
                  {"state": "Running", "progress": {"step": 3, "totalSteps": 10}})
SFT_FAILED = run("SFTRun", "sft", {"fromRun": {"kind": "PretrainRun", "name": "pt"}}, {"state": "Failed", "message": "OOM"})
EVAL = run("EvalRun", "ev", {"fromRun": {"kind": "SFTRun", "name": "sft"}},
           {"state": "Succeeded", "scores": scores((0, "base", 0.4), (0, "chat", 0.6), (5, "base", 0.7))})
LOOP_A = run("SFTRun", "a", {"fromRun": {"kind": "SFTRun", "name": "b"}})
LOOP_B = run("SFTRun", "b", {"fromRun": {"kind": "SFTRun", "name": "a"}})

# (id, runs in the store, consumer kind/name/model, expected parent state, expected uri)
PARENTS = [
    ("uri-no-parent", [], ("SFTRun", "x", {"uri": BASE}), ParentState.NONE, BASE),
    ("missing", [], ("SFTRun", "x", {"fromRun": {"kind": "PretrainRun", "name": "pt"}}), ParentState.MISSING, None),
    ("waiting", [PT, SFT_RUNNING], ("EvalRun", "x", {"fromRun": {"kind": "SFTRun", "name": "sft"}}), ParentState.WAITING, None),
    ("failed", [PT, SFT_FAILED], ("EvalRun", "x", {"fromRun": {"kind": "SFTRun", "name": "sft"}}), ParentState.FAILED, None),
    ("eval-takes-merged", [PT, SFT_OK], ("EvalRun", "x", {"fromRun": {"kind": "SFTRun", "name": "sft"}}),
     ParentState.RESOLVED, ART["mergedUri"]),
    ("sft-takes-adapter", [PT, SFT_OK], ("SFTRun", "y", {"fromRun": {"kind": "SFTRun", "name": "sft"}}),
     ParentState.RESOLVED, ART["uri"]),
    ("self", [], ("SFTRun", "me", {"fromRun": {"kind": "SFTRun", "name": "me"}}), ParentState.CYCLE, None),
    ("two-cycle", [LOOP_B], ("SFTRun", "a", {"fromRun": {"kind": "SFTRun", "name": "b"}}), ParentState.CYCLE, None),
]

# (id, runs, gate, expected reason, expected message part)
GATES = [
    ("no-gate", [], None, None, ""),
    ("eval-missing", [], {"evalRun": "ev", "minAccuracy": "0.5", "shots": 0}, Reason.WAITING_FOR_GATE, "does not exist"),
    ("best-style-passes", [PT, SFT_OK, EVAL], {"evalRun": "ev", "minAccuracy": "0.55", "shots": 0}, None, "0.600 at 0 shots (chat)"),
    ("below", [PT, SFT_OK, EVAL], {"evalRun": "ev", "minAccuracy": "0.75", "shots": 5}, Reason.GATE_NOT_MET, "below spec.gate.minAccuracy 0.75"),
    ("no-such-shots", [PT, SFT_OK, EVAL], {"evalRun": "ev", "minAccuracy": "0.1", "shots": 3}, Reason.GATE_NOT_MET, "no overall score at 3 shots"),
]


class LocalBacking:
    """The local run registry under a temporary DEVOPS_MODEL_HOME."""

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setenv("DEVOPS_MODEL_HOME", str(home))

    def load(self, runs: list[dict]) -> Any:
        from devops_model.registry import LocalRegistry, write_entry

        for r in runs:
            write_entry({k: v for k, v in r.items() if k != "status"}, r["status"])
        return LocalRegistry()


class ClusterBacking:
    """A namespace of the real API server, runs created with kubectl and their status patched."""

    def __init__(self, cp: Any, ns: str):
        from devops_operator.kube import Kube, load_api_client

        self.cp, self.ns = cp, ns
        self.kube = Kube(load_api_client(str(cp.kubeconfig)))

    def load(self, runs: list[dict]) -> Any:
        from devops_operator.reconcile.common import KubeRunStore

        for r in runs:
            body = {k: v for k, v in r.items() if k != "status"}
            body = {**body, "metadata": {**body["metadata"], "namespace": self.ns}}
            self.cp.apply(body, self.ns)
            if r["status"]:
                self.kube.patch_status(API_VERSION, r["kind"], self.ns, r["metadata"]["name"], r["status"])
        return KubeRunStore(self.kube, self.ns)


@pytest.fixture(scope="module")
def crds_installed(control_plane):
    control_plane.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    return control_plane


@pytest.fixture(params=["local", "cluster"])
def backing(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalBacking(tmp_path / "home", monkeypatch)
    cp = request.getfixturevalue("crds_installed")
    ns = cp.namespace("lineage")
    request.addfinalizer(lambda: cp.delete_namespace(ns))
    return ClusterBacking(cp, ns)


@pytest.mark.parametrize("case", PARENTS, ids=[c[0] for c in PARENTS])
def test_parent_resolution_is_the_same_on_both_backings(backing, case):
    _, runs, (kind, name, model), want_state, want_uri = case
    store = backing.load(runs)
    parent = resolve_parent(kind, name, model, store)
    assert parent.state == want_state, parent.message
    assert parent.uri == want_uri
    if want_state == ParentState.CYCLE:
        assert f"{kind}/{name}" in parent.message and "cycle" in parent.message


@pytest.mark.parametrize("case", GATES, ids=[c[0] for c in GATES])
def test_the_gate_is_the_same_on_both_backings(backing, case):
    _, runs, gate, want_reason, want_text = case
    result = check_gate(gate, backing.load(runs))
    assert result.reason == want_reason and want_text in result.message


def test_the_chain_names_the_base_model_first_on_both_backings(backing):
    store = backing.load([PT, SFT_OK])
    int4 = run("QuantizeRun", "int4", {"fromRun": {"kind": "SFTRun", "name": "sft"}})
    assert lineage_chain(int4, store) == [BASE, "PretrainRun/pt", "SFTRun/sft"]
