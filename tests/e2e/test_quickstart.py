"""`make quickstart`'s job, end to end: `devops-model quickstart` from an empty work dir runs every
stage (each a real `devops-model run -f`: torch training, exams, GPTQ, the built-in server) and
writes the report; a second run reuses what succeeded and repeats only what is missing.

This is the slowest test file (several minutes on 2 cores): it is the newcomer's first command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "devops-model"
STAGES = ["continued pretraining", "LoRA SFT", "exam: base model", "exam: tuned model", "GPTQ int4", "exam: int4 model"]


def _quickstart(workdir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVOPS_MODEL_")}
    return subprocess.run([str(CLI), "quickstart", "--workdir", str(workdir)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=1800)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quickstart")
    r = _quickstart(workdir)
    assert r.returncode == 0, f"quickstart failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return workdir, r.stdout


def _record(workdir: Path, kind: str, name: str) -> dict:
    return json.loads((workdir / "home" / "runs" / kind.lower() / f"{name}.json").read_text())


def test_every_stage_runs_and_succeeds(first_run):
    workdir, out = first_run
    for title in STAGES:
        line = next((ln for ln in out.splitlines() if ln.startswith(f"✓ {title}")), None)
        assert line and "reused" not in line, f"stage {title!r} did not report success:\n{out}"
    assert "✓ tiny model          built" in out
    records = sorted((workdir / "home" / "runs").rglob("*.json"))
    kinds = {p.parent.name for p in records}
    assert {"pretrainrun", "sftrun", "evalrun", "quantizerun"} <= kinds
    for p in records:
        rec = json.loads(p.read_text())
        if p.parent.name != "chatdeployment":
            assert rec["status"]["state"] == "Succeeded", (p, rec["status"])
    # The chain is real: SFT starts from the pretrain artifact, quantize from the merged SFT model.
    sft = _record(workdir, "SFTRun", yaml_name("sft-lora.yaml"))
    assert sft["resource"]["spec"]["model"]["fromRun"]["kind"] == "PretrainRun"
    art = sft["status"]["artifact"]
    assert art["format"] == "hf-lora" and (_local(workdir, art["uri"]) / "adapter_config.json").exists()
    assert (_local(workdir, art["mergedUri"]) / "model.safetensors").exists()
    quant = _record(workdir, "QuantizeRun", yaml_name("quantize.yaml"))
    assert quant["status"]["artifact"]["baseModel"] == art["mergedUri"]
    qdir = _local(workdir, quant["status"]["artifact"]["uri"])
    qcfg = json.loads((qdir / "config.json").read_text())["quantization_config"]
    assert qcfg["bits"] == 4 and qcfg["group_size"] == 128
    assert quant["status"]["sizeAfterBytes"] < quant["status"]["sizeBeforeBytes"]


def _local(workdir: Path, uri: str) -> Path:
    # Locally, pvc://CLAIM/PATH is STORAGE/CLAIM/PATH; the quickstart's storage is WORKDIR/storage.
    assert uri.startswith("pvc://"), uri
    return workdir / "storage" / uri.removeprefix("pvc://")


def yaml_name(file: str) -> str:
    import yaml

    return yaml.safe_load((REPO / "examples" / "local" / file).read_text())["metadata"]["name"]


def test_report_has_curves_scores_sizes_chat_and_cluster_commands(first_run):
    workdir, out = first_run
    md = (workdir / "report.md").read_text()
    for title in STAGES:
        assert re.search(rf"^\| {re.escape(title)} \| \w+/[\w-]+ \| Succeeded \|", md, re.M), f"{title} row:\n{md}"
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(pngs) >= 2, md  # pretraining and SFT loss curves
    for rel in pngs:
        data = (workdir / rel).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # Score table: base, tuned and int4 rows, each with an accuracy for every shot/style column.
    table = md.split("## Exam scores", 1)[1].split("##", 1)[0]
    rows = {ln.split("|")[1].strip(): ln for ln in table.splitlines() if ln.startswith("| ") and "%" in ln}
    assert set(rows) == {"base model", "tuned model", "int4 model"}, table
    header = next(ln for ln in table.splitlines() if ln.startswith("| model"))
    assert "0-shot" in header and "5-shot" in header
    for ln in rows.values():
        for cell in re.findall(r"(\d+\.\d)% \((\d+)/(\d+)\)", ln):
            pct, correct, total = float(cell[0]), int(cell[1]), int(cell[2])
            assert total > 0 and abs(pct - 100 * correct / total) < 0.06
    assert re.search(r"\| GPTQ int4 \| [\d.]+ MB \(ratio [\d.]+×", md)
    assert "**Q:** What is the difference between a Deployment and a StatefulSet in Kubernetes?" in md and "**A:**" in md
    assert "helm install devops-model charts/devops-model" in md and "kubectl apply -f examples/cluster/chain.yaml" in md
    html = (workdir / "report.html").read_text()
    assert html.count("<img") == len(pngs) and "<table" in html
    # The chat stage really went through the built-in server's OpenAI API.
    assert re.search(r"POST /v1/chat/completions[^\n]*200", (workdir / "serve.log").read_text())


def test_tuned_model_gives_the_taught_answer_and_the_base_model_does_not(first_run):
    """The newcomer sees training work: asked one of the bundled SFT questions (greedy, same prompt),
    the model after SFT reproduces a recognisable part of the taught answer, the same model before SFT
    does not, the int4 model served over the OpenAI API still does, and the report shows all of it."""
    from devops_workloads.quickstart import QUESTION, answer_overlap, taught_answer

    workdir, out = first_run
    demo = json.loads((workdir / "answers.json").read_text())
    taught = taught_answer()
    assert demo["question"] == QUESTION and demo["taught"] == taught
    for key in ("base", "tuned", "served"):  # the recorded figures are the answers' own
        assert answer_overlap(demo[key]["answer"], taught) == {k: demo[key][k] for k in ("bigrams", "longestRun", "run")}
    tuned, served, base = demo["tuned"], demo["served"], demo["base"]
    assert tuned["bigrams"] >= 0.5 and tuned["longestRun"] >= 8, tuned
    assert served["bigrams"] >= 0.3 and served["longestRun"] >= 5, served
    assert base["bigrams"] <= 0.05 and base["longestRun"] <= 2, base
    # The loss curves fall clearly.
    for kind, name, factor in (("PretrainRun", "pretrain.yaml", 0.75), ("SFTRun", "sft-lora.yaml", 0.5)):
        first, last = map(float, re.search(r"loss ([\d.]+) → ([\d.]+)", _record(workdir, kind, yaml_name(name))
                                           ["status"]["message"]).groups())
        assert last < factor * first, (kind, first, last)
    md = (workdir / "report.md").read_text()
    learned = md.split("## What SFT taught", 1)[1].split("\n## ", 1)[0]
    assert f"**Question:** {QUESTION}" in learned and f"**Taught answer:** {taught}" in learned
    for key in ("base", "tuned", "served"):
        assert " ".join(demo[key]["answer"].split()).replace("|", "\\|") in learned, key
    assert " ".join(tuned["run"].split()[:8]) in learned  # the shared run, quoted (shortened)
    # ...and honestly what it cannot do: the tuned model's answers to the taught question rephrased and
    # to a bundled question it was not trained on, with their overlaps.
    assert "cannot" in learned
    for key in ("rephrased", "untaught"):
        probe = demo[key]
        assert probe["question"] in learned and " ".join(probe["answer"].split()).replace("|", "\\|") in learned, key
    assert demo["untaught"]["reference"] == taught_answer(demo["untaught"]["question"])
    assert f"**A:** {served['answer']}" in md
    assert "after SFT:" in out


def test_answer_overlap_counts_taught_word_pairs_and_the_longest_shared_run():
    from devops_workloads.quickstart import answer_overlap

    taught = "A Deployment manages interchangeable replicas: Pods get random names."
    assert answer_overlap(taught, taught) == {"bigrams": 1.0, "longestRun": 9, "run": "a deployment manages interchangeable replicas pods get random names"}
    got = answer_overlap("the the, the Deployment manages pods. Pods get random", taught)
    assert got["longestRun"] == 3 and got["run"] == "pods get random"
    assert got["bigrams"] == round(3 / 8, 3)  # deployment manages, pods get, get random
    assert answer_overlap("", taught) == {"bigrams": 0.0, "longestRun": 0, "run": ""}


def test_second_run_reuses_what_succeeded_and_repeats_only_what_is_missing(first_run):
    workdir, _ = first_run
    keep = {t: _record(workdir, *t) for t in [("PretrainRun", yaml_name("pretrain.yaml")),
                                              ("QuantizeRun", yaml_name("quantize.yaml"))]}
    gone = workdir / "home" / "runs" / "evalrun" / f"{yaml_name('eval-int4.yaml')}.json"
    gone.unlink()  # as if the last exam had been interrupted
    r = _quickstart(workdir)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(ln.startswith("✓ tiny model          reused") for ln in lines)
    for title in STAGES[:-1]:
        line = next(ln for ln in lines if ln.startswith(f"✓ {title}"))
        assert "reused" in line, line
    assert any(ln.startswith("▶ exam: int4 model") for ln in lines)
    assert gone.exists() and json.loads(gone.read_text())["status"]["state"] == "Succeeded"
    for t, rec in keep.items():
        assert _record(workdir, *t)["status"] == rec["status"], t  # not re-run
    assert (workdir / "report.md").exists()
