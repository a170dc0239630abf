"""The streamed data path: the same training blocks and examples as the in-memory path, bad bytes
stopped with the file and line, memory that follows a row instead of the file, a reusable cache.

The reference ("today's path") is the in-memory code kept in ``preprocess``: every record in a list,
``build_pretrain_blocks`` / ``encode_sft_all`` + ``pack_examples``, and the held-out split that
``train/entry.py`` made before the cache existed (``_reference_split`` below, copied unchanged).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from devops_workloads import runner
from devops_workloads.evaluate.exams import ExamError, load_exams, read_exam_csv
from devops_workloads.templates import get_template
from devops_workloads.train import preprocess as pp
from devops_workloads.train import tokenized as tk
from devops_workloads.train.data import ReadCounter, _json_array, load_datasets, open_datasets

from devops_model.contract import ExitCode
from tests.plugins.train import make_resource

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "workloads" / "devops_workloads" / "sample_data"
GBK_TEXT = "容器重启了三次，请检查 liveness 探针。"


def _reference_split(items, val_size, seed):
    """train/entry.py's ``_split`` before the tokenized cache (the behaviour to keep)."""
    v = float(val_size)
    if v <= 0:
        return items, []
    n = int(v) if v >= 1 else max(1, int(round(len(items) * v)))
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def _data_spec(datasets, registry=None, kind="SFTRun", **kw):
    res = make_resource(kind, spec={"data": {"datasets": datasets, **({"registry": registry} if registry else {}), **kw}})
    if registry is None:
        res.spec.data.registry = None
    return res.spec.data


def _training(kind="SFTRun", **kw):
    return make_resource(kind, spec={"training": kw}).spec.training


# --------------------------------------------------------------------------- same blocks and examples


def test_streamed_records_equal_a_whole_file_read_of_the_bundled_data(train_storage):
    """Rows as json.load / json.loads of whole files give them, in the same order."""
    sft = load_datasets(_data_spec([{"name": "devops_qa_alpaca"}, {"name": "devops_qa_sharegpt"}], "pvc://samples"), "sft")
    alpaca = json.loads((SAMPLES / "sft" / "devops_qa_alpaca.json").read_text(encoding="utf-8"))
    share = [json.loads(l) for l in (SAMPLES / "sft" / "devops_qa_sharegpt.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    assert len(sft.records) == len(alpaca) + len(share) == 18 + len(share)
    assert [r["turns"][-1][1] for r in sft.records[:18]] == [row["output"] for row in alpaca]
    assert sft.records[18]["turns"][0][0] == share[0]["conversations"][1 if share[0]["conversations"][0]["from"] == "system" else 0]["value"]
    pt = load_datasets(_data_spec([{"name": "devops_corpus"}], "pvc://samples", kind="PretrainRun"), "pt")
    corpus = [json.loads(l)["text"] for l in (SAMPLES / "corpus" / "devops_corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in pt.records] == corpus


@pytest.mark.parametrize("val_size", ["0", "0.2"])
def test_streamed_pretrain_blocks_equal_the_in_memory_blocks(train_storage, qwen_tokenizer, tiny_qwen, tmp_path, val_size):
    spec = _data_spec([{"name": "devops_corpus"}], "pvc://samples", kind="PretrainRun")
    tr = _training("PretrainRun", maxLength=32)
    ref = pp.build_pretrain_blocks([r["text"] for r in load_datasets(spec, "pt").records], qwen_tokenizer, 32)
    ref_train, ref_eval = _reference_split(ref.blocks, val_size, tr.seed)
    stream = open_datasets(spec, "pt", seed=tr.seed)
    tk.scan_data(stream, tmp_path)
    # batches of 7 documents: the remainder is carried across many batch boundaries
    got = tk.prepare_training_data(stream, qwen_tokenizer, tiny_qwen, get_template("default"), tr, val_size, tmp_path, batch=7)
    assert len(ref.blocks) > 20
    assert [got.train[i] for i in range(len(got.train))] == ref_train
    assert ([got.eval[i] for i in range(len(got.eval))] if got.eval is not None else []) == ref_eval
    assert (got.report["tokens"], got.report["blocks"], got.report["droppedTailTokens"]) == (ref.tokens, len(ref.blocks), ref.dropped_tail)
    assert got.report["separator"] == "<|endoftext|>"


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("val_size", ["0", "3"])
def test_streamed_sft_examples_equal_the_in_memory_examples(train_storage, qwen_tokenizer, tiny_qwen, tmp_path, packing, val_size):
    spec = _data_spec([{"name": "devops_qa_alpaca"}, {"name": "devops_qa_sharegpt"}], "pvc://samples",
                      systemPrompt="You are a DevOps assistant.")
    tr = _training(maxLength=96, packing=packing, maxSourceLength=64, maxTargetLength=48)
    tpl = get_template("chatml")
    examples, stats = pp.encode_sft_all(load_datasets(spec, "sft").records, qwen_tokenizer, tpl, 96, 64, 48)
    items = pp.pack_examples(examples, 96, tr.seed) if packing else examples
    ref_train, ref_eval = _reference_split(items, val_size, tr.seed)
    stream = open_datasets(spec, "sft", seed=tr.seed)
    tk.scan_data(stream, tmp_path)
    got = tk.prepare_training_data(stream, qwen_tokenizer, tiny_qwen, tpl, tr, val_size, tmp_path)
    assert stats.history_truncated or stats.final_turn_truncated or stats.turns_capped  # the cuts are exercised
    assert [got.train[i] for i in range(len(got.train))] == ref_train
    assert ([got.eval[i] for i in range(len(got.eval))] if got.eval is not None else []) == ref_eval
    assert got.report["truncation"] == stats.to_dict()
    assert got.report["samples"] == len(examples) and got.report["sequences"] == len(items)
    assert isinstance(got.collator, pp.PackedCollator if packing else pp.PaddedCollator)


def test_interleave_strategies_stream_in_the_order_mix_gives(tmp_path):
    from devops_workloads.train.data import mix

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"instruction": f"a{i}", "output": "x"}) + "\n" for i in range(7)))
    b.write_text("".join(json.dumps({"instruction": f"b{i}", "output": "y"}) + "\n" for i in range(3)))
    parts = [load_datasets(_data_spec([{"uri": f"file://{f}"}]), "sft").records for f in (a, b)]
    for strategy in ("concat", "interleaveUnder", "interleaveOver"):
        stream = open_datasets(_data_spec([{"uri": f"file://{a}"}, {"uri": f"file://{b}"}], mixStrategy=strategy), "sft", seed=5)
        stream.scan()
        streamed = [r["turns"][0][0] for r in stream.records()]
        assert streamed == [r["turns"][0][0] for r in mix(parts, strategy, 5)], strategy
        assert len(streamed) == {"concat": 10, "interleaveUnder": 6, "interleaveOver": 14}[strategy]


# --------------------------------------------------------------------------- the cache


def test_a_second_run_reuses_the_tokenized_files_and_a_new_length_builds_new_ones(train_storage, qwen_tokenizer, tiny_qwen, tmp_path):
    spec = _data_spec([{"name": "devops_corpus"}], "pvc://samples", kind="PretrainRun")
    tr = _training("PretrainRun", maxLength=32)
    stream = open_datasets(spec, "pt", seed=tr.seed)
    tk.scan_data(stream, tmp_path)
    first = tk.prepare_training_data(stream, qwen_tokenizer, tiny_qwen, get_template("default"), tr, "0", tmp_path)
    stamp = (first.folder / "tokens.bin").stat().st_mtime_ns
    scans = list((tmp_path / "tokenized").glob("scan-*.json"))
    assert len(scans) == 1
    again = open_datasets(spec, "pt", seed=tr.seed)
    tk.scan_data(again, tmp_path)  # from the scan marker: nothing read
    assert again.counts == stream.counts and again.fingerprints["devops_corpus"]["rows"] == stream.counts[0]
    second = tk.prepare_training_data(again, qwen_tokenizer, tiny_qwen, get_template("default"), tr, "0", tmp_path)
    assert second.folder == first.folder and (second.folder / "tokens.bin").stat().st_mtime_ns == stamp
    other = tk.prepare_training_data(again, qwen_tokenizer, tiny_qwen, get_template("default"),
                                     _training("PretrainRun", maxLength=16), "0", tmp_path)
    assert other.folder != first.folder and len(other.train) > len(first.train)
    assert not list((tmp_path / "tokenized").glob("*.partial-*"))


def test_other_ranks_wait_for_rank0_and_stop_with_its_error(tmp_path):
    folder, error = tmp_path / "k", tmp_path / "k.error"
    got = {}
    t = threading.Thread(target=lambda: got.update(meta=tk._wait(folder, error)))
    t.start()
    time.sleep(1.5)
    assert t.is_alive()  # still waiting: nothing there yet
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"kind": "pt"}))
    t.join(10)
    assert got["meta"] == {"kind": "pt"}
    error.write_text("spec.data.datasets[0]: bad bytes")
    with pytest.raises(runner.WorkloadError, match="rank 0 could not prepare the data: spec.data.datasets"):
        tk._wait(tmp_path / "other", error)


def test_pretrain_run_reports_tokenizing_progress_before_the_first_step(train_storage):
    res = make_resource("PretrainRun", spec={"training": {"maxSteps": 2}})
    status = runner.run_resource(res)
    assert status["state"] == "Succeeded"
    records = [json.loads(l) for l in (train_storage / "runs" / "t-pt" / "progress.jsonl").read_text().splitlines()]
    phases = [r.get("phase") for r in records]
    assert phases[0] == "tokenizing" and records[0]["step"] == 0
    done = [r for r in records if r.get("phase") == "tokenizing"][-1]
    assert done["percent"] == 100 and done["documents"] > 0 and done["bytes_done"] == done["bytes_total"]
    assert records[-1]["step"] == 2 and "phase" not in records[-1]
    report = json.loads((train_storage / "runs" / "t-pt" / "data_report.json").read_text())
    assert Path(report["tokenizedCache"]).parent == train_storage / "runs" / "t-pt" / "tokenized"


# --------------------------------------------------------------------------- memory


def test_a_one_line_json_array_is_read_in_memory_of_a_chunk_not_the_file(tmp_path):
    """22 MB on one line (what needed 3.1 GB): the parser holds one chunk and one element."""
    f = tmp_path / "big.json"
    row = {"instruction": "为什么 Pod 一直 CrashLoopBackOff？" * 4, "output": "检查日志和 liveness 探针。" * 8}
    n = 22_000_000 // len(json.dumps(row, ensure_ascii=False).encode())
    with open(f, "w", encoding="utf-8") as fh:
        fh.write("[" + ",".join([json.dumps(row, ensure_ascii=False)] * n) + "]")
    assert f.stat().st_size > 20_000_000 and f.read_bytes().count(b"\n") == 0
    spec = _data_spec([{"uri": f"file://{f}"}])
    stream = open_datasets(spec, "sft")
    tracemalloc.start()
    count = sum(1 for _ in stream.records())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == n
    assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB for a {f.stat().st_size / 1e6:.0f} MB file"


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_incremental_json_array_parser_equals_json_load(tmp_path, chunk):
    rows = [{"a": 1, "s": "héllo \"quoted\" \\ 容器", "n": [1.5e10, -2, None, True]}, 12345678901234567890, "x",
            [], {}, {"deep": [[["k8s"]]]}, -0.5, False]
    f = tmp_path / "a.json"
    f.write_text("\ufeff  [\n" + ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n", encoding="utf-8")
    from devops_workloads.train.data import Source

    src = Source("a", "spec.data.datasets[0]", path=f)
    got = list(_json_array(src, f, "a", ReadCounter(), chunk=chunk))
    assert [r for _, r in got] == rows
    assert [w for w, _ in got] == [f"a:{i + 2}" for i in range(len(rows))]  # the line each element starts on


@pytest.mark.parametrize("text,line,what", [
    ('[{"a": 1},\n{"a": 2}\n{"a": 3}]', 3, "expected ',' or ']'"),
    ('[{"a": 1},\n{"a": }]', 2, "Expecting value"),
    ('[{"a": 1}] trailing', 1, "extra data"),
    ('[{"a": 1},\n', 2, "Expecting value"),
])
def test_broken_json_array_names_the_line(tmp_path, text, line, what):
    f = tmp_path / "b.json"
    f.write_text(text)
    with pytest.raises(runner.WorkloadError) as err:
        load_datasets(_data_spec([{"uri": f"file://{f}"}]), "sft")
    assert err.value.exit_code == 3 and err.value.reason == "BadData"
    assert f"{f} line {line} is not valid JSON" in str(err.value) and what in str(err.value)


# --------------------------------------------------------------------------- bad bytes


def _gbk_registry(root: Path, kind: str, encoding: str | None = None) -> Path:
    reg = root / "reg"
    reg.mkdir(parents=True, exist_ok=True)
    rows = {
        "txt": ("corpus.txt", "pt", "\n".join(["first line is ascii", GBK_TEXT, "third"]) + "\n"),
        "jsonl": ("qa.jsonl", "sft", "".join(json.dumps({"instruction": q, "output": GBK_TEXT}, ensure_ascii=False) + "\n"
                                             for q in ["ok", "also ok", "第三个问题"])),
        "json": ("qa.json", "sft", json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": GBK_TEXT}],
                                              ensure_ascii=False, indent=1)),
        "csv": ("qa.csv", "sft", f"instruction,output\nq,a\nq2,{GBK_TEXT}\n"),
    }
    name, stage, text = rows[kind]
    (reg / name).write_bytes(text.encode("gbk"))
    entry = {"file_name": name, "stage": stage}
    if encoding:
        entry["encoding"] = encoding
    (reg / "dataset_info.json").write_text(json.dumps({"d": entry}))
    return reg


BAD_LINE = {"txt": 2, "jsonl": 1, "json": 8, "csv": 3}


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json", "csv"])
def test_gbk_bytes_stop_with_the_file_and_line(tmp_path, kind, monkeypatch):
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path))
    reg = _gbk_registry(tmp_path, kind)
    stage = "pt" if kind == "txt" else "sft"
    with pytest.raises(runner.WorkloadError) as err:
        load_datasets(_data_spec([{"name": "d"}], "pvc://reg", kind="PretrainRun" if stage == "pt" else "SFTRun"), stage)
    msg = str(err.value)
    assert err.value.exit_code == ExitCode.BAD_INPUT == 3 and err.value.reason == "BadData"
    assert "\n" not in msg
    fname = next(p for p in reg.iterdir() if p.name != "dataset_info.json")
    assert f"{fname} line {BAD_LINE[kind]}" in msg and "is not valid utf-8" in msg and '"encoding"' in msg


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json", "csv"])
def test_registry_encoding_reads_gbk_as_the_same_text(tmp_path, kind, monkeypatch):
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path))
    _gbk_registry(tmp_path, kind, encoding="gbk")
    stage = "pt" if kind == "txt" else "sft"
    data = load_datasets(_data_spec([{"name": "d"}], "pvc://reg", kind="PretrainRun" if stage == "pt" else "SFTRun"), stage)
    texts = [r["text"] for r in data.records] if stage == "pt" else [t for r in data.records for turn in r["turns"] for t in turn]
    assert GBK_TEXT in texts and not any("\ufffd" in t for t in texts)


@pytest.mark.parametrize("encoding,match", [("klingon", "unknown encoding 'klingon'"),
                                            ("utf-16", "not ASCII-compatible")])
def test_unusable_registry_encoding_is_named(tmp_path, monkeypatch, encoding, match):
    monkeypatch.setenv("DEVOPS_MODEL_STORAGE", str(tmp_path))
    _gbk_registry(tmp_path, "jsonl", encoding=encoding)
    with pytest.raises(runner.WorkloadError, match=f"dataset_info.json: d.encoding: .*{match}"):
        load_datasets(_data_spec([{"name": "d"}], "pvc://reg"), "sft")


def test_rows_with_replacement_characters_are_dropped_and_counted(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("clean line\ndamaged \ufffd\ufffd line\nanother clean line\n", encoding="utf-8")
    data = load_datasets(_data_spec([{"uri": f"file://{f}"}], kind="PretrainRun"), "pt")
    assert [r["text"] for r in data.records] == ["clean line", "another clean line"]
    [(reason, n)] = data.problems.counts.items()
    assert n == 1 and "U+FFFD" in reason and data.problems.examples[reason] == ["c.txt:c.txt:2"]


def test_gbk_corpus_run_exits_3_with_one_line_and_leaves_nothing(tmp_path):
    """The whole command: a GBK .txt corpus (which used to train on U+FFFD and succeed)."""
    storage = tmp_path / "storage"
    _gbk_registry(storage, "txt")
    (storage / "models").mkdir()
    spec = {"apiVersion": "devops-model.io/v1alpha1", "kind": "PretrainRun", "metadata": {"name": "gbk-pt"},
            "spec": {"model": {"uri": "pvc://models/none"}, "data": {"registry": "pvc://reg", "datasets": [{"name": "d"}]},
                     "training": {"maxSteps": 1}, "launcher": "Job", "output": {"uri": "pvc://runs/gbk-pt"}}}
    f = tmp_path / "gbk.yaml"
    f.write_text(json.dumps(spec))
    env = {**os.environ, "DEVOPS_MODEL_STORAGE": str(storage), "DEVOPS_MODEL_HOME": str(tmp_path / "home")}
    # the command a one-process Job runs (builders/training.py); no PYTHONPATH: the installed entry point
    p = subprocess.run([str(Path(sys.executable).parent / "devops-model"), "run", "-f", str(f)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 3, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "corpus.txt line 2" in lines[0] and "(BadData)" in lines[0]
    assert not (storage / "runs").exists()  # no output, no tokenized cache, no progress file
    reg = json.loads((tmp_path / "home" / "runs" / "pretrainrun" / "gbk-pt.json").read_text())
    assert reg["status"]["state"] == "Failed" and reg["status"]["reason"] == "BadData"


# --------------------------------------------------------------------------- exams


def _gbk_exam(root: Path) -> Path:
    for split in ("test", "dev"):
        (root / "devops" / split).mkdir(parents=True, exist_ok=True)
    rows = "id,question,A,B,C,D,answer\n1,ok?,a,b,c,d,A\n2,哪个命令查看 Pod 日志？,kubectl logs,b,c,d,A\n"
    (root / "devops" / "test" / "k8s.csv").write_bytes(rows.encode("gbk"))
    (root / "devops" / "dev" / "k8s.csv").write_text(rows, encoding="utf-8")
    return root / "devops" / "test" / "k8s.csv"


def test_gbk_exam_csv_is_a_bad_data_error_naming_file_and_line(tmp_path):
    path = _gbk_exam(tmp_path)
    with pytest.raises(ExamError) as err:
        load_exams(tmp_path)  # discovery reads the header (line 1 is ASCII), then the questions
    assert err.value.exit_code == 3 and f"exam file {path} line 3, column 3 is not valid UTF-8" in str(err.value)
    assert "iconv -f GBK -t UTF-8" in str(err.value)
    assert [q.question for q in read_exam_csv(path, encoding="gbk")] == ["ok?", "哪个命令查看 Pod 日志？"]


def test_gbk_exam_header_fails_in_discovery_without_a_traceback(tmp_path):
    (tmp_path / "devops" / "test").mkdir(parents=True)
    (tmp_path / "devops" / "test" / "x.csv").write_bytes("序号,问题,A,B,C,D,答案\n".encode("gbk"))
    with pytest.raises(ExamError, match="line 1, column 1 is not valid UTF-8"):
        load_exams(tmp_path)


def test_utf8_bom_exam_still_reads(tmp_path):
    _gbk_exam(tmp_path)
    p = tmp_path / "devops" / "dev" / "k8s.csv"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert read_exam_csv(p)[1].question == "哪个命令查看 Pod 日志？"
