"""``devops-model convert``: bring a first-generation Qwen folder into the Qwen2 layout, explicitly.

    devops-model convert --model /models/CodeFuse-DevOps-Model-7B-Base          # cached next to it
    devops-model convert --model /models/DevOps-Model-7B-Chat --out /models/devops-7b-chat-qwen2

Every stage converts a Qwen-1 folder by itself on load (once; cached); this command does it ahead
of time, e.g. in an init container or before copying the result to a PVC for vLLM/TGI.
Registered in ``devops_cli.COMMANDS``; no torch at import.
"""

from __future__ import annotations

import sys
from pathlib import Path

from devops_model.commandline import add_command


def register(sub) -> None:
    p = add_command(
        sub, "convert", "convert a first-generation Qwen model (the seed's checkpoints) to the Qwen2 layout",
        "Convert a Qwen-1 folder (model_type qwen: remote code + qwen.tiktoken) exactly to "
        "Qwen2ForCausalLM weights and a Hugging Face tokenizer (same token ids), with a chatml chat template "
        "and Qwen-1's stop words. Not carried over: dynamic NTK and logn attention, which act only past "
        "seq_length (the converted model is limited to seq_length tokens).", __doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="the Qwen-1 folder (or a file:// / pvc:// / hf:// / modelscope:// URI)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the cache next to the model, <folder>.qwen2-<fingerprint>)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from ..runner import WorkloadError
    from .qwen1 import convert_qwen1, is_qwen1, prepare_model_dir

    try:
        if "://" in args.model:
            from ..sources import materialize_model

            path = materialize_model(args.model)  # downloads, then converts (a Qwen-1 folder)
            print(path)
            return 0
        src = Path(args.model)
        if not (src / "config.json").is_file():
            print(f"error: --model {args.model}: no config.json there; give the model folder", file=sys.stderr)
            return 3
        if not is_qwen1(src):
            print(f"{src} is not a first-generation Qwen model; every stage loads it as it is", file=sys.stderr)
            print(src)
            return 0
        if args.out is not None:
            if args.out.exists() and any(args.out.iterdir()):
                print(f"error: --out {args.out} exists and is not empty; remove it or choose another folder", file=sys.stderr)
                return 3
            if args.out.exists():
                args.out.rmdir()
            print(convert_qwen1(src, args.out))
        else:
            print(prepare_model_dir(src))
    except WorkloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
