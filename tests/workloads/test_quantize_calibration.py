"""Calibration data for GPTQ: row shapes, chat template, length limits, registry names, held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devops_workloads.quantize.calibration import (
    build_calibration,
    collect_texts,
    read_text_uri,
    resolve_datasets,
    row_to_messages,
)
from devops_workloads.runner import WorkloadError


@pytest.fixture(scope="module")
def tok(tiny_bpe):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bpe)


@pytest.mark.parametrize(
    "row, fmt, columns, want",
    [
        pytest.param({"instruction": "什么是 Pod？", "input": "简要回答", "output": "最小的调度单位。"}, "auto", {},
                     [{"role": "user", "content": "什么是 Pod？\n简要回答"}, {"role": "assistant", "content": "最小的调度单位。"}],
                     id="alpaca-prompt-newline-query"),
        pytest.param({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "auto", {},
                     [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], id="sharegpt-from-value"),
        pytest.param({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, "sharegpt", {},
                     [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], id="openai-messages"),
        pytest.param({"q": "why", "a": "because", "h": [["a", "b"]]}, "alpaca",
                     {"prompt": "q", "response": "a", "history": "h", "query": ""},
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "why"}, {"role": "assistant", "content": "because"}], id="mapped-columns-history"),
        pytest.param({"text": "kubectl get pods"}, "auto", {}, "kubectl get pods", id="text-row"),
        pytest.param("a txt paragraph", "auto", {}, "a txt paragraph", id="txt-paragraph"),
        pytest.param({"instruction": "", "output": ""}, "alpaca", {}, None, id="empty-row-dropped"),
    ],
)
def test_row_shapes(row, fmt, columns, want):
    assert row_to_messages(row, fmt, columns) == want


def test_chat_template_applied_and_length_limits(tmp_path, tok):
    f = tmp_path / "d.jsonl"
    rows = [{"instruction": f"问题 {i}：如何查看 Pod 日志？" + " 详细" * (i % 7), "output": "kubectl logs POD"} for i in range(40)]
    rows.append({"instruction": "短", "output": ""})
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    sources = resolve_datasets([{"uri": f.as_uri()}], None, "spec.calibration")
    texts = collect_texts(sources, tok, True, "spec.calibration")
    assert texts[0].startswith("<|im_start|>")  # rendered with the chat template
    assert "<|im_start|>assistant\nkubectl logs POD" in texts[0]
    plain = collect_texts(sources, tok, False, "spec.calibration")
    assert not plain[0].startswith("<|im_start|>")

    cal = build_calibration(texts, tok, samples=8, min_length=20, max_length=24, heldout=5, field="spec.calibration")
    assert len(cal.samples) == 8 and all(len(s) <= 24 for s in cal.samples)
    assert len(cal.heldout) == 5
    # held-out rows are disjoint from the calibration rows
    cal_texts = {tok.decode(s) for s in cal.samples}
    assert not any(h in cal_texts for h in cal.heldout)
    with pytest.raises(WorkloadError, match="minLength=100000"):
        build_calibration(texts, tok, samples=8, min_length=100000, max_length=10, heldout=0, field="spec.calibration")


def test_registry_names_and_sha1(tmp_path, tok):
    import hashlib

    data = tmp_path / "reg" / "ops.json"
    data.parent.mkdir()
    data.write_text(json.dumps([{"prompt_col": "Q", "answer": "A"}]))
    sha = hashlib.sha1(data.read_bytes()).hexdigest()
    (tmp_path / "reg" / "dataset_info.json").write_text(json.dumps(
        {"ops": {"file_name": "ops.json", "file_sha1": sha, "columns": {"prompt": "prompt_col", "response": "answer"}}}))
    reg = (tmp_path / "reg").as_uri()
    (src,) = resolve_datasets([{"name": "ops"}], reg, "spec.calibration")
    assert src.path == data and src.columns["prompt"] == "prompt_col"
    assert "A" in collect_texts([src], tok, False, "spec.calibration")[0]
    with pytest.raises(WorkloadError, match=r"spec.calibration.datasets\[0\].name: 'nope' is not in .*known: ops"):
        resolve_datasets([{"name": "nope"}], reg, "spec.calibration")
    src.sha1 = "0" * 40
    with pytest.raises(WorkloadError, match="SHA-1"):
        collect_texts([src], tok, False, "spec.calibration")


def test_perplexity_text_from_txt(tmp_path):
    f = tmp_path / "held.txt"
    f.write_text("first paragraph\nstill first\n\nsecond paragraph\n")
    assert read_text_uri(f.as_uri(), "spec.verification.perplexityText") == ["first paragraph\nstill first", "second paragraph"]
    with pytest.raises(WorkloadError, match="spec.verification.perplexityText: .*not found"):
        read_text_uri((tmp_path / "none.txt").as_uri(), "spec.verification.perplexityText")
