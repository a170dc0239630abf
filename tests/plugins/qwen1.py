"""Fixtures for first-generation Qwen: the reference environment (Qwen-1's released code under
transformers 4.32) and tiny Qwen-1 folders drawn by that code, as a user downloads them.

The reference environment is built by uv from its cache on first use
(``devops_workloads.models.reference_env``); the released code comes from ``../shared/seed/qwen1``.
Either missing is a failure, never a skip: these tests are the proof of the conversion.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

#: The one-turn question whose greedy chat the tiny Qwen-1-Chat ends with <|im_end|> (3 tokens).
STOP_QUERY = "Kubernetes 中 Deployment 和 StatefulSet 有什么区别？"


@pytest.fixture(scope="session")
def qwen1_reference_python() -> Path:
    from devops_workloads.models.reference_env import ReferenceUnavailable, ensure_reference_python, seed_qwen1_code

    try:
        seed_qwen1_code()
        return ensure_reference_python(log=lambda m: print(m, file=sys.stderr))
    except ReferenceUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def tiny_qwen1_chat(qwen1_reference_python, tmp_path_factory) -> Path:
    """A tiny Qwen-1-Chat folder (remote code, qwen.tiktoken, Qwen-7B-Chat's generation config)."""
    from devops_workloads.tiny import build_tiny_qwen1

    return build_tiny_qwen1(tmp_path_factory.mktemp("qwen1") / "tiny-qwen1-chat", "chat", seed=0, stop_query=STOP_QUERY)


@pytest.fixture(scope="session")
def tiny_qwen25_base(tmp_path_factory) -> Path:
    """A tiny model like Qwen2.5-7B (base): eos <|endoftext|>, Qwen2.5's chat template and system prompt."""
    from devops_workloads.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("qwen25") / "tiny-qwen2.5-base", like="qwen2.5-base")


def _digest(folder: Path, requests: list) -> str:
    """What the reference's answers depend on: the folder's files, the requests, the pins and the script."""
    import hashlib
    import json

    from devops_workloads.models.reference_env import REFERENCE_PINS, SCRIPT

    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(p.name.encode() + b"\0")
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    h.update(json.dumps(requests, ensure_ascii=False, sort_keys=True).encode())
    h.update("\n".join(REFERENCE_PINS).encode() + SCRIPT.read_bytes())
    return h.hexdigest()


def reference_answers(folder: Path, requests: list, python: Path, work: Path) -> list:
    """The reference's answers to ``requests`` on ``folder``, cached by content digest in
    ``~/.cache/devops-model/qwen1-ref-answers/`` (the original code is slow on a busy machine; the
    same bytes in give the same answers, so a second run reads them back)."""
    import json
    import shutil

    from devops_workloads.models.reference_env import run_reference

    cache = Path.home() / ".cache" / "devops-model" / "qwen1-ref-answers" / _digest(folder, requests)[:24]
    if not (cache / "results.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        (work / "requests.json").write_text(json.dumps(requests, ensure_ascii=False))
        run_reference(["run", str(folder), str(work / "requests.json"), str(work / "results.json")], python=python)
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in work.glob("results*"):
            shutil.copyfile(f, tmp / f.name)
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    results = json.loads((cache / "results.json").read_text())
    for r in results:
        if "file" in r:
            r["file"] = str(cache / Path(r["file"]).name)
    return results
