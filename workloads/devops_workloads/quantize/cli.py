"""``devops-model quantize``: GPTQ-quantize a model folder without writing a resource file.

The command builds the same QuantizeRun a resource file would hold and runs the same workload, so
what it prints and writes (``artifact.json``, ``quantize.json``) is what ``devops-model run -f`` gives.
Cheap to import: nothing heavy loads until the command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from devops_model.commandline import add_command

EXAMPLES = """\
examples:
  # int4, group size 128, 128 calibration samples from the SFT data (chat template applied):
  devops-model quantize --model out/sft-merged --out out/int4 --calibration file://$PWD/data/devops-chat.jsonl

  # 8-bit per-channel, act-order, perplexity on a held-out file, fail above +10 %:
  devops-model quantize --model out/m --out out/int8 --bits 8 --group-size -1 --act-order \\
      --calibration file:///data/cal.jsonl --perplexity-text file:///data/heldout.txt --max-perplexity-increase 0.10

Calibration rows may be alpaca (instruction/input/output), sharegpt (conversations) or text
(jsonl/json/csv/parquet/txt; a folder of such files). The output loads with
AutoModelForCausalLM.from_pretrained(OUT) (optimum + gptqmodel), vLLM and TGI.
"""


def register(sub) -> None:
    p = add_command(
        sub, "quantize", "GPTQ-quantize a model (int4 by default) and check it still works",
        "Quantize the Hugging Face model in --model with GPTQ (GPTQModel, CPU or GPU) into "
        "--out in the gptq checkpoint format, then compare perplexity on held-out text before and after "
        "and report the sizes. Exit status 4 when the quantized model fails the perplexity check.", EXAMPLES)
    p.add_argument("--model", required=True, type=Path, help="folder of the model to quantize (safetensors + tokenizer)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the quantized checkpoint")
    p.add_argument("--bits", type=int, default=4, choices=(3, 4, 8), help="weight bits (default 4)")
    p.add_argument("--group-size", type=int, default=128, choices=(-1, 32, 64, 128),
                   help="columns sharing one scale; -1 = per output channel (default 128)")
    p.add_argument("--calibration", required=True, metavar="URI",
                   help="calibration data: file:///ABS/PATH or pvc://CLAIM/PATH (file or folder)")
    p.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--min-length", type=int, default=32, help="skip samples shorter than this many tokens (default 32)")
    p.add_argument("--max-length", type=int, default=2048, help="cut samples to this many tokens (default 2048)")
    p.add_argument("--act-order", action="store_true", help="quantize columns by activation size (desc_act)")
    p.add_argument("--asymmetric", action="store_true", help="use a zero point (symmetric is what vLLM's fast kernels expect)")
    p.add_argument("--no-chat-template", action="store_true", help="do not render conversational rows with the chat template")
    p.add_argument("--perplexity-text", metavar="URI", default=None,
                   help="held-out text for perplexity (default: held-out rows of the calibration data)")
    p.add_argument("--max-perplexity-increase", default="0.25", help='allowed relative perplexity increase (default "0.25")')
    p.add_argument("--no-verify", action="store_true", help="skip the perplexity check")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code to run")
    p.set_defaults(func=_cmd)


def _uri(value: str | Path) -> str:
    text = str(value)
    return text if "://" in text else Path(text).resolve().as_uri()


def _cmd(args) -> int:
    from devops_model.api.resource import InvalidResource, parse_resource

    doc = {
        "apiVersion": "devops-model.io/v1alpha1",
        "kind": "QuantizeRun",
        "metadata": {"name": "cli"},
        "spec": {
            "model": {"uri": _uri(args.model), "trustRemoteCode": args.trust_remote_code},
            "bits": args.bits,
            "groupSize": args.group_size,
            "symmetric": not args.asymmetric,
            "actOrder": args.act_order,
            "calibration": {"datasets": [{"uri": _uri(args.calibration)}], "samples": args.samples,
                            "minLength": args.min_length, "maxLength": args.max_length,
                            "applyChatTemplate": not args.no_chat_template},
            "verification": None if args.no_verify else {
                "maxPerplexityIncrease": args.max_perplexity_increase,
                **({"perplexityText": _uri(args.perplexity_text)} if args.perplexity_text else {})},
            "output": {"uri": _uri(args.out)},
        },
    }
    try:
        resource = parse_resource(doc, "devops-model quantize")
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    from devops_workloads.runner import RunContext, WorkloadError

    from .entry import run

    try:
        status = run(RunContext(resource=resource, resolved_model=doc["spec"]["model"]["uri"], workdir=args.out))
    except WorkloadError as exc:
        print(f"✗ quantize failed ({exc.reason}): {exc}", file=sys.stderr)
        return 4 if exc.reason == "VerificationFailed" else exc.exit_code
    print(f"✓ {status['summary']}")
    print(json.dumps({k: v for k, v in status.items() if k not in ("summary", "message")}, indent=2, ensure_ascii=False))
    return 0
