"""``devops-model serve``: run the built-in chat server (registered in cli/devops_cli/__init__.py).

Light at import time (no torch, no FastAPI): the server is imported when the command runs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from devops_model.commandline import add_command

EXAMPLES = """\
examples:
  devops-model serve --model /tmp/tiny --port 8000
  devops-model serve --model /models/sft-int4 --host 0.0.0.0 --served-model-name devops-chat \\
      --max-concurrency 32 --api-key-file /var/run/secrets/api-key --lineage-file lineage.json
  DEVOPS_MODEL_API_KEY=s3cret devops-model serve --model ./merged
  devops-model serve --upstream http://127.0.0.1:8001 --lineage-file lineage.json   # web chat for vLLM/TGI

then:
  devops-model chat --url http://127.0.0.1:8000              # terminal chat
  open http://127.0.0.1:8000/                                 # web chat
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "什么是 Kubernetes？"}], "stream": true}'

/health answers 200 once the model is loaded (503 while loading); /metrics is Prometheus.
Routes, parameters and the lineage file format: docs/serving.md.
"""


def register(sub) -> None:
    p = add_command(
        sub, "serve", "run the built-in chat server (OpenAI + TGI APIs, web chat, metrics)",
        "Serve a local model (plain, LoRA-merged, LoRA adapter or GPTQ int4) over HTTP: "
        "OpenAI-compatible /v1/chat/completions, /v1/completions and /v1/models (streaming with SSE), "
        "TGI-compatible /generate and /generate_stream, /health, Prometheus /metrics and a web chat at /. "
        "Concurrent requests are decoded together in one batch; beyond --max-concurrency the server "
        "answers 429.", EXAMPLES)
    p.add_argument("--model", default=None, help="model folder (or a file:// / pvc:// URI)")
    p.add_argument("--upstream", default=None, metavar="URL",
                   help="instead of a model: serve the web chat and /v1/info in front of another engine "
                   "(vLLM, TGI) at URL and pass its API through (a sidecar next to it)")
    p.add_argument("--engine-name", default=None, metavar="NAME",
                   help="with --upstream: the engine's name shown by /v1/info and the web chat (vllm, tgi)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a pod; default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port for the API, web chat, /health and /metrics (default %(default)s)")
    p.add_argument("--served-model-name", default=None, help="model id in the API (default: the folder name)")
    p.add_argument("--max-concurrency", type=int, default=16, metavar="N",
                   help="requests admitted at once, running plus queued; more get 429 (default %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=None, metavar="B",
                   help="sequences decoded together per forward step (default: min(16, N))")
    p.add_argument("--max-model-len", type=int, default=None, metavar="TOKENS",
                   help="prompt + answer tokens (default: the model's max_position_embeddings)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads for a model on the CPU (default: OMP_NUM_THREADS when set, else the "
                   "usable cores: the CPU affinity capped by a cgroup CPU limit such as a pod's limits.cpu)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key-file", type=Path, default=None,
                     help="require 'Authorization: Bearer KEY', KEY being this file's content "
                     "(or set DEVOPS_MODEL_API_KEY)")
    key.add_argument("--api-key", default=None, help="the key itself (visible in ps; prefer --api-key-file)")
    p.add_argument("--lineage-file", type=Path, default=None,
                   help="JSON with lineage and exam scores, shown by the web chat and /v1/info")
    p.add_argument("--no-ui", action="store_true", help="do not serve the web chat at /")
    p.add_argument("--strict-model-name", action="store_true",
                   help="answer 404 to a request naming another model (default: any name means the one served, as TGI)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code (only if you trust it)")
    p.add_argument("--no-fast-decode", action="store_true",
                   help="run every decode step through the model's transformers forward instead of the lean "
                   "Qwen2/Llama decode step (same tokens, slower; as DEVOPS_MODEL_SERVE_FAST_DECODE=0)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_cmd_serve)


def config_from_args(args):
    """ServerConfig from parsed arguments; exits with a clear message on a bad flag or file."""
    from devops_model.uris import local_path

    from .app import ServerConfig

    model = str(local_path(args.model)) if "://" in args.model else args.model
    if not Path(model).is_dir():
        raise SystemExit(f"error: --model {args.model}: no such folder")
    api_key = None
    if args.api_key_file:
        try:
            api_key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SystemExit(f"error: --api-key-file {args.api_key_file}: {exc.strerror}") from None
        if not api_key:
            raise SystemExit(f"error: --api-key-file {args.api_key_file} is empty")
    elif args.api_key:
        api_key = args.api_key
    elif os.environ.get("DEVOPS_MODEL_API_KEY"):
        api_key = os.environ["DEVOPS_MODEL_API_KEY"].strip()
    lineage = _read_lineage(args.lineage_file)
    if args.max_concurrency < 1:
        raise SystemExit("error: --max-concurrency must be at least 1")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise SystemExit("error: --max-batch-size must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise SystemExit("error: --threads must be at least 1")
    return ServerConfig(
        model_dir=model,
        served_model_name=args.served_model_name or Path(model).resolve().name,
        max_concurrency=args.max_concurrency,
        max_batch_size=args.max_batch_size,
        max_model_len=args.max_model_len,
        api_key=api_key,
        lineage=lineage,
        ui=not args.no_ui,
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        strict_model_name=args.strict_model_name,
        threads=args.threads,
    )


def _read_lineage(path: Path | None) -> dict:
    if path is None:
        return {}
    if not path.exists():
        # Lineage only decorates the web chat: a missing file must not keep the model from being served.
        print(f"warning: --lineage-file {path} does not exist; serving without lineage and scores", file=sys.stderr)
        return {}
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SystemExit(f"error: --lineage-file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: --lineage-file {path} is not valid JSON: {exc}") from None
    if not isinstance(lineage, dict):
        raise SystemExit(f"error: --lineage-file {path} must hold a JSON object (see docs/serving.md)")
    return lineage


def serve(config, host: str, port: int, log_level: str = "info") -> None:
    """Run the server in the foreground until SIGINT/SIGTERM."""
    import logging

    from ..processes import sleeping_openmp_threads

    openmp = sleeping_openmp_threads()  # before torch loads (uvicorn's app imports it)
    import uvicorn

    from .app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("devops_model.serve").info("%s", openmp)
    print(f"serving {config.model_dir} as {config.served_model_name!r} on http://{host}:{port} "
          f"(web chat {'at /' if config.ui else 'off'}; API key {'required' if config.api_key else 'not required'})",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)


def _cmd_serve(args) -> int:
    if args.upstream:
        return _serve_proxy(args)
    if not args.model:
        raise SystemExit("error: give --model DIR (serve a model) or --upstream URL (web chat in front of vLLM/TGI)")
    config = config_from_args(args)
    if args.no_fast_decode:
        from .fastpath import ENV

        os.environ[ENV] = "0"  # read by the engine, which loads in this process
    serve(config, args.host, args.port, args.log_level)
    return 0


def _serve_proxy(args) -> int:
    import uvicorn

    from .proxy import create_proxy_app

    if args.model:
        raise SystemExit("error: --model and --upstream exclude each other: the model is served by the upstream engine")
    lineage = _read_lineage(args.lineage_file)
    print(f"web chat and /v1/info on http://{args.host}:{args.port}, API passed through to {args.upstream}",
          file=sys.stderr, flush=True)
    app = create_proxy_app(args.upstream, args.served_model_name, lineage, ui=not args.no_ui,
                           engine=args.engine_name or "upstream")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
