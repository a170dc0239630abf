"""The hermes tool-call parser (serve/tools.py) on answers a model writes, whole and streamed in
every possible split, and the tool-support probe of chat templates."""

from __future__ import annotations

import json

import pytest

from devops_workloads.serve.tools import ToolCallStream, parse_tool_calls, supports_tools

CALL = '<tool_call>\n{"name": "get_pods", "arguments": {"ns": "prod", "limit": 3}}\n</tool_call>'
TWO = CALL + "\n" + '<tool_call>\n{"name": "restart", "arguments": {"deployment": "web"}}\n</tool_call>'

# (id, model answer, expected content, expected [(name, arguments)])
ANSWERS = [
    ("plain-text", "Pods are the smallest unit.", "Pods are the smallest unit.", []),
    ("one-call", CALL, None, [("get_pods", {"ns": "prod", "limit": 3})]),
    ("two-calls", TWO, None, [("get_pods", {"ns": "prod", "limit": 3}), ("restart", {"deployment": "web"})]),
    ("text-then-call", "Let me check.\n" + CALL, "Let me check.", [("get_pods", {"ns": "prod", "limit": 3})]),
    ("unterminated-call", '<tool_call>\n{"name": "get_pods", "arguments": {}}', None, [("get_pods", {})]),
    ("chinese-arguments", '<tool_call>\n{"name": "查询", "arguments": {"服务": "支付"}}\n</tool_call>', None, [("查询", {"服务": "支付"})]),
    ("broken-json-stays-text", "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
    ("no-name-stays-text", '<tool_call>\n{"arguments": {}}\n</tool_call>', '<tool_call>\n{"arguments": {}}\n</tool_call>', []),
]


@pytest.mark.parametrize("answer,content,calls", [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS])
def test_whole_answers_are_parsed_like_vllms_hermes_parser(answer, content, calls):
    got_content, got = parse_tool_calls(answer)
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got)
    assert len({c["id"] for c in got}) == len(got)


def stream(answer: str, sizes) -> list[dict]:
    parser = ToolCallStream()
    deltas, i, k = [], 0, 0
    while i < len(answer):
        n = sizes[k % len(sizes)]
        deltas += parser.feed(answer[i:i + n])
        i, k = i + n, k + 1
    return deltas + parser.finish()


@pytest.mark.parametrize("sizes", [[1], [2], [3, 1], [7], [1000]], ids=["by-1", "by-2", "by-3-1", "by-7", "whole"])
@pytest.mark.parametrize("answer,content,calls", [a[1:] for a in ANSWERS], ids=[a[0] for a in ANSWERS])
def test_streamed_answers_give_the_same_calls_whatever_the_split(answer, content, calls, sizes):
    deltas = stream(answer, sizes)
    text = "".join(d.get("content", "") for d in deltas)
    got = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert [c["index"] for c in got] == list(range(len(calls)))
    if calls:
        assert text.strip() == (content or "")
        # no piece of the tag ever leaks out as content
        assert "<tool" not in text and "</tool" not in text
    else:
        assert text == answer


def test_tool_support_is_read_from_the_chat_template(tiny_bpe, tiny_qwen25):
    from transformers import AutoTokenizer

    assert supports_tools(AutoTokenizer.from_pretrained(tiny_qwen25)) is True
    assert supports_tools(AutoTokenizer.from_pretrained(tiny_bpe)) is False  # plain chatml knows no tools
