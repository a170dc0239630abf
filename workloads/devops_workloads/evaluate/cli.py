"""``devops-model eval``: score a model on multiple-choice exams with the seed's method.

Registered in ``devops_cli.COMMANDS``; this module stays light (no torch at import) so
``devops-model --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devops_model.commandline import add_command

DESCRIPTION = """\
Score a causal LM on multiple-choice exams exactly as CodeFuse DevOps-Model's harness
(codefuse-devops-eval) did: its prompt (header, 问题：, A. …, 答案：), k-shot from the first k
dev rows, the raw logit of A-D at the last position, micro-averaged accuracy. Fast: questions are
batched and the few-shot prefix of each exam is computed once and reused from its KV cache;
tokenized exams are cached on disk (--no-token-cache), and a plain Qwen2 safetensors checkpoint
is run on the CPU without importing transformers' model code (DEVOPS_MODEL_EVAL_NATIVE=0: with it).

Exams: ROOT/BENCHMARK/SPLIT/SUBJECT.csv (CMMLU test or C-Eval val scored, dev for shots; either
header style), or the DevOps-Eval layout with --layout devopseval.
Writes OUT/results.json (per exam and overall, per shots/style, with what is needed to reproduce
the numbers) and OUT/predictions.jsonl (one line per question)."""

EPILOG = """\
examples:
  # the seed's table: six exams, 574 questions, zero- and five-shot
  devops-model eval --model /models/qwen-7b --exams ../shared/data/exams --preset devops-574 --shots 0,5 --out out/

  # the bundled sample exam, base and chat prompting
  devops-model eval --model /tmp/tiny --exams workloads/devops_workloads/sample_data/exams --style base,chat --out out/

  # two exams, lm-evaluation-harness-style log-likelihood of " A".." D"
  devops-model eval --model DIR --exams ROOT --exam cmmlu/computer_science --exam ceval/computer_network \\
      --scoring loglikelihood --out out/
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shots takes comma-separated numbers 0-5, e.g. 0,5 (got {text!r})") from None
    if not values or any(v < 0 or v > 5 for v in values):
        raise argparse.ArgumentTypeError(f"--shots values must be between 0 and 5 (got {text!r})")
    return list(dict.fromkeys(values))


def _styles(text: str) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in ("base", "chat")]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"--style takes base, chat or base,chat (got {text!r})")
    return list(dict.fromkeys(values))


def register(sub) -> None:
    p = add_command(
        sub, "eval", "score a model on CMMLU/C-Eval/DevOps-Eval exams (the seed's method, fast)",
        DESCRIPTION, EPILOG)
    p.add_argument("--model", required=True, help="model directory (or pvc://, file://, hf:// URI)")
    p.add_argument("--exams", required=True, metavar="ROOT", help="exam root folder (or pvc:// / file:// URI)")
    p.add_argument("--layout", choices=("cmmlu", "devopseval"), default=None, help="folder layout (default: cmmlu)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--preset", choices=("devops-574",), help="a named set of exams: devops-574 = the seed's six exams")
    which.add_argument("--exam", action="append", metavar="NAME", dest="exam_names",
                       help="an exam as BENCHMARK/SUBJECT, e.g. cmmlu/computer_science (repeatable; default: all under ROOT)")
    p.add_argument("--shots", type=_int_list, default=None, help="few-shot settings, comma-separated 0-5 (default: 0,5)")
    p.add_argument("--style", type=_styles, default=None, help="base (raw text), chat (chatml) or base,chat (default: base)")
    p.add_argument("--chat-template", choices=("chatml", "tokenizer"), default=None,
                   help="for --style chat: the seed's chatml with system 'you are a helpful assistant' (default) or the tokenizer's own template")
    p.add_argument("--scoring", choices=("seed", "loglikelihood"), default=None,
                   help="seed: raw logit of A..D at the last position (default); loglikelihood: log P(' A'..' D') as lm-evaluation-harness")
    p.add_argument("--batch-size", type=int, default=None, help="questions per forward pass (default: 16)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default=None, help="auto: bf16 on GPU, fp32 on CPU")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own Python code (off by default)")
    p.add_argument("--plain", action="store_true", help="use the seed's one-question-at-a-time loop instead of the fast path (for checking; slow)")
    p.add_argument("--no-token-cache", action="store_true",
                   help="tokenize every prompt afresh instead of reusing the tokenized exams cached on disk "
                        "(default location $DEVOPS_MODEL_CACHE/eval-tokens; DEVOPS_MODEL_EVAL_TOKEN_CACHE=0 does the same)")
    p.add_argument("--out", required=True, type=Path, help="output folder for results.json and predictions.jsonl")
    p.set_defaults(func=_cmd)


#: flag -> EvalRun spec field (an unset flag takes the EvalRun's own default).
_SPEC_FLAGS = {"shots": "shots", "style": "styles", "chat_template": "chatTemplate", "scoring": "scoring",
               "batch_size": "batchSize", "precision": "precision"}


def eval_spec_from_args(args: argparse.Namespace):
    """The EvalRun these flags describe, validated like a resource (its defaults are the CLI's)."""
    from devops_model.api.resource import parse_resource

    def uri(value: str) -> str:
        return value if "://" in value else f"file://{Path(value).resolve()}"

    exams: dict = {"uri": uri(args.exams)}
    if args.layout:
        exams["layout"] = args.layout
    if args.preset:
        exams["preset"] = args.preset
    if args.exam_names:
        exams["exams"] = args.exam_names
    spec: dict = {"model": {"uri": uri(args.model), "trustRemoteCode": bool(args.trust_remote_code)}, "exams": exams}
    spec.update({field: getattr(args, flag) for flag, field in _SPEC_FLAGS.items() if getattr(args, flag) is not None})
    run = parse_resource({"apiVersion": "devops-model.io/v1alpha1", "kind": "EvalRun",
                          "metadata": {"name": "cli-eval"}, "spec": spec}, "devops-model eval")
    return run.spec


def _cmd(args) -> int:
    from devops_model.api.resource import InvalidResource
    from devops_model.scores import summary_line

    from ..runner import WorkloadError
    from ..sources import materialize_model
    from .entry import config_from_spec
    from .evaluator import evaluate

    try:
        spec = eval_spec_from_args(args)
        model_path = materialize_model(spec.model.uri or args.model)
        cfg = config_from_spec(spec, model_path, args.model, engine="plain" if args.plain else "fast")
        cfg.token_cache = not args.no_token_cache
        results = evaluate(cfg, args.out)
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (WorkloadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 3)
    width = max(len(e["exam"]) for e in results["exams"])
    for e in results["exams"]:
        print(f"  {e['exam']:<{width}}  {e['shots']}-shot {e['style']:<4}  {e['correct']:>4}/{e['total']:<4}  {100 * e['accuracy']:5.1f}%")
    t = results["timing"]
    print(f"✓ {summary_line(results['overall'])}  ({t['questions']} questions, {t['questionsPerSecond']} q/s) -> {args.out}/results.json")
    return 0
