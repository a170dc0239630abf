"""The chat clients against a real server: the terminal client through a pseudo-terminal (pexpect),
as a person types, and the Python API that mirrors the seed's ``chat(query, history)``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pexpect
import pytest

from devops_workloads.chat import ChatClient, chat
from tests.plugins.serve import API_KEY, cli, free_port

WELCOME = "Type `clear` to clear the history, `exit` to quit."


def prompt_tokens_total(server) -> float:
    m = httpx.get(server.url + "/metrics").text
    return float(re.search(r"^devops_model_prompt_tokens_total (\S+)$", m, re.M).group(1))


def usage_of(server, messages) -> int:
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 1}, timeout=60)
    return r.json()["usage"]["prompt_tokens"]


def spawn_chat(*args: str) -> pexpect.spawn:
    exe, *rest = cli()
    return pexpect.spawn(exe, [*rest, "chat", *args], encoding="utf-8", timeout=90, dimensions=(40, 200),
                         env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                              "TERM": "dumb", "PYTHONUNBUFFERED": "1"})


def on_screen(text: str) -> str:
    return text.replace("\n", "\r\n")  # the terminal turns \n into \r\n


def test_terminal_chat_streams_keeps_history_clears_and_exits(bpe_server):
    client = ChatClient(bpe_server.url)
    first, history = client.chat("Kubernetes", [], max_tokens=8)
    second, _ = client.chat("Prometheus", history, max_tokens=8)

    term = spawn_chat("--url", bpe_server.url, "--max-tokens", "8")
    term.expect_exact(WELCOME)
    term.expect_exact("User: ")
    term.sendline("Kubernetes")
    term.expect_exact("Assistant: " + on_screen(first))
    term.expect_exact("User: ")

    # second turn: the question goes with the first turn as history
    before = prompt_tokens_total(bpe_server)
    term.sendline("Prometheus")
    term.expect_exact("Assistant: " + on_screen(second))
    term.expect_exact("User: ")
    with_history = [{"role": "user", "content": "Kubernetes"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "Prometheus"}]
    assert prompt_tokens_total(bpe_server) - before == usage_of(bpe_server, with_history)

    # clear: the next question goes alone
    term.sendline("clear")
    term.expect_exact("History cleared")
    before = prompt_tokens_total(bpe_server)
    term.sendline("Prometheus")
    term.expect_exact("Assistant: ")
    term.expect_exact("User: ")
    assert prompt_tokens_total(bpe_server) - before == usage_of(bpe_server, [{"role": "user", "content": "Prometheus"}])

    term.sendline("exit")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0


def test_terminal_chat_tgi_native_api_with_key_file(qwen_server, tmp_path):
    key = tmp_path / "key"
    key.write_text(API_KEY)
    expected, _ = ChatClient(qwen_server.url, api="tgi", api_key=API_KEY).chat("什么是 Pod？", [], max_tokens=6)
    term = spawn_chat("--url", qwen_server.url, "--api", "tgi", "--api-key-file", str(key), "--max-tokens", "6")
    term.expect_exact("User: ")
    term.sendline("什么是 Pod？")
    term.expect_exact("Assistant: " + on_screen(expected))
    term.expect_exact("User: ")
    term.sendeof()  # Ctrl-D quits too
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0


def test_terminal_chat_explains_errors_and_goes_on(qwen_server):
    term = spawn_chat("--url", qwen_server.url, "--api-key", "wrong")
    term.expect_exact("User: ")
    term.sendline("hello")
    term.expect_exact("needs an API key")
    term.expect_exact("User: ")  # still running
    term.sendline("exit")
    term.expect(pexpect.EOF)

    dead = f"http://127.0.0.1:{free_port()}"
    term = spawn_chat("--url", dead, "--query", "hello")
    term.expect_exact(f"could not reach {dead}")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 1


def test_python_api_mirrors_the_seed(bpe_server, qwen_server):
    response, history = chat("Kubernetes", [], url=bpe_server.url, max_tokens=6)
    assert response and history == [("Kubernetes", response)]
    # history in the seed's list-of-lists form works as well, and a trailing /v1 in the URL is fine
    response2, history2 = chat("Prometheus", [["Kubernetes", response]], url=bpe_server.url + "/v1", max_tokens=6)
    assert history2 == [("Kubernetes", response), ("Prometheus", response2)]
    plain = httpx.post(bpe_server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "Kubernetes"}, {"role": "assistant", "content": response},
                     {"role": "user", "content": "Prometheus"}], "max_tokens": 6}).json()
    assert response2 == plain["choices"][0]["message"]["content"]
    # TGI's native API gives the same greedy answer as the OpenAI API for the same chatml prompt
    via_tgi, _ = chat("什么是 Pod？", [], url=qwen_server.url, api="tgi", api_key=API_KEY, max_tokens=6)
    via_openai, _ = chat("什么是 Pod？", [], url=qwen_server.url, api_key=API_KEY, max_tokens=6)
    assert via_tgi == via_openai


def test_chat_help_teaches():
    out = pexpect.run(" ".join([*cli(), "chat", "--help"]), encoding="utf-8", timeout=30)
    assert "clear" in out and "exit" in out and "--api tgi" in out and "DEVOPS_MODEL_API_KEY" in out
