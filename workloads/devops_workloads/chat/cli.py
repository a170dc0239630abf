"""``devops-model chat``: a terminal chat with streaming and history, like the seed's cli_demo.

    devops-model chat --url http://127.0.0.1:8000
    devops-model chat --url http://tgi:8080 --api tgi
    devops-model chat --url http://chat.team.svc:8000 --api-key-file key.txt --query "什么是 Pod？"

Type ``clear`` to forget the history and ``exit`` to quit. Registered in cli/devops_cli/__init__.py; the
HTTP clients are imported when the command runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from devops_model.commandline import add_command

EXAMPLES = """\
examples:
  devops-model chat --url http://127.0.0.1:8000                  built-in server, vLLM or TGI's Messages API
  devops-model chat --url http://tgi.models.svc:8080 --api tgi    TGI's native /generate_stream
  devops-model chat --url http://chat:8000 --api-key-file key.txt --query "如何查看 Pod 日志？"
  kubectl port-forward svc/devops-chat 8000 & devops-model chat --url http://127.0.0.1:8000

In the chat: `clear` forgets the history, `exit` (or Ctrl-D) quits.
The API key can also come from DEVOPS_MODEL_API_KEY.
"""

WELCOME = "Welcome to the DevOps-Model chat. Type `clear` to clear the history, `exit` to quit.\n欢迎使用 DevOps-Model 对话：输入 clear 清空历史，输入 exit 退出。"


def register(sub) -> None:
    p = add_command(
        sub, "chat", "terminal chat with a served model (OpenAI-compatible or TGI), streaming, with history",
        "Chat with a model served by the built-in server, vLLM or TGI. Answers stream as "
        "they are generated; the conversation history is sent with every question.", EXAMPLES)
    p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is fine)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="API key (or set DEVOPS_MODEL_API_KEY)")
    key.add_argument("--api-key-file", type=Path, default=None, help="read the API key from this file")
    p.add_argument("--api", choices=["openai", "tgi"], default="openai",
                   help="openai: /v1/chat/completions (default); tgi: TGI's native /generate_stream")
    p.add_argument("--model", default=None, help="model id to request (default: the server's, from /v1/models)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--max-tokens", type=int, default=None, help="longest answer in tokens (default: the server's)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the server's)")
    p.add_argument("--query", default=None, help="ask this one question, print the answer and exit")
    p.set_defaults(func=_cmd_chat)


def _cmd_chat(args) -> int:
    from .client import ChatClient

    api_key = args.api_key
    if args.api_key_file:
        try:
            api_key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"error: --api-key-file {args.api_key_file}: {exc.strerror}", file=sys.stderr)
            return 2
    api_key = api_key or os.environ.get("DEVOPS_MODEL_API_KEY")
    client = ChatClient(args.url, api_key=api_key, api=args.api, model=args.model, system=args.system)
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    if args.query is not None:
        ok = _answer(client, args.query, [], params, prefix="")
        return 0 if ok is not None else 1
    print(WELCOME)
    history: list[tuple[str, str]] = []
    while True:
        try:
            query = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not query:
            continue
        if query == "exit":
            return 0
        if query == "clear":
            history = []
            print("History cleared. 历史已清空。")
            continue
        response = _answer(client, query, history, params, prefix="Assistant: ")
        if response is not None:
            history.append((query, response))


def _answer(client, query, history, params, prefix: str) -> str | None:
    """Stream one answer to stdout; the answer, or None after printing why it failed."""
    print(prefix, end="", flush=True)
    pieces: list[str] = []
    try:
        for piece in client.stream_chat(query, history, **params):
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print("\n(interrupted)")
        return "".join(pieces)
    except Exception as exc:  # connection refused, 401, 429, 400: say what the server said and go on
        print(f"\nerror: {_describe(exc, client.url)}", file=sys.stderr, flush=True)
        return None
    print(flush=True)
    return "".join(pieces)


def _describe(exc: Exception, url: str) -> str:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    body = getattr(exc, "body", None)
    message = None
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message") if isinstance(body.get("error"), dict) else body.get("message") or body.get("error")
    if status == 401:
        return f"{url} needs an API key (--api-key, --api-key-file or DEVOPS_MODEL_API_KEY): {message or exc}"
    if status == 429:
        return f"{url} is busy (429): {message or exc}; try again shortly"
    if status:
        return f"{url} answered {status}: {message or exc}"
    name = type(exc).__name__
    if "Connection" in name or "connect" in str(exc).lower():
        return f"could not reach {url}: {exc} (is the server running? check --url)"
    return f"{name}: {exc}"
