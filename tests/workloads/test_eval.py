"""Exam evaluation without a model: sources, the seed's prompt byte for byte, tie-breaking, scoring
helpers, aggregation and the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from devops_model.api.evaluation import PRESETS
from devops_model.scores import summary_line
from devops_workloads.evaluate.evaluator import aggregate
from devops_workloads.evaluate.exams import (
    ExamError,
    combined_sha1,
    data_sha1s,
    discover,
    load_exams,
    read_exam_csv,
)
from devops_workloads.evaluate.prompts import HEADER, chatml_text, render_query
from devops_workloads.evaluate.scoring import continuation_ids, pick

REPO = Path(__file__).resolve().parents[2]

# SHA-1s published in ../shared/data/exams/README.md
SEED_SHA1 = {
    "ceval/dev/college_programming.csv": "5f60267c55c1dea2e7f6ca7d036113c7688d8f4b",
    "ceval/val/computer_network.csv": "49242c80549dbd7644dd298e5197c11fb7c30ad7",
    "cmmlu/test/computer_science.csv": "8e1930baac0ff2758be29c7dd8a4ea9817d02ab5",
    "cmmlu/dev/machine_learning.csv": "16ad428ba7c0a6764c53b89a82edd0b2f3e2ef42",
}


def _examples(text: str) -> dict[str, str]:
    """``{title: prompt}`` from prompt_examples.txt: each prompt runs to the next ==== line; the
    file puts one newline after each prompt (the prompts themselves end in 答案： with none)."""
    parts = re.split(r"^==== (.+?) ====\n", text, flags=re.M)[1:]
    return {title: body.removesuffix("\n") for title, body in zip(parts[::2], parts[1::2])}


# --------------------------------------------------------------------------- sources


def test_preset_devops_574_has_574_questions(seed_exams):
    exams = load_exams(seed_exams, preset="devops-574", max_shots=5)
    counts = {e.name: len(e.questions) for e in exams}
    assert counts == {
        "cmmlu/computer_science": 204, "cmmlu/computer_security": 171, "cmmlu/machine_learning": 122,
        "ceval/computer_network": 19, "ceval/college_programming": 37, "ceval/computer_architecture": 21,
    }
    assert sum(counts.values()) == 574
    assert [e.name for e in exams] == PRESETS["devops-574"]
    # C-Eval is scored on val (its test split has no answers), CMMLU on test; 5 dev rows each.
    assert {e.name: e.split for e in exams}["ceval/computer_network"] == "val"
    assert {e.name: e.split for e in exams}["cmmlu/machine_learning"] == "test"
    assert all(len(e.dev) == 5 for e in exams)


def test_data_sha1s_match_the_published_ones(seed_exams):
    exams = load_exams(seed_exams, preset="devops-574")
    sha1s = data_sha1s(exams, seed_exams)
    assert len(sha1s) == 12
    for path, digest in SEED_SHA1.items():
        assert sha1s[path] == digest
    assert re.fullmatch(r"[0-9a-f]{40}", combined_sha1(sha1s))


@pytest.mark.parametrize(
    "header, rows, expected",
    [
        pytest.param(",Question,A,B,C,D,Answer", ["0,问题一,甲,乙,丙,丁,B"], ("问题一", "B"), id="cmmlu-index-column"),
        pytest.param("id,question,A,B,C,D,answer,explanation", ['7,问题二,甲,乙,丙,丁,c,"解析\n两行"'], ("问题二", "C"), id="ceval-dev-explanation"),
        pytest.param("id,question,A,B,C,D,answer", ["0,问题三,甲,乙,丙,丁, d "], ("问题三", "D"), id="ceval-val"),
        pytest.param("\ufeffQuestion,A,B,C,D,Answer", ["问题四,甲,乙,丙,丁,A"], ("问题四", "A"), id="bom-no-index"),
    ],
)
def test_csv_header_variants(tmp_path, header, rows, expected):
    p = tmp_path / "x.csv"
    p.write_text(header + "\r\n" + "\r\n".join(rows) + "\r\n", encoding="utf-8")
    [q] = read_exam_csv(p)
    assert (q.question, q.answer) == expected
    assert q.options == {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}
    assert q.index == 0


def test_real_files_of_both_header_styles_read_alike(seed_exams):
    cm = read_exam_csv(seed_exams / "cmmlu/test/computer_science.csv")
    ce = read_exam_csv(seed_exams / "ceval/val/computer_network.csv")
    assert cm[0].question.startswith("⽤⼀个字节") and cm[0].answer == "B" and cm[0].options["B"] == "256个"
    assert ce[0].answer == "C" and ce[0].options == {"A": "1", "B": "2", "C": "3", "D": "4"}
    # cells are kept verbatim, trailing spaces included (as pandas.read_csv kept them for the seed)
    dev = read_exam_csv(seed_exams / "cmmlu/dev/computer_science.csv")
    assert any(v.endswith(" ") for q in dev for v in q.options.values())


def test_empty_option_cell_is_dropped_and_bad_answer_is_named(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text(",Question,A,B,C,D,Answer\n0,三选一,甲,乙,丙,,A\n", encoding="utf-8")
    [q] = read_exam_csv(p)
    assert list(q.options) == ["A", "B", "C"]
    assert render_query(q).endswith("C. 丙\n答案：")
    p.write_text(",Question,A,B,C,D,Answer\n0,题,甲,乙,丙,丁,E\n", encoding="utf-8")
    with pytest.raises(ExamError, match=r"x.csv, row 2: answer 'E' is not one of the options ABCD"):
        read_exam_csv(p)
    p.write_text("id,question,A,B,answer\n0,题,甲,乙,A\n", encoding="utf-8")
    with pytest.raises(ExamError, match=r"lacks column\(s\) c, d"):
        read_exam_csv(p)


def test_selection_errors_name_the_field(sample_exams, tmp_path):
    with pytest.raises(ExamError, match=r"spec.exams.exams: exam\(s\) devops/nope not found .*found: devops/ci_cd, devops/containers"):
        load_exams(sample_exams, names=["devops/nope"])
    with pytest.raises(ExamError, match="preset devops-574: exam"):
        load_exams(sample_exams, preset="devops-574")
    with pytest.raises(ExamError, match="not a directory"):
        load_exams(tmp_path / "missing")
    (tmp_path / "b" / "test").mkdir(parents=True)
    (tmp_path / "b" / "test" / "s.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A\n", encoding="utf-8")
    with pytest.raises(ExamError, match=r"5-shot needs 5 dev rows in .*b/dev/s.csv \(found 0\)"):
        load_exams(tmp_path, max_shots=5)


def test_ceval_test_split_without_answers_falls_back_to_val(tmp_path):
    for split, header in (("test", "id,question,A,B,C,D"), ("val", "id,question,A,B,C,D,answer")):
        d = tmp_path / "ceval" / split
        d.mkdir(parents=True)
        row = "0,题,a,b,c,d" + (",B" if split == "val" else "")
        (d / "net.csv").write_text(header + "\n" + row + "\n", encoding="utf-8")
    found = discover(tmp_path)
    assert found["ceval/net"][1] == "val"


def test_devopseval_layout_with_name_map(tmp_path):
    for split in ("test", "dev"):
        d = tmp_path / "zh" / split
        d.mkdir(parents=True)
        rows = "\n".join(f"{i},题{i},a,b,c,d,A" for i in range(5))
        (d / "risk.csv").write_text("id,question,A,B,C,D,answer,explanation\n" + rows + "\n", encoding="utf-8")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "dataset_fp.json").write_text('{"tech_risk": "risk.csv"}', encoding="utf-8")
    [exam] = load_exams(tmp_path, layout="devopseval", max_shots=5)
    assert exam.name == "zh/tech_risk" and len(exam.questions) == 5 and len(exam.dev) == 5


# --------------------------------------------------------------------------- prompts


def test_rendered_prompts_are_byte_identical_to_the_seed(seed_exams, seed_prompt_examples):
    examples = _examples(seed_prompt_examples)
    assert set(examples) == {"zero-shot example (cmmlu computer_science #0)", "five-shot example (ceval computer_network #0)"}
    [cs] = load_exams(seed_exams, names=["cmmlu/computer_science"])
    [cn] = load_exams(seed_exams, names=["ceval/computer_network"], max_shots=5)
    zero = render_query(cs.questions[0])
    five = render_query(cn.questions[0], cn.dev[:5])
    assert zero.encode() == examples["zero-shot example (cmmlu computer_science #0)"].encode()
    assert five.encode() == examples["five-shot example (ceval computer_network #0)"].encode()
    assert five.count(HEADER) == 6 and five.endswith("答案：") and "\n\n" not in five


def test_chatml_text_is_the_seeds_qwen_chat_context():
    assert chatml_text("Q") == (
        "<|im_start|>system\nyou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "scores, expected",
    [
        pytest.param({"A": 1.0, "B": 1.0, "C": 0.5, "D": 0.2}, "A", id="tie-A-B-goes-to-A"),
        pytest.param({"A": 0.1, "B": 2.0, "C": 2.0, "D": 2.0}, "B", id="three-way-tie-goes-to-B"),
        pytest.param({"A": -1.0, "B": -1.0, "C": -1.0, "D": -1.0}, "A", id="all-equal"),
        pytest.param({"D": 3.0, "C": 3.0}, "C", id="order-of-dict-irrelevant"),
        pytest.param({"A": 0.0, "B": 0.0, "C": 0.0, "D": 1e-7}, "D", id="strictly-greater-wins"),
        pytest.param({"A": float("-inf"), "B": float("-inf")}, "A", id="minus-infinity"),
    ],
)
def test_tie_breaking_goes_to_the_earlier_letter(scores, expected):
    assert pick(scores) == expected


class _SpaceTokenizer:
    """Characters as tokens, but " X" is one token: enough to check the harness's split."""

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            if text[i] == " " and i + 1 < len(text):
                out.append(ord(text[i + 1]) + 1000)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


def test_continuation_ids_follow_the_harness_encode_pair():
    tok = _SpaceTokenizer()
    assert continuation_ids(tok, "答案：", " A") == [ord("A") + 1000]
    # a trailing space of the context moves into the continuation
    assert continuation_ids(tok, "答案： ", "A") == [ord("A") + 1000]


def test_aggregate_is_micro_averaged_and_summary_reads_well():
    preds = [{"exam": "a", "shots": 0, "style": "base", "prediction": "A", "answer": "A"}] * 3 + \
            [{"exam": "b", "shots": 0, "style": "base", "prediction": "A", "answer": "B"}] * 1
    exams, overall = aggregate(preds, ["a", "b"], [0], ["base"])
    assert [(e["exam"], e["correct"], e["total"]) for e in exams] == [("a", 3, 3), ("b", 0, 1)]
    assert overall == [{"shots": 0, "style": "base", "correct": 3, "total": 4, "accuracy": 0.75}]  # micro, not (1+0)/2
    assert summary_line(overall + [{"shots": 5, "style": "base", "accuracy": 0.6391, "delta": 2.1}]) == "0-shot 75.0% / 5-shot 63.9% (+2.1)"
    both = [{"shots": 0, "style": "base", "accuracy": 0.5}, {"shots": 0, "style": "chat", "accuracy": 0.25}]
    assert summary_line(both) == "0-shot base 50.0% / 0-shot chat 25.0%"


# --------------------------------------------------------------------------- command line


def test_eval_help_teaches_and_stays_light():
    out = subprocess.run([sys.executable, "-m", "devops_cli", "eval", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for word in ("--preset", "devops-574", "--shots", "--style", "--scoring", "loglikelihood", "results.json", "examples:"):
        assert word in out.stdout
    probe = "import sys, devops_workloads.evaluate.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_eval_rejects_bad_shots_with_a_clear_message():
    out = subprocess.run([sys.executable, "-m", "devops_cli", "eval", "--model", "x", "--exams", "y", "--out", "z", "--shots", "0,7"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "--shots values must be between 0 and 5" in out.stderr
