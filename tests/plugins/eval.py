"""Fixtures for the exam evaluation tests: the seed's exams, small subsets of them, the sample exam.

The seed's six exams (CMMLU test + dev, C-Eval val + dev; CC BY-NC-SA 4.0, see
``../shared/data/exams/README.md`` for provenance and attribution) live in the shared folder
beside the repository; they are read there, never copied into the repository. In CI (CI=true) a
missing shared folder is a failure, elsewhere a skip that says where it should be.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_EXAMS = REPO.parent / "shared" / "data" / "exams"
SHARED_PROMPTS = REPO.parent / "shared" / "seed" / "prompt_examples.txt"
SAMPLE_EXAMS = REPO / "workloads" / "devops_workloads" / "sample_data" / "exams"


def _need(path: Path) -> Path:
    if not path.exists():
        msg = f"{path} is missing: the seed's exams come from the shared folder beside the repository (../shared)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def seed_exams() -> Path:
    """Root of the seed's six exams (``../shared/data/exams``)."""
    return _need(SHARED_EXAMS)


@pytest.fixture(scope="session")
def seed_prompt_examples() -> str:
    """The seed's rendered prompts (``../shared/seed/prompt_examples.txt``)."""
    return _need(SHARED_PROMPTS).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def sample_exams() -> Path:
    """The bundled sample exam (CMMLU layout, 2 subjects × 20 questions + 5 dev)."""
    return SAMPLE_EXAMS


def copy_exam_subset(src_root: Path, dst_root: Path, exams: dict[str, int]) -> Path:
    """Copy the first N scored rows of each ``{"bench/subject": N}`` and its whole dev file,
    keeping each file's header style and line endings (C-Eval's are CRLF)."""
    for name, n in exams.items():
        bench, subject = name.split("/")
        for split in ("test", "val", "dev"):
            src = src_root / bench / split / f"{subject}.csv"
            if not src.exists():
                continue
            raw = src.read_bytes()
            eol = "\r\n" if b"\r\n" in raw else "\n"
            with open(src, encoding="utf-8", newline="") as fh:
                rows = list(csv.reader(fh))
            keep = rows if split == "dev" else rows[: n + 1]
            dst = dst_root / bench / split / f"{subject}.csv"
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(dst, "w", encoding="utf-8", newline="") as fh:
                csv.writer(fh, lineterminator=eol).writerows(keep)
    return dst_root


@pytest.fixture(scope="session")
def seed_exam_subset(seed_exams, tmp_path_factory) -> Path:
    """The first rows of one CMMLU and one C-Eval exam (both header styles), with full dev files:
    enough to compare the fast and plain paths on real prompts in seconds."""
    return copy_exam_subset(seed_exams, tmp_path_factory.mktemp("exam-subset"),
                            {"cmmlu/computer_science": 5, "ceval/computer_network": 5})


@pytest.fixture(autouse=True)
def eval_token_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own, empty cache of tokenized exams (evaluate/tokcache.py) instead of
    the user's ~/.cache: a test sees the cache only when it runs an evaluation twice itself."""
    path = tmp_path_factory.mktemp("eval-tokens")
    monkeypatch.setenv("DEVOPS_MODEL_EVAL_TOKEN_CACHE", str(path))
    return path
