"""The seed's own checkpoints (first-generation Qwen) against Qwen-1's released code.

A tiny Qwen-1-Chat folder is drawn by the original code in the reference environment
(transformers 4.32, tiktoken; ``tests/plugins/qwen1.py``) and answered there once: token ids,
logits, the seed's exam predictions, ``make_context`` and ``model.chat``. The same folder, as
downloaded, then goes through this project's stages, which convert it on load.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.plugins.qwen1 import STOP_QUERY, reference_answers
from tests.plugins.serve import cli

REPO = Path(__file__).resolve().parents[2]
SAMPLE_SFT = REPO / "workloads" / "devops_workloads" / "sample_data" / "sft"

HARD_STRINGS = [
    "Hello, 世界! こんにちは 안녕하세요 Привет мир مرحبا بالعالم שלום नमस्ते ไทย Ελληνικά",
    "emoji 😀🎉✅ 👩‍👩‍👧‍👦 🇨🇳🇺🇸 🧑🏽‍💻 ❤️‍🔥",
    "a" + " " * 37 + "b\n\n\n\t\t  \r\n  \n",
    "\n" * 20 + " " * 100 + "\t" * 9 + "end   ",
    "def f(x):\n\tif x:\n\t\treturn {'k': [1, 2, 3]}  # comment\n    return None\n",
    "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n        - name: app\n",
    "kubectl get pods -n kube-system | grep -v Running | awk '{print $1}' && echo \"done\" > /tmp/x.log 2>&1",
    '{"a": 1, "b": [true, false, null], "c": "\\u4e2d\\u6587"}',
    "e\u0301 A\u030a \u1112\u1161\u11ab Å é 한 ﬁ ① ｆｕｌｌｗｉｄｔｈ",  # NFC: decomposed forms compose
    "1234567890 3.14159 0x1F 1e-5 2026-12-01T07:00:00Z v1.28.3 ¥100 €5",
    "I'm, you're, it's, WE'LL, they'd, She'S, 'tis",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|><|extra_0|><|extra_204|>",
    "=" * 500 + "ab" * 300,
    "以下是关于开发运维领域的单项选择题，请选出其中的正确答案。请直接输出选项。\n问题：？？？……——“引号”「」\n答案：",
]


def _sft_texts() -> list[str]:
    out = []
    for row in json.loads((SAMPLE_SFT / "devops_qa_alpaca.json").read_text(encoding="utf-8")):
        out += [v for v in (row.get("instruction"), row.get("input"), row.get("output")) if v]
    for line in (SAMPLE_SFT / "devops_qa_sharegpt.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            out += [m["value"] for m in json.loads(line)["conversations"]]
    return out


def _exam_prompts(seed_exams: Path) -> list[dict]:
    from devops_workloads.evaluate.exams import load_exams
    from devops_workloads.evaluate.prompts import render_query

    out = []
    for exam in load_exams(seed_exams, preset="devops-574", max_shots=5):
        for shots in (0, 5):
            for q in exam.questions:
                out.append({"exam": exam.name, "index": q.index, "shots": shots,
                            "query": render_query(q, exam.dev[:shots]), "letters": list(q.options)})
    return out


HISTORY = [(f"第 {i} 个问题：如何排查 Pod 一直处于 Pending 状态？请详细说明步骤 {i}。",
            f"回答 {i}：先用 kubectl describe pod 查看 Events，再检查节点资源、污点与亲和性设置。") for i in range(8)]
WINDOW = 200  # tokens: keeps only the newest few of the eight turns


@pytest.fixture(scope="module")
def reference(tiny_qwen1_chat, seed_exams, qwen1_reference_python, tmp_path_factory):
    """What Qwen-1's released code does with the tiny folder: one run of the reference."""
    exams = _exam_prompts(seed_exams)
    firsts = [p for p in exams if p["index"] == min(x["index"] for x in exams if x["exam"] == p["exam"])]
    texts = [p["query"] for p in exams] + _sft_texts() + HARD_STRINGS
    requests = [
        {"op": "tokenize", "texts": texts},
        {"op": "logits", "texts": [p["query"] for p in firsts], "vocab_stride": 7},
        {"op": "exam", "queries": [p["query"] for p in exams], "letters": [p["letters"] for p in exams]},
        {"op": "chat", "query": STOP_QUERY, "history": [], "max_new_tokens": 16},
        {"op": "chat", "query": "那 DaemonSet 呢？", "history": HISTORY, "max_new_tokens": 2, "max_window_size": WINDOW},
    ]
    results = reference_answers(tiny_qwen1_chat, requests, qwen1_reference_python, tmp_path_factory.mktemp("qwen1-ref"))
    return {"texts": texts, "exams": exams, "firsts": firsts, "tokenize": results[0], "logits": results[1],
            "exam": results[2], "chat": results[3], "chat_history": results[4]}


@pytest.fixture(scope="module")
def converted(tiny_qwen1_chat):
    from devops_workloads.models import prepare_model_dir

    return prepare_model_dir(tiny_qwen1_chat)


@pytest.fixture(scope="module")
def converted_tokenizer(converted):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(converted))


def test_token_ids_equal_qwen_tiktoken_on_the_574_exam_prompts_sft_data_and_hard_strings(reference, converted_tokenizer):
    texts, expected = reference["texts"], reference["tokenize"]["ids"]
    assert len(reference["exams"]) == 2 * 574
    mine = [converted_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    wrong = [(t[:60], e[:12], m[:12]) for t, e, m in zip(texts, expected, mine) if e != m]
    assert not wrong, f"{len(wrong)} of {len(texts)} texts tokenize differently, e.g. {wrong[:3]}"
    # and back: decoding gives the NFC text (Qwen-1 normalises before encoding)
    import unicodedata

    for t, ids in zip(HARD_STRINGS, expected[-len(HARD_STRINGS):]):
        assert converted_tokenizer.decode(ids) == unicodedata.normalize("NFC", t)


def test_converted_logits_equal_the_original_code_within_1e_4_in_fp32(reference, converted, converted_tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(converted), dtype=torch.float32).eval()
    expected = torch.load(reference["logits"]["file"])
    assert len(expected) == 12  # the first question of each of the six exams, 0- and 5-shot
    worst = 0.0
    with torch.no_grad():
        for p, ref in zip(reference["firsts"], expected):
            ids = converted_tokenizer.encode(p["query"], add_special_tokens=False)
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            worst = max(worst, (logits[:, ::7] - ref["sub"]).abs().max().item(), (logits[-1] - ref["last"]).abs().max().item())
            assert ref["sub"].shape == logits[:, ::7].shape
    assert worst < 1e-4, f"largest logit difference {worst:.2e}"
    assert expected[0]["last"].abs().max().item() > 0.1  # a model whose logits say something


def test_eval_of_the_folder_as_downloaded_predicts_what_the_seeds_method_predicts_with_the_original_code(
        reference, tiny_qwen1_chat, converted, seed_exams, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([*cli(), "eval", "--model", str(tiny_qwen1_chat), "--exams", str(seed_exams),
                           "--preset", "devops-574", "--shots", "0,5", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = {(p["exam"], p["index"], p["shots"]): p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert len(preds) == 1148
    expected = {(p["exam"], p["index"], p["shots"]): (pred, scores) for p, pred, scores in
                zip(reference["exams"], reference["exam"]["predictions"], reference["exam"]["scores"])}
    differ = [k for k, (pred, _) in expected.items() if preds[k]["prediction"] != pred]
    assert not differ, f"{len(differ)} of 1148 predictions differ from the original code's, e.g. {differ[:3]}"
    letters = {(p["exam"], p["index"], p["shots"]): p["letters"] for p in reference["exams"]}
    worst = max(abs(preds[k]["logits"][x] - s) for k, (_, scores) in expected.items() for x, s in zip(letters[k], scores))
    assert worst < 1e-4
    # the conversion was the cached one, recorded with digests
    record = json.loads((converted / "conversion.json").read_text())
    assert record["from"]["files"]["model.safetensors"] and record["to"]["files"]["model.safetensors"]


def test_serving_the_folder_builds_make_context_and_stops_at_im_end(reference, tiny_qwen1_chat, converted,
                                                                    converted_tokenizer, start_server):
    import httpx

    chat = reference["chat"]
    # Qwen-1's generate forces <|endoftext|> after a stop word; the answer ends at <|im_end|>
    assert 151645 in chat["generated"][:5], "the fixture's chat must end with <|im_end|> (tests/plugins/qwen1.py)"
    answer_ids = chat["generated"][: chat["generated"].index(151645) + 1]
    # the server's prompt is Qwen-1's make_context, token for token
    text = converted_tokenizer.apply_chat_template([{"role": "user", "content": STOP_QUERY}], tokenize=False,
                                                   add_generation_prompt=True)
    assert text == chat["raw_text"]
    assert converted_tokenizer.encode(text, add_special_tokens=False) == chat["context"]
    server = start_server(tiny_qwen1_chat, name="qwen1-chat", timeout=1800)  # a busy machine
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "qwen1-chat", "messages": [{"role": "user", "content": STOP_QUERY}], "max_tokens": 16, "temperature": 0,
        "repetition_penalty": 1.0})  # greedy, as the reference's model.chat here
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(chat["context"])
    # model.chat strips the decoded answer (qwen_generation_utils._decode_chatml: .strip()); the server does not
    assert body["choices"][0]["message"]["content"].strip() == chat["answer"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(answer_ids)  # the answer and its <|im_end|>

    # a long history is cut like make_context's max_window_size, not refused
    msgs = [m for q, a in HISTORY for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    long = msgs * 12  # far past the tiny model's 2,048 positions
    r = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": "qwen1-chat", "messages": long + [{"role": "user", "content": "那 DaemonSet 呢？"}], "max_tokens": 2,
        "temperature": 0})
    assert r.status_code == 200, r.text
    assert 1500 < r.json()["usage"]["prompt_tokens"] <= 2048 - 2


def test_history_window_keeps_the_turns_make_context_keeps(reference, converted_tokenizer):
    from devops_workloads.conventions import fit_history

    tok = converted_tokenizer
    msgs = [m for q, a in HISTORY for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    msgs.append({"role": "user", "content": "那 DaemonSet 呢？"})

    def count(m, generation_prompt):
        return len(tok.encode(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=generation_prompt),
                              add_special_tokens=False))

    kept = fit_history(msgs, count, budget=2048, window=WINDOW)
    assert 1 < len(kept) < len(msgs)  # some turns dropped, some kept
    ids = tok.encode(tok.apply_chat_template(kept, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    assert ids == reference["chat_history"]["context"]


def test_conversion_is_cached_next_to_the_download_and_refuses_what_it_cannot_carry(tiny_qwen1_chat, converted, tmp_path):
    from devops_workloads.models import ConversionError, prepare_model_dir
    from devops_workloads.models.qwen1 import convert_qwen1

    assert converted.parent == tiny_qwen1_chat.parent and converted.name.startswith(tiny_qwen1_chat.name + ".qwen2-")
    mtime = (converted / "model.safetensors").stat().st_mtime_ns
    assert prepare_model_dir(tiny_qwen1_chat) == converted  # reused, not redone
    assert (converted / "model.safetensors").stat().st_mtime_ns == mtime
    record = json.loads((converted / "conversion.json").read_text())
    assert [n.split(":")[0] for n in record["notCarriedOver"]] == ["use_dynamic_ntk", "use_logn_attn"]
    cfg = json.loads((converted / "config.json").read_text())
    assert (cfg["model_type"], cfg["max_position_embeddings"], cfg["intermediate_size"]) == ("qwen2", 2048, 384)
    gen = json.loads((converted / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151644, 151643] and gen["top_p"] == 0.8 and gen["max_window_size"] == 6144
    tok_cfg = json.loads((converted / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["tokenizer_class"] == "Qwen2Tokenizer"
    assert "auto_map" not in cfg and not list(converted.glob("*.py"))  # no remote code: no trust_remote_code

    # the command line: a second conversion into a chosen folder gives the same files
    out = tmp_path / "again"
    proc = subprocess.run([*cli(), "convert", "--model", str(tiny_qwen1_chat), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "conversion.json").read_text())
    assert again["to"]["files"] == record["to"]["files"]

    # what has no Qwen2 counterpart is refused, naming the field
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_qwen1_chat.iterdir():
        if f.is_file():
            (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    (bad / "config.json").write_text(json.dumps({**json.loads((tiny_qwen1_chat / "config.json").read_text()), "rotary_pct": 0.5}))
    with pytest.raises(ConversionError, match="rotary_pct is 0.5"):
        convert_qwen1(bad, tmp_path / "bad-out")


def test_serving_refuses_prompts_past_seq_length(tiny_qwen1_chat, converted):
    """Dynamic NTK and logn attention act only past seq_length, which the converted model refuses."""
    from devops_workloads.serve.engine import BatchingEngine

    eng = BatchingEngine.load(str(tiny_qwen1_chat), device="cpu")
    assert eng.max_model_len == 2048  # seq_length, not Qwen-1's NTK-stretched context
