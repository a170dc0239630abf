"""Fixtures that build the tiny Qwen2 models once per test session (offline, seconds)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DEVOPS_MODEL_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """A tiny Qwen2 model with the real Qwen tokenizer (151k vocab). Path to the model folder."""
    from devops_workloads.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen") / "model", "qwen", seed=0)


@pytest.fixture(scope="session")
def tiny_bpe(tmp_path_factory):
    """A tiny Qwen2 model with a small byte-level BPE tokenizer (fast). Path to the model folder."""
    from devops_workloads.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-bpe") / "model", "bpe", seed=0)


@pytest.fixture
def local_home(tmp_path, monkeypatch):
    """Isolated DEVOPS_MODEL_HOME and DEVOPS_MODEL_STORAGE for one test."""
    monkeypatch.setenv("DEVOPS_MODEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path / "storage"))
    return tmp_path
