"""Training data and preprocessing: registry, sha1, row problems, pt blocks, SFT truncation, packing.

Packing is checked numerically: the packed forward pass (one row, position ids restarting per
sample, no mask) gives the same logits and loss as running each sample on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from devops_model.api.resource import parse_resource
from devops_model.contract import ExitCode
from devops_workloads import runner
from devops_workloads.templates import get_template
from devops_workloads.train import preprocess as pp
from devops_workloads.train.data import DataProblems, load_datasets, mix
from tests.plugins.train import make_resource


def _data_spec(datasets, registry=None, **kw):
    res = make_resource(spec={"data": {"datasets": datasets, **({"registry": registry} if registry else {}), **kw}})
    if registry is None:
        res.spec.data.registry = None
    return res.spec.data


def test_registry_reads_alpaca_with_history_and_sharegpt(train_storage):
    data = load_datasets(_data_spec([{"name": "devops_qa_alpaca"}, {"name": "devops_qa_sharegpt"}], "pvc://samples"), "sft")
    assert data.problems.total() == 0
    multi = [r for r in data.records if len(r["turns"]) > 1]
    assert len(multi) >= 5
    assert any(r["system"] for r in data.records)  # sharegpt system turns kept as the system prompt
    assert all(fp["verified"] for fp in data.fingerprints.values())
    assert data.fingerprints["devops_qa_alpaca"]["rows"] == 18


def test_alpaca_prompt_is_instruction_newline_input(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"instruction": "Explain", "input": "exit 137", "output": "OOM"}) + "\n")
    data = load_datasets(_data_spec([{"uri": f"file://{f}"}]), "sft")
    assert data.records[0]["turns"] == [("Explain\nexit 137", "OOM")]


def test_sha1_mismatch_fails_before_training(train_storage, tmp_path):
    info = train_storage / "samples" / "dataset_info.json"
    reg = json.loads(info.read_text())
    reg["devops_qa_alpaca"]["file_sha1"] = "0" * 40
    info.write_text(json.dumps(reg))
    res = make_resource()
    with pytest.raises(runner.WorkloadError) as err:
        runner.run_resource(res)
    assert err.value.reason == "BadData" and err.value.exit_code == ExitCode.BAD_INPUT
    assert "spec.data.datasets[0]" in str(err.value) and "expected 0000" in str(err.value)
    assert not (train_storage / "runs" / "t-sft").exists()  # nothing trained, nothing written


def test_sha1_on_a_plain_uri(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(runner.WorkloadError, match="sha1 of"):
        load_datasets(_data_spec([{"uri": f"file://{f}", "sha1": "1" * 40}]), "sft")


def test_stage_mismatch_is_an_error(train_storage):
    with pytest.raises(runner.WorkloadError, match="registered for stage 'pt', not 'sft'"):
        load_datasets(_data_spec([{"name": "devops_corpus"}], "pvc://samples"), "sft")


def test_row_problems_are_counted_not_raised(tmp_path):
    f = tmp_path / "rows.jsonl"
    rows = [
        json.dumps({"instruction": "ok", "output": "fine"}),
        json.dumps({"instruction": "no answer"}),
        json.dumps({"instruction": "number", "output": 42}),
        "{broken json",
        json.dumps({"instruction": "bad history", "output": "x", "history": "nope"}),
        json.dumps(["not", "an", "object"]),
    ]
    f.write_text("\n".join(rows) + "\n")
    g = tmp_path / "conv.jsonl"
    g.write_text("\n".join([
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "q only"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "a"}, {"from": "gpt", "value": "a"}]}),
    ]) + "\n")
    data = load_datasets(_data_spec([{"uri": f"file://{f}", "columns": {"history": "history"}}, {"uri": f"file://{g}"}]), "sft")
    assert len(data.records) == 2
    assert data.problems.counts == {
        "missing response": 2, "wrong type (int where text was expected)": 1, "invalid JSON line": 1,
        "history is not a list of [query, response] pairs": 1, "row is not an object": 1,
        "turns do not alternate user/assistant": 1,
    }
    assert data.problems.examples["invalid JSON line"] == ["rows.jsonl:rows.jsonl:4"]


def test_no_usable_rows_is_bad_data(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps({"instruction": "q"}) + "\n")
    with pytest.raises(runner.WorkloadError, match="no usable rows .*missing response: 1"):
        load_datasets(_data_spec([{"uri": f"file://{f}"}]), "sft")


def test_mix_strategies():
    a, b = [{"i": 1}, {"i": 2}, {"i": 3}], [{"i": 10}]
    assert [r["i"] for r in mix([a, b], "concat", 0)] == [1, 2, 3, 10]
    assert [r["i"] for r in mix([a, b], "interleaveUnder", 0)] == [1, 10]
    assert [r["i"] for r in mix([a, b], "interleaveOver", 0)] == [1, 10, 2, 10, 3, 10]


# --------------------------------------------------------------------------- pretraining


def test_pt_separator_is_endoftext_for_qwen2(qwen_tokenizer):
    assert pp.document_separator(qwen_tokenizer) == "<|endoftext|>"
    blocks = pp.build_pretrain_blocks(["hello world", "kubectl get pods"], qwen_tokenizer, block_size=4)
    flat = [t for b in blocks.blocks for t in b]
    assert 151643 in flat and 151645 not in flat  # <|endoftext|>, not the seed's accidental <|im_end|>


def test_pt_blocks_waste_only_the_final_tail(qwen_tokenizer):
    docs = [f"document {i} about kubernetes pods and services" for i in range(25)]
    blocks = pp.build_pretrain_blocks(docs, qwen_tokenizer, block_size=16, batch=4)  # many small batches
    assert all(len(b) == 16 for b in blocks.blocks)
    assert len(blocks.blocks) == blocks.tokens // 16 and blocks.dropped_tail == blocks.tokens % 16
    # the seed's per-batch cut would have lost up to 15 tokens in each of the 7 batches
    seed_blocks = sum((sum(len(qwen_tokenizer.encode(d)) + 1 for d in docs[i:i + 4]) // 16) for i in range(0, 25, 4))
    assert len(blocks.blocks) > seed_blocks


# --------------------------------------------------------------------------- SFT


def test_sft_truncates_history_first_and_keeps_the_final_turn(qwen_tokenizer):
    tpl = get_template("chatml")
    turns = [("old question " * 20, "old answer " * 20), ("mid", "mid answer"), ("final q", "final answer")]
    stats = pp.SFTStats()
    ex = pp.encode_sft({"turns": turns, "system": None}, qwen_tokenizer, tpl, max_length=80, stats=stats)
    text = qwen_tokenizer.decode(ex.input_ids)
    assert "final answer<|im_end|>" in text and "old question" not in text and "mid answer" in text
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")  # system prompt stays
    assert stats.history_truncated == 1 and stats.history_turns_dropped == 1 and stats.final_turn_truncated == 0
    assert len(ex.input_ids) <= 80


def test_sft_final_turn_too_long_is_cut_and_counted(qwen_tokenizer):
    tpl = get_template("chatml")
    stats = pp.SFTStats()
    ex = pp.encode_sft({"turns": [("q " * 200, "a " * 200)], "system": None}, qwen_tokenizer, tpl, max_length=64, stats=stats)
    assert len(ex.input_ids) == 64 and stats.final_turn_truncated == 1
    assert sum(l != -100 for l in ex.labels) >= 16  # a quarter at least stays trained
    assert qwen_tokenizer.decode(ex.input_ids).find("<|im_start|>assistant\n") > 0  # header kept


def test_label_mask_golden(qwen_tokenizer, golden):
    tpl = get_template("chatml")
    ex = pp.encode_sft({"turns": [("Q1", "A1"), ("Q2", "A2")], "system": "S"}, qwen_tokenizer, tpl, max_length=128)
    golden("label-mask-chatml", {
        "tokens": [qwen_tokenizer.decode([i]) for i in ex.input_ids],
        "trained": [l != -100 for l in ex.labels],
    })
    trained = qwen_tokenizer.decode([l for l in ex.labels if l != -100])
    assert trained == "A1<|im_end|>A2<|im_end|>"  # every assistant turn, nothing else


# --------------------------------------------------------------------------- packing


def test_pack_bins_fit():
    lengths = [50, 10, 70, 30, 90, 20, 5]
    bins = pp.pack(lengths, 100)
    assert sorted(i for b in bins for i in b) == list(range(7))
    assert all(sum(lengths[i] for i in b) <= 100 for b in bins)
    assert len(bins) == 3  # 275 tokens need at least 3 bins of 100


def _examples():
    g = torch.Generator().manual_seed(0)
    out = []
    for n, src in [(7, 3), (12, 5), (5, 2)]:
        ids = torch.randint(10, 2000, (n,), generator=g).tolist()
        out.append(pp.SFTExample(ids, [-100] * src + ids[src:]))
    return out


def test_packing_collator_golden(golden):
    ex = _examples()
    packed = pp.pack_examples(ex, capacity=64, seed=0)
    assert len(packed) == 1
    batch = pp.PackedCollator()(packed)
    golden("packing-collator", {k: v.tolist() for k, v in batch.items()})
    assert "attention_mask" not in batch  # no padding anywhere
    pos = batch["position_ids"][0].tolist()
    assert pos.count(0) == 3


def test_packed_forward_equals_unpacked(tiny_bpe):
    """No token attends across a packing boundary: logits and loss match separate forward passes."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bpe), dtype=torch.float32, attn_implementation="sdpa").eval()
    ex = _examples()
    packed = pp.pack_examples(ex, capacity=64, seed=0)[0]
    batch = pp.PackedCollator()([packed])
    with torch.no_grad():
        out = model(**batch, use_cache=False)
        start, losses, n_tok = 0, 0.0, 0
        for n in packed.lengths:
            ids = torch.tensor([packed.input_ids[start:start + n]])
            labels = torch.tensor([[-100] + packed.labels[start + 1:start + n]])
            single = model(input_ids=ids, labels=labels, use_cache=False)
            torch.testing.assert_close(out.logits[0, start:start + n], single.logits[0], atol=1e-4, rtol=1e-4)
            k = int((labels[0, 1:] != -100).sum())
            losses += single.loss.item() * k
            n_tok += k
            start += n
        assert out.loss.item() == pytest.approx(losses / n_tok, rel=1e-4)
        # and without the position ids the samples would see each other: the check can fail
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits
        assert not torch.allclose(leaky[0, packed.lengths[0]:], out.logits[0, packed.lengths[0]:], atol=1e-3)


def test_padded_collator_masks_padding():
    batch = pp.PaddedCollator(pad_id=0)(_examples()[:2])
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0] * 5
    assert batch["labels"][0, 7:].tolist() == [-100] * 5


# --------------------------------------------------------------------------- sample data and examples


def test_install_copies_the_sample_tree(tmp_path):
    from devops_workloads.sample_data import ROOT, install

    dest = install(tmp_path)
    for f in ROOT.rglob("*"):
        if f.is_file() and f.name != "__init__.py" and "__pycache__" not in f.parts:
            assert (dest / f.relative_to(ROOT)).read_bytes() == f.read_bytes()


@pytest.mark.parametrize("name", ["pretrain", "sft-lora", "sft-full"])
def test_examples_parse_and_their_data_verifies(name, train_storage):
    from devops_model.api.resource import load_documents

    path = Path(__file__).resolve().parents[2] / "examples" / "local" / f"{name}.yaml"
    res = parse_resource(load_documents(path)[0], str(path))
    stage = "pt" if res.kind == "PretrainRun" else "sft"
    data = load_datasets(res.spec.data, stage)
    assert data.problems.total() == 0 and all(fp["verified"] for fp in data.fingerprints.values())
    if name == "sft-lora":
        assert res.spec.model.from_run.kind == "PretrainRun" and res.spec.finetuning.lora.merge


def test_selective_head_loss_and_gradients_equal_the_full_head(tiny_bpe):
    """The LM head only at trained positions: same loss and gradients as the plain forward pass."""
    from transformers import AutoModelForCausalLM

    from devops_workloads.train.selective_loss import selective_lm_loss

    model = AutoModelForCausalLM.from_pretrained(str(tiny_bpe), dtype=torch.float32)
    for batch in [pp.PackedCollator()(pp.pack_examples(_examples(), 64, 0)), pp.PaddedCollator(0)(_examples())]:
        model.zero_grad()
        full = model(**batch).loss
        full.backward()
        ref = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        loss, out = selective_lm_loss(model, batch, fuse=False)
        loss.backward()
        assert loss.item() == pytest.approx(full.item(), rel=1e-5)
        assert out.logits.shape[0] == int((batch["labels"][:, 1:] != -100).sum())  # only trained rows projected
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-4)
