"""Fixtures for the training tests: sample data and the tiny models on local pvc:// storage, a
resource builder, and a golden-file checker (``--update-golden`` rewrites them)."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

GOLDEN_TRAIN = Path(__file__).resolve().parents[1] / "golden" / "train"


@pytest.fixture
def train_storage(local_home, tiny_bpe):
    """DEVOPS_MODEL_STORAGE with samples/ (the bundled data) and models/tiny-bpe; returns the root."""
    from devops_workloads.sample_data import install

    root = Path(os.environ["DEVOPS_MODEL_STORAGE"])
    install(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    os.symlink(tiny_bpe, root / "models" / "tiny-bpe")
    return root


#: A small, fast SFT run on tiny-bpe (a few steps); tests override what they need.
BASE_SFT = {
    "apiVersion": "devops-model.io/v1alpha1",
    "kind": "SFTRun",
    "metadata": {"name": "t-sft"},
    "spec": {
        "model": {"uri": "pvc://models/tiny-bpe"},
        "data": {"registry": "pvc://samples", "datasets": [{"name": "devops_qa_alpaca"}, {"name": "devops_qa_sharegpt"}]},
        "training": {"learningRate": "3e-3", "maxSteps": 12, "perDeviceBatchSize": 2, "maxLength": 256,
                     "precision": "fp32", "gradientCheckpointing": False, "saveSteps": 100, "loggingSteps": 1,
                     "warmupRatio": "0", "lrScheduler": "constant"},
        "finetuning": {"type": "full"},
        "launcher": "Job",
        "output": {"uri": "pvc://runs/t-sft"},
    },
}
BASE_PT = {
    **copy.deepcopy(BASE_SFT),
    "kind": "PretrainRun",
    "metadata": {"name": "t-pt"},
}
BASE_PT["spec"]["data"] = {"registry": "pvc://samples", "datasets": [{"name": "devops_corpus"}]}
BASE_PT["spec"]["training"]["maxLength"] = 64
BASE_PT["spec"]["output"] = {"uri": "pvc://runs/t-pt"}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def make_resource(kind: str = "SFTRun", **over: Any):
    """A typed PretrainRun/SFTRun from the base above with nested overrides (camelCase keys)."""
    from devops_model.api.resource import parse_resource

    return parse_resource(merge(BASE_SFT if kind == "SFTRun" else BASE_PT, over), "test")


def check_golden(request, name: str, value: Any) -> None:
    """Compare ``value`` (JSON-able) with tests/golden/train/<name>.json."""
    text = json.dumps(value, indent=1, ensure_ascii=False) + "\n"
    path = GOLDEN_TRAIN / f"{name}.json"
    update = request.config.getoption("--update-golden")
    if update or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not update:
            pytest.fail(f"{path} did not exist; written now, review and commit it")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from {path} (run with --update-golden to accept)"


@pytest.fixture
def golden(request):
    return lambda name, value: check_golden(request, name, value)


@pytest.fixture(scope="session")
def qwen_tokenizer(tiny_qwen):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_qwen))


__all__ = ["make_resource", "merge", "BASE_SFT", "BASE_PT", "shutil"]
