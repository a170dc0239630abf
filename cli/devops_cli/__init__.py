"""The ``devops-model`` command: the one package that sees every other (the dispatcher sits above
the operator and the workloads; ``devops_model`` itself imports neither).

Subcommands are registered in :data:`COMMANDS` as ``name -> "module:register"``; each module's
``register(subparsers)`` adds its parser and sets ``func``. Registration modules stay cheap to
import (no torch at import time) so ``devops-model --help`` is instant; heavy imports happen when
the command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from devops_model.commandline import add_command

EPILOG = """\
examples:
  devops-model run -f examples/local/sft-lora.yaml      run a resource's workload on this machine
  devops-model render -f examples/cluster/sft.yaml      print the objects the operator would create
  devops-model crds | kubectl apply -f -                install the CRDs
  devops-model dev tiny-model --out /tmp/tiny           build a tiny Qwen2 model offline

Every resource is validated before anything runs; an error names the field, the value and the fix.
Exit codes: 0 done; validate 1 when a file or resource is invalid (a missing file too); render and run
3 for bad input (contract.ExitCode.BAD_INPUT, never retried), run's other codes as docs/operator.md lists.
Documentation: README.md and docs/ in the repository.
"""

#: name -> "module:register" (the module's register(subparsers) adds the subcommand).
COMMANDS: dict[str, str] = {
    "crds": "devops_cli:_register_crds",
    "validate": "devops_cli:_register_validate",
    "render": "devops_cli:_register_render",
    "run": "devops_cli:_register_run",
    "dev": "devops_cli:_register_dev",
    "quickstart": "devops_workloads.quickstart:register",
    "eval": "devops_workloads.evaluate.cli:register",
    "quantize": "devops_workloads.quantize.cli:register",
    "operator": "devops_operator.cli:register",
    "serve": "devops_workloads.serve.cli:register",
    "chat": "devops_workloads.chat.cli:register",
    "convert": "devops_workloads.models.cli:register",
}


def _register_crds(sub) -> None:
    p = add_command(
        sub, "crds", "print the CustomResourceDefinitions (generated from the typed API)",
        "Print the five CRDs as one YAML stream, exactly as committed in crds/. "
        "With --write DIR, write one file per kind instead.")
    p.add_argument("--write", metavar="DIR", type=Path, help="write the files into DIR (used to regenerate crds/)")
    p.add_argument("--docs", metavar="FILE", type=Path, help="also write the API reference (Markdown) to FILE (docs/api.md)")
    p.set_defaults(func=_cmd_crds)


def _cmd_crds(args) -> int:
    from devops_model.api.crdgen import crd_files

    files = crd_files()
    if args.docs:
        from devops_model.api.reference import render_reference

        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(render_reference(), encoding="utf-8")
        print(f"wrote the API reference to {args.docs}", file=sys.stderr)
        if not args.write:
            return 0
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (args.write / name).write_text(text, encoding="utf-8")
        print(f"wrote {len(files)} CRDs to {args.write}/", file=sys.stderr)
    else:
        sys.stdout.write("---\n".join(files[n] for n in sorted(files)))
    return 0


def _register_validate(sub) -> None:
    p = add_command(
        sub, "validate", "check resource files against the API (same rules as the API server)",
        "Validate every resource in the files with the same schema and rules the API "
        "server applies (the file read as kubectl reads it); print each problem with its field path. "
        "--local checks for `devops-model run` instead, where file:// URIs are allowed.")
    p.add_argument("-f", "--file", dest="files", action="append", required=True, help="resource YAML (repeatable, - for stdin)")
    p.add_argument("--local", action="store_true",
                   help="check for `devops-model run` on this machine instead of the API server (accepts file:// URIs)")
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args) -> int:
    from devops_model.api.resource import InvalidResource, load_documents, parse_resource

    bad = 0
    for f in args.files:
        try:
            docs = load_documents(f)
        except InvalidResource as exc:
            print(f"error: {exc}", file=sys.stderr)
            bad += 1
            continue
        for doc in docs:  # every document is checked, as kubectl apply reports each one
            meta = doc.get("metadata") if isinstance(doc, dict) else None
            label = f"{doc.get('kind')}/{meta.get('name') if isinstance(meta, dict) else '?'}" if isinstance(doc, dict) else "?"
            try:
                res = parse_resource(doc, f"{f}: {label}", cluster=not args.local)
                print(f"{f}: {res.kind}/{res.metadata.name} is valid")
            except InvalidResource as exc:
                print(f"error: {exc}", file=sys.stderr)
                bad += 1
    return 1 if bad else 0


def _register_render(sub) -> None:
    p = add_command(
        sub, "render", "print the child objects the operator would create (no cluster needed)",
        "Render the Kubernetes objects (ConfigMap, PyTorchJob/TrainJob/Job, Deployment, "
        "Service, ...) that the operator creates for each resource in FILE, as YAML.")
    p.add_argument("-f", "--file", required=True, help="resource YAML (- for stdin)")
    p.add_argument("--namespace", "-n", default=None, help="namespace to render into (default: the resource's, else default)")
    p.add_argument("--values", type=Path, default=None, help="operator configuration (Helm values YAML: images, defaults)")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args) -> int:
    from devops_model.api.resource import InvalidResource, load_resources
    from devops_model.yamlio import dump_all

    try:
        resources = load_resources(args.file)
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    try:
        from devops_operator.builders import SpecRefused, render_children
        from devops_operator.config import OperatorConfig
    except ImportError as exc:  # the operator extra is not installed
        print(f"error: rendering needs the operator package: {exc}", file=sys.stderr)
        return 1
    config = OperatorConfig.from_values_file(args.values) if args.values else OperatorConfig()
    docs = []
    for res in resources:
        if args.namespace:
            res.metadata.namespace = args.namespace
        try:
            docs.extend(render_children(res, config))
        except SpecRefused as exc:
            print(f"error: {res.kind}/{res.metadata.name}: {exc}", file=sys.stderr)
            return 3
    sys.stdout.write(dump_all(docs))
    return 0


def _register_run(sub) -> None:
    p = add_command(
        sub, "run", "run a resource's workload on this machine (the same code a pod runs)",
        "Validate FILE and run the workload of each resource in it, in order, here: "
        "training, evaluation, quantization or the built-in chat server. pvc://CLAIM/PATH maps to "
        "$DEVOPS_MODEL_STORAGE/CLAIM/PATH; fromRun is resolved from runs recorded on this machine "
        "($DEVOPS_MODEL_HOME/runs).")
    p.add_argument("-f", "--file", required=True, help="resource YAML (several documents run in order)")
    p.add_argument("--name", default=None, help="run only the resource with this name")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: $DEVOPS_MODEL_HOME/work/KIND/NAME)")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from devops_workloads.runner import run_file

    return run_file(Path(args.file) if args.file != "-" else Path("-"), args.workdir, only=args.name)


def _register_dev(sub) -> None:
    p = sub.add_parser("dev", help="developer tools (tiny model for tests and the quickstart)")
    dsub = p.add_subparsers(dest="dev_command", metavar="TOOL", required=True)
    t = add_command(
        dsub, "tiny-model", "build a tiny Qwen2-architecture model and tokenizer offline",
        "Build a tiny Qwen2ForCausalLM (hidden 128, 2 layers) with random weights from "
        "a fixed seed and a tokenizer, without any download. --tokenizer qwen uses the real Qwen "
        "tokenizer vendored in devops_workloads/qwen_tokenizer (Apache-2.0; decompressed once into "
        "~/.cache/devops-model/qwen-tokenizer); bpe trains a small "
        "byte-level BPE with the chatml special tokens (faster).")
    t.add_argument("--out", required=True, type=Path, help="output directory")
    t.add_argument("--tokenizer", choices=["qwen", "bpe"], default="qwen")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--like", choices=["qwen2.5-base", "qwen2.5-instruct", "qwen1-base", "qwen1-chat"], default=None,
                   help="copy a real family's tokenizer files, special tokens, eos, chat template and generation config "
                   "(qwen1-*: a first-generation Qwen folder built by its released code in the reference environment)")
    t.set_defaults(func=_cmd_tiny)


def _cmd_tiny(args) -> int:
    import time

    from devops_workloads.tiny import build_tiny_model

    t0 = time.time()
    out = build_tiny_model(args.out, args.tokenizer, args.seed, like=args.like)
    what = f"like {args.like}" if args.like else f"{args.tokenizer} tokenizer"
    print(f"tiny model ({what}) written to {out} in {time.time() - t0:.1f}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devops-model",
        description="DevOps-Model platform: continued pretraining, SFT, exam evaluation, GPTQ int4 and "
        "chat serving for DevOps LLMs, on Kubernetes (custom resources) or on this machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from devops_model import __version__

    parser.add_argument("--version", action="version", version=f"devops-model {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        module_name, func = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # An optional extra is not installed: keep the command visible and say how to get it.
            p = sub.add_parser(name, help=f"(unavailable: {exc.name} is not installed)")
            p.set_defaults(func=lambda _a, exc=exc: _missing(exc))
            continue
        getattr(module, func)(sub)
    return parser


def _missing(exc: ImportError) -> int:
    print(f"error: this command needs {exc.name}, which is not installed: pip install 'devops-model[operator,train,eval,quantize,serve]'", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


