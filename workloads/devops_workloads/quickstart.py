"""The whole life cycle on one machine with a tiny model, ending in a report.

    make quickstart                                  # sets up .venv, then:
    devops-model quickstart [--workdir DIR] [--exams /path/to/shared/data/exams]

Stages (each one is exactly the `devops-model run -f examples/local/<file>` a user would run,
chained through `fromRun`, in a work dir of its own):

    tiny model → pretrain → SFT (LoRA, merged) → eval base / tuned → GPTQ int4 → eval int4
    → answers before / after SFT → built-in server answers the taught question → report.md / report.html

The six stages from pretrain to eval int4 run in this process, through the function that
`devops-model run -f` calls (``runner.run_file``), so that torch and transformers are imported once,
not once per stage; the chat server is a process of its own (``devops-model run -f chat.yaml``), as a
user starts it.

The demo question is one of the bundled SFT samples, so the report can show what was taught next
to what the model answers before SFT, after SFT and after GPTQ (greedy decoding throughout).

Re-running resumes: a stage whose run is recorded as Succeeded in the work dir's run registry is
reused, not repeated (``--fresh`` starts over).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devops_model.yamlio import dump

from .processes import free_port
from .quantize.gptq import cpu_workers

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "local"
#: One question of the bundled SFT data (sft/devops_qa_alpaca.json); its answer there is what SFT teaches.
QUESTION = "What is the difference between a Deployment and a StatefulSet in Kubernetes?"
#: Standard deviation of the tiny model's random weights (tiny.py says why). Measured: with Qwen2's
#: 0.02, LoRA SFT on all the bundled Q&A stayed at loss ~8.5 after 40 steps; with 0.1 and the
#: three-Q&A set of examples/local/sft-lora.yaml the taught answer comes back word for word.
TINY_INIT = 0.1
#: Two probes of what the tuned model cannot do: the taught question in other words, and a question
#: of the bundled data that the quickstart's SFT did not train on (its answer there is the reference).
REPHRASED = "How do Kubernetes StatefulSets differ from Deployments?"
UNTAUGHT = "What does ImagePullBackOff mean?"
#: Tokens each model may answer with (the taught answer is about 65 tokens).
ANSWER_TOKENS = 96


@dataclass
class Stage:
    title: str
    file: str
    #: rewrite the resource before running (e.g. point the eval at the seed's exams)
    edits: dict[str, Any] = field(default_factory=dict)


STAGES = [
    Stage("continued pretraining", "pretrain.yaml"),
    Stage("LoRA SFT", "sft-lora.yaml"),
    Stage("exam: base model", "eval-base.yaml"),
    Stage("exam: tuned model", "eval.yaml"),
    Stage("GPTQ int4", "quantize.yaml"),
    Stage("exam: int4 model", "eval-int4.yaml"),
]


class QuickstartError(RuntimeError):
    pass


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DEVOPS_MODEL_HOME=str(workdir / "home"),
        DEVOPS_MODEL_STORAGE=str(workdir / "storage"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        GPTQMODEL_CPU_WORKERS=env.get("GPTQMODEL_CPU_WORKERS", str(cpu_workers())),
    )
    return env


def _registry(workdir: Path, kind: str, name: str) -> dict[str, Any] | None:
    p = workdir / "home" / "runs" / kind.lower() / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "devops-model"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "devops_cli"]


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_quickstart(workdir: Path, exams: Path | None = None, fresh: bool = False) -> Path:
    workdir = workdir.resolve()
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "resources").mkdir(parents=True, exist_ok=True)
    env = _env(workdir)
    os.environ.update(env)  # before torch/transformers are imported: the stages run in this process
    timings: dict[str, float] = {}
    summary: list[dict[str, Any]] = []

    # 0. tiny model and sample data ----------------------------------------------------------
    storage = workdir / "storage"
    model_dir = storage / "models" / "tiny-qwen"
    t0 = time.time()
    if not (model_dir / "config.json").exists():
        from .tiny import build_tiny_model

        # a base (eos <|endoftext|>, its own template); weights of std 0.1 so that LoRA can learn (tiny.py)
        build_tiny_model(model_dir, "qwen", seed=0, like="qwen2.5-base", initializer_range=TINY_INIT)
        _say(f"✓ tiny model          built at {model_dir} ({time.time() - t0:.1f}s)")
    else:
        _say(f"✓ tiny model          reused {model_dir}")
    from .sample_data import install as install_samples

    install_samples(storage)
    timings["tiny model"] = time.time() - t0

    # 1..n the stages, each a `devops-model run -f` ----------------------------------------------
    for stage in STAGES:
        src = EXAMPLES / stage.file
        if not src.exists():
            raise QuickstartError(f"{src} is missing; the quickstart runs the examples in examples/local/")
        docs = [d for d in yaml.safe_load_all(src.read_text()) if d]
        res = docs[0]
        if exams is not None and res["kind"] == "EvalRun":
            res["spec"]["exams"] = {"uri": f"file://{exams.resolve()}", "preset": "devops-574"}
        dst = workdir / "resources" / stage.file
        dst.write_text(dump(res))  # quoted as kubectl needs ("5e-5" stays a string)
        kind, name = res["kind"], res["metadata"]["name"]
        entry = _registry(workdir, kind, name)
        if entry and entry.get("status", {}).get("state") == "Succeeded" and entry.get("resource") and \
                _same_spec(entry["resource"], res):
            _say(f"✓ {stage.title:<20} reused ({kind}/{name})")
            timings[stage.title] = 0.0
            summary.append({"stage": stage.title, "kind": kind, "name": name, "status": entry["status"], "reused": True})
            continue
        _say(f"▶ {stage.title:<20} devops-model run -f {dst}")
        t0 = time.time()
        code = _run_stage(dst)
        timings[stage.title] = time.time() - t0
        entry = _registry(workdir, kind, name)
        if code != 0 or not entry or entry["status"].get("state") != "Succeeded":
            raise QuickstartError(f"stage '{stage.title}' failed (exit {code}); see the output above. "
                                  f"Re-run `make quickstart` to resume from this stage.")
        _say(f"✓ {stage.title:<20} {entry['status'].get('summary') or entry['status'].get('message') or 'done'} "
             f"({timings[stage.title]:.0f}s)")
        summary.append({"stage": stage.title, "kind": kind, "name": name, "status": entry["status"], "reused": False})

    # the taught answer, and what the model answered before and after SFT (same prompt, greedy) ------
    t0 = time.time()
    demo = _before_and_after(workdir)
    timings["answers"] = time.time() - t0
    _say(f"✓ {'answers':<20} before SFT: {demo['base']['answer'][:80]!r}\n{'':23}after SFT:  "
         f"{demo['tuned']['answer'][:80]!r} ({timings['answers']:.0f}s)")

    # last: serve the int4 model and ask the question ------------------------------------------------
    t0 = time.time()
    answer, info = _serve_and_ask(workdir, env)
    timings["chat"] = time.time() - t0
    demo["served"] = {"answer": answer, **answer_overlap(answer, demo["taught"])}
    _say(f"✓ {'chat':<20} Q: {QUESTION}\n{'':23}A: {answer[:200]!r} ({timings['chat']:.0f}s)")
    (workdir / "answers.json").write_text(json.dumps(demo, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    report = write_report(workdir, summary, timings, QUESTION, answer, info, demo)
    _say(f"\nreport: {report} (and report.html)")
    return report


def _run_stage(resource_file: Path) -> int:
    """`devops-model run -f FILE` in this process: ``runner.run_file``, the function the command calls."""
    from .runner import run_file

    try:
        return int(run_file(resource_file))
    except QuickstartError:
        raise
    except Exception as exc:  # the runner recorded the run as Failed; say where, keep the traceback
        import traceback

        traceback.print_exc()
        raise QuickstartError(f"{resource_file.name}: {type(exc).__name__}: {exc}") from exc


def taught_answer(question: str = QUESTION) -> str:
    """The answer the bundled SFT data gives to ``question`` (sft/devops_qa_alpaca.json)."""
    rows = json.loads((Path(__file__).parent / "sample_data" / "sft" / "devops_qa_alpaca.json").read_text(encoding="utf-8"))
    for row in rows:
        if row.get("instruction") == question and not row.get("input"):
            return str(row["output"])
    raise QuickstartError(f"the question {question!r} is not in the bundled SFT data (sft/devops_qa_alpaca.json)")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def answer_overlap(answer: str, taught: str) -> dict[str, Any]:
    """How much of the taught answer an answer reproduces, in words (case and punctuation ignored):
    ``bigrams``: the share of the taught answer's distinct word pairs that occur in the answer;
    ``longestRun``: the longest run of consecutive words the two share, and ``run`` that text."""
    a, t = _words(answer), _words(taught)
    tb = set(zip(t, t[1:]))
    bigrams = len(tb & set(zip(a, a[1:]))) / len(tb) if tb else 0.0
    best, end = 0, 0
    prev = [0] * (len(t) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(t) + 1)
        for j in range(1, len(t) + 1):
            if a[i - 1] == t[j - 1]:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best, end = cur[j], j
        prev = cur
    return {"bigrams": round(bigrams, 3), "longestRun": best, "run": " ".join(t[end - best:end])}


def _before_and_after(workdir: Path) -> dict[str, Any]:
    """Greedy answers to QUESTION from the SFT run's starting point (the pretrained model) and from
    its merged result, both prompted with the tuned model's chat template exactly as the server does;
    and the tuned model's answers to REPHRASED and UNTAUGHT (what it cannot do)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from devops_model.uris import local_path

    from .serve.prompts import chat_prompt

    sft = _registry(workdir, "SFTRun", _name("sft-lora.yaml")) or {}
    art = (sft.get("status") or {}).get("artifact") or {}
    base_uri = (sft.get("status") or {}).get("resolvedModel")
    if not base_uri or not art.get("mergedUri"):
        raise QuickstartError("the SFT run recorded no starting model or merged model; re-run with --fresh")
    tuned_dir, base_dir = local_path(art["mergedUri"]), local_path(base_uri)
    tok = AutoTokenizer.from_pretrained(str(tuned_dir))

    def ask(model: Any, question: str) -> str:
        ids = tok(chat_prompt(tok, [{"role": "user", "content": question}]), return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=ANSWER_TOKENS, do_sample=False,
                                 eos_token_id=_stop_ids(tok), pad_token_id=tok.pad_token_id)
        return str(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)).strip()

    taught = taught_answer()
    out: dict[str, Any] = {"question": QUESTION, "taught": taught, "baseModel": base_uri, "tunedModel": art["mergedUri"],
                           "trainedOn": _data_figures(workdir)}
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    answer = ask(base, QUESTION)
    out["base"] = {"answer": answer, **answer_overlap(answer, taught)}
    tuned = AutoModelForCausalLM.from_pretrained(str(tuned_dir), dtype=torch.float32)
    answer = ask(tuned, QUESTION)
    out["tuned"] = {"answer": answer, **answer_overlap(answer, taught)}
    answer = ask(tuned, REPHRASED)
    out["rephrased"] = {"question": REPHRASED, "answer": answer, **answer_overlap(answer, taught)}
    answer = ask(tuned, UNTAUGHT)
    out["untaught"] = {"question": UNTAUGHT, "answer": answer, "reference": taught_answer(UNTAUGHT),
                       **answer_overlap(answer, taught_answer(UNTAUGHT))}
    return out


def _data_figures(workdir: Path) -> dict[str, Any]:
    """Tokens the pretraining corpus and the SFT data held (the runs' data_report.json)."""
    figures: dict[str, Any] = {}
    for kind, file, key in (("PretrainRun", "pretrain.yaml", "pretrain"), ("SFTRun", "sft-lora.yaml", "sft")):
        rec = _registry(workdir, kind, _name(file)) or {}
        uri = ((rec.get("status") or {}).get("artifact") or {}).get("uri")
        try:
            from devops_model.uris import local_path

            report = json.loads((local_path(uri) / "data_report.json").read_text()) if uri else {}
        except (OSError, ValueError):
            report = {}
        figures[key] = {k: report[k] for k in ("rowsUsed", "tokens", "trained") if k in report}
    return figures


def _stop_ids(tok: Any) -> list[int]:
    ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return [i for i in ids if isinstance(i, int) and i >= 0]


def _name(file: str) -> str:
    return str(yaml.safe_load((EXAMPLES / file).read_text())["metadata"]["name"])


def _same_spec(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    return recorded.get("spec") == _normalise(current).get("spec")


def _normalise(res: dict[str, Any]) -> dict[str, Any]:
    from devops_model.api.resource import parse_resource

    return parse_resource(res).to_dict()


def _serve_and_ask(workdir: Path, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """`devops-model run -f chat.yaml` (the ChatDeployment, built-in engine) on a free port, ask
    one question through the chat client (greedy), stop the server. Returns the answer and /v1/info."""
    import urllib.request

    src = EXAMPLES / "chat.yaml"
    if not src.exists():
        raise QuickstartError(f"{src} is missing; the quickstart runs the examples in examples/local/")
    dst = workdir / "resources" / "chat.yaml"
    shutil.copyfile(src, dst)
    port = free_port()
    log_path = workdir / "serve.log"
    _say(f"▶ {'chat':<20} devops-model run -f {dst}  (port {port})")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*_cli(), "run", "-f", str(dst)], env={**env, "DEVOPS_MODEL_SERVE_PORT": str(port)},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300
            while True:
                if proc.poll() is not None:
                    raise QuickstartError(f"the chat server exited early (exit {proc.returncode}); see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise QuickstartError(f"the chat server did not become healthy in 300s; see {log_path}")
                time.sleep(0.5)
            info: dict[str, Any] = {}
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=5) as r:
                    info = json.loads(r.read())
            except (OSError, ValueError):
                pass
            from .chat.client import ChatClient

            client = ChatClient(f"http://127.0.0.1:{port}")
            response, _history = client.chat(QUESTION, [], max_tokens=ANSWER_TOKENS, temperature=0)
            return response, info
        finally:
            from .processes import stop_group

            stop_group(proc, timeout=30)


# ----------------------------------------------------------------------------- report


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _score_table(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    rows = []
    settings: list[tuple[int, str]] = []
    for s in summary:
        if s["kind"] != "EvalRun":
            continue
        for o in (s["status"].get("scores") or {}).get("overall", []):
            key = (o["shots"], o["style"])
            if key not in settings:
                settings.append(key)
    header = ["model"] + [f"{shots}-shot {style}" for shots, style in settings]
    for s in summary:
        if s["kind"] != "EvalRun":
            continue
        by = {(o["shots"], o["style"]): o for o in (s["status"].get("scores") or {}).get("overall", [])}
        row = [s["stage"].removeprefix("exam: ")]
        for key in settings:
            o = by.get(key)
            row.append(f"{100 * o['accuracy']:.1f}% ({o['correct']}/{o['total']})" if o else "—")
        rows.append(row)
    return header, rows


def write_report(workdir: Path, summary: list[dict[str, Any]], timings: dict[str, float], question: str, answer: str,
                 info: dict[str, Any] | None = None, demo: dict[str, Any] | None = None) -> Path:
    from devops_model.uris import local_path

    lines = ["# DevOps-Model quickstart report", "",
             f"Work dir: `{workdir}` · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · "
             f"{os.cpu_count()} CPU cores, no GPU", "", "## Stages", "",
             "| stage | resource | state | time | artifact |", "|---|---|---|---|---|"]
    plots = []
    for s in summary:
        st = s["status"]
        art = (st.get("artifact") or {}).get("uri", "")
        took = (f"{st.get('durationSeconds', 0):.0f}s (reused)" if s["reused"]
                else f"{timings.get(s['stage'], 0):.0f}s")
        lines.append(f"| {s['stage']} | {s['kind']}/{s['name']} | {st.get('state')} | {took} | `{art}` |")
        if s["kind"] in ("PretrainRun", "SFTRun") and art:
            for png in sorted(local_path(art).rglob("training_loss*.png")):
                plots.append((s["stage"], png))
    if "answers" in timings:
        lines.append(f"| answers before/after SFT | pretrained and merged models, greedy | answered | "
                     f"{timings['answers']:.0f}s | `answers.json` |")
    lines.append(f"| chat | ChatDeployment/devops-chat (built-in engine) | answered | {timings.get('chat', 0):.0f}s | |")
    lines += ["", "## Loss curves", ""]
    for title, png in plots:
        lines.append(f"![{title}]({os.path.relpath(png, workdir)})")
    header, rows = _score_table(summary)
    lines += ["", "## Exam scores (seed method: logits of A–D, micro-averaged)", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "A tiny random model scores near chance (25%); the point is that every stage ran and is measured.", "",
              "## Sizes", "", "| model | size |", "|---|---|"]
    storage = workdir / "storage"
    lines.append(f"| base (tiny-qwen) | {_dir_size(storage / 'models' / 'tiny-qwen') / 1e6:.1f} MB |")
    for s in summary:
        st = s["status"]
        if s["kind"] == "QuantizeRun":
            if st.get("sizeBeforeBytes"):
                lines.append(f"| before GPTQ (merged) | {st['sizeBeforeBytes'] / 1e6:.1f} MB |")
            if st.get("sizeAfterBytes"):
                lines.append(f"| GPTQ int4 | {st['sizeAfterBytes'] / 1e6:.1f} MB (ratio {st.get('compressionRatio', 0):.2f}×; "
                             f"perplexity {st.get('perplexityBefore', 0):.1f} → {st.get('perplexityAfter', 0):.1f}) |")
    lines += ["", "## What SFT taught", ""]
    lines += _learned_section(summary, demo) if demo else []
    lines += ["", "## Chat", ""]
    lineage = (info or {}).get("lineage")
    if lineage:
        lines += ["Served model lineage (from `/v1/info`, also shown by the web chat): "
                  + " → ".join(f"`{x}`" for x in lineage), ""]
    lines += [f"**Q:** {question}", "", f"**A:** {answer}", "",
              "## The same on a cluster", "", "```bash",
              "helm install devops-model charts/devops-model -n devops-model --create-namespace",
              "kubectl apply -f examples/cluster/chain.yaml      # pretrain → sft → eval → quantize → chat",
              "kubectl get devops-model -w                       # state, step, loss, scores, endpoint",
              "```", "", "Run any stage here again: `devops-model run -f " + str(workdir / "resources") + "/<file>.yaml`", ""]
    md = "\n".join(lines)
    (workdir / "report.md").write_text(md)
    (workdir / "report.html").write_text(_markdown_to_html(md))
    return workdir / "report.md"


def _loss_span(status: dict[str, Any]) -> str:
    m = re.search(r"loss ([\d.]+) → ([\d.]+)", str(status.get("message") or ""))
    return f"{m.group(1)} → {m.group(2)}" if m else "?"


def _learned_section(summary: list[dict[str, Any]], demo: dict[str, Any]) -> list[str]:
    """The question, the taught answer, the answers before SFT, after SFT and from the int4 server,
    how much of the taught answer each one reproduces, and what such a tiny model cannot do."""
    losses = {s["kind"]: _loss_span(s["status"]) for s in summary if s["kind"] in ("PretrainRun", "SFTRun")}
    data = demo.get("trainedOn") or {}
    pt, sft = data.get("pretrain") or {}, data.get("sft") or {}

    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|") or "(empty)"

    def row(label: str, key: str) -> str:
        d = demo.get(key)
        if not d:
            return f"| {label} | — | — | — |"
        return f"| {label} | {cell(d['answer'])} | {100 * d['bigrams']:.0f}% | {d['longestRun']} |"

    def short(run: str, n: int = 12) -> str:
        words = run.split()
        return " ".join(words[:n]) + (" …" if len(words) > n else "")

    base, tuned, served = demo.get("base") or {}, demo.get("tuned") or {}, demo.get("served") or {}
    lines = [
        f"Pretraining loss {losses.get('PretrainRun', '?')} on a corpus of {pt.get('tokens', '?')} tokens; "
        f"SFT loss {losses.get('SFTRun', '?')} on {sft.get('rowsUsed', '?')} question–answer pairs "
        f"({sft.get('tokens', '?')} tokens, {sft.get('trained', '?')} of them answer tokens that are trained; "
        "`sft/devops_qa_quickstart.json`). The question below is one of them. Every model gets the same chat "
        "prompt and decodes greedily; the last two columns count the taught answer's word pairs found in "
        "an answer and the longest run of words the two share.", "",
        f"**Question:** {demo['question']}", "",
        f"**Taught answer:** {demo['taught']}", "",
        "| model | answer | taught word pairs reproduced | longest run of taught words |", "|---|---|---|---|",
        row(f"before SFT (`{demo.get('baseModel', '')}`)", "base"),
        row(f"after SFT (`{demo.get('tunedModel', '')}`)", "tuned"),
        row("served GPTQ int4 (chat below)", "served"),
        "",
        f"**What was learned:** before SFT the model reproduces {100 * base.get('bigrams', 0):.0f}% of the taught "
        f"answer's word pairs; after SFT {100 * tuned.get('bigrams', 0):.0f}% (longest shared run "
        f"{tuned.get('longestRun', 0)} words: \"{short(tuned.get('run', ''))}\"), and the int4 model served over "
        f"the OpenAI API {100 * served.get('bigrams', 0):.0f}%.", "",
    ]
    reph, untaught = demo.get("rephrased"), demo.get("untaught")
    if reph and untaught:
        lines += [
            "**What a model this small cannot do:** it has 2 layers of width 128 and saw a few thousand tokens. "
            "It recites what it was shown, as a lookup; it does not understand Kubernetes and cannot answer "
            "what it was not taught. The tuned model, asked greedily:", "",
            "| question | tuned model's answer | overlap with the reference answer |", "|---|---|---|",
            f"| {reph['question']} (the taught question in other words) | {cell(reph['answer'])} | "
            f"{100 * reph['bigrams']:.0f}% of the taught answer's word pairs |",
            f"| {untaught['question']} (in the bundled data, not trained on) | {cell(untaught['answer'])} | "
            f"{100 * untaught['bigrams']:.0f}% of its bundled answer's word pairs |", "",
            "The exam scores above stay near chance (25 %) for the same reason; a difference of a few questions "
            "is noise. What the quickstart shows is the pipeline: the same resource files train, examine, "
            "quantize and serve a 7B model on GPUs.",
        ]
    return lines


def _markdown_to_html(md: str) -> str:
    """A small Markdown subset (headings, tables, images, code, paragraphs) to self-contained HTML."""
    out, in_table, in_code = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            # Cells split on unescaped pipes only: a model's answer in a cell has its own as `\|`.
            row = re.sub(r"(?<!\\)\|$", "", line.strip()[1:])
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f'<p><img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}" style="max-width:640px"></p>')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}pre{background:#f4f4f4;padding:1em}")
    return f"<!doctype html><meta charset=utf-8><title>DevOps-Model quickstart</title><style>{style}</style>\n" + "\n".join(out)


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def register(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="the whole life cycle on this machine with a tiny model, ending in a report",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", type=Path, default=Path("quickstart-work"), help="where everything goes (default: ./quickstart-work)")
    p.add_argument("--exams", type=Path, default=None,
                   help="exam root in the CMMLU/C-Eval layout (e.g. ../shared/data/exams) to use the seed's six exams (devops-574) instead of the bundled sample exam")
    p.add_argument("--fresh", action="store_true", help="delete the work dir first instead of resuming")
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    try:
        run_quickstart(args.workdir, args.exams, args.fresh)
    except QuickstartError as exc:
        print(f"✗ {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("✗ interrupted; `make quickstart` resumes where it stopped", file=sys.stderr)
        return 130
    return 0
