"""Templates: the seed's chatml and default exactly (SEED_SPEC §1c), and auto = the tokenizer's own.

Goldens of rendered text, token ids and label masks on the real Qwen tokenizer live in
tests/golden/train/template-*.json (``--update-golden`` rewrites them).
"""

from __future__ import annotations

import pytest

from devops_workloads.templates import get_template

TURNS = [("什么是 Pod？", "Pod 是最小的部署单元。"), ("How do I list pods?", "kubectl get pods")]


def test_chatml_text_is_the_seeds():
    pairs = get_template("chatml").render_text([("Q", "A"), ("Q2", "A2")])
    assert pairs[0][0] == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                           "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")
    # a later turn starts with the separator, and there is no <|endoftext|> anywhere
    assert pairs[1][0] == "\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    assert "<|endoftext|>" not in "".join(s + t for s, t in pairs)


def test_default_text_is_the_seeds():
    pairs = get_template("default").render_text([("Q", "A"), ("Q2", "A2")], system="SYS")
    assert pairs[0][0] == "SYS\nHuman: Q\nAssistant: "
    assert pairs[1][0] == "\nHuman: Q2\nAssistant: "
    seed_system = ("A chat between a curious user and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the user's questions.")
    assert get_template("default").render_text([("Q", "A")])[0][0].startswith(seed_system + "\nHuman: ")


@pytest.mark.parametrize("name", ["chatml", "default", "auto"])
def test_token_and_label_golden(name, qwen_tokenizer, golden):
    tpl = get_template(name)
    pairs = tpl.encode_multiturn(qwen_tokenizer, TURNS, system=None)
    ids = [i for s, t in pairs for i in s + t]
    labels = [l for s, t in pairs for l in [-100] * len(s) + t]
    golden(f"template-{name}", {
        "text": qwen_tokenizer.decode(ids),
        "trained_text": [qwen_tokenizer.decode(t) for _, t in pairs],
        "input_ids": ids,
        "labels": labels,
    })
    # every assistant turn is trained and ends with the template's eos
    eos = qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for _, tgt in pairs:
        assert eos in tgt


def test_chatml_ids_are_the_pieces_tokenized_separately(qwen_tokenizer):
    """Seed: each piece is encoded on its own; special tokens by id (151644/151645 in Qwen2)."""
    (src, tgt), = get_template("chatml").encode_multiturn(qwen_tokenizer, [("Q", "A")])
    enc = lambda s: qwen_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    assert src == [151644] + enc("system\nYou are a helpful assistant.") + [151645] + enc("\n") + \
        [151644] + enc("user\nQ") + [151645] + enc("\n") + [151644] + enc("assistant\n")
    assert tgt == enc("A") + [151645]


def test_default_eos_is_the_tokenizers(qwen_tokenizer):
    (_, tgt), = get_template("default").encode_multiturn(qwen_tokenizer, [("Q", "A")])
    assert tgt[-1] == qwen_tokenizer.eos_token_id


def test_auto_matches_the_tokenizer_chat_template(qwen_tokenizer):
    pairs = get_template("auto").encode_multiturn(qwen_tokenizer, TURNS, system="S")
    ids = [i for s, t in pairs for i in s + t]
    msgs = [{"role": "system", "content": "S"}]
    for q, a in TURNS:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    assert qwen_tokenizer.decode(ids) == qwen_tokenizer.apply_chat_template(msgs, tokenize=False)


def test_render_prompt_for_generation(qwen_tokenizer):
    tpl = get_template("chatml")
    assert tpl.render_prompt([("Q", "A")], "Q2") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
        "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")
    assert tpl.stop_words == ("<|im_end|>",)
    auto = get_template("auto").render_prompt([], "Q", tokenizer=qwen_tokenizer)
    assert auto.endswith("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


def test_unknown_template_names_the_choices():
    with pytest.raises(ValueError, match="chatml, default, auto"):
        get_template("alpaca")
