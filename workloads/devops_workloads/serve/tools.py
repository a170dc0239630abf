"""Tool calling for models whose chat template supports it (Qwen2.5's, hermes style).

The tools are rendered by the chat template (prompts.py); the model answers a call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Hangzhou"}}
    </tool_call>

and :func:`parse_tool_calls` (whole answers) or :class:`ToolCallStream` (streamed deltas) turn
that into OpenAI ``tool_calls``, as vLLM's ``hermes`` parser does. A block whose JSON does not
parse stays text. ``tool_choice: "required"`` or a named function are enforced by constrained
decoding (guided.py: :func:`tool_call_schema`), so the answer is a call whatever the model.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_PROBE = "devops_model_probe_tool"


def supports_tools(tokenizer: Any) -> bool:
    """True when the chat template renders tools: a probe tool's name appears in the prompt."""
    cached = getattr(tokenizer, "_devops_model_tools", None)
    if cached is not None:
        return cached
    ok = False
    if getattr(tokenizer, "chat_template", None):
        probe = [{"type": "function", "function": {"name": _PROBE, "description": "probe", "parameters": {"type": "object"}}}]
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tools=probe, tokenize=False,
                                                 add_generation_prompt=True)
            ok = _PROBE in text
        except Exception:  # a template that breaks on tools does not support them
            ok = False
    tokenizer._devops_model_tools = ok
    return ok


def _call(obj: Any) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": obj["name"],
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}}


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content before the first call or None, tool calls) of a whole answer."""
    start = text.find(OPEN)
    if start < 0:
        return text, []
    calls = []
    for block in _BLOCK.findall(text[start:]):
        try:
            call = _call(json.loads(block))
        except json.JSONDecodeError:
            call = None
        if call is None:
            return text, []  # not a well-formed call: the answer stays text, as vLLM's parser does
        calls.append(call)
    content = text[:start].strip()
    return (content or None), calls


class ToolCallStream:
    """Splits streamed text into content deltas and tool-call deltas.

    Text before ``<tool_call>`` streams as content (a possible start of the tag is held back);
    each call is sent whole, as one ``tool_calls`` delta, once its ``</tool_call>`` arrives, and
    an unterminated call at the end is parsed as far as it goes."""

    def __init__(self) -> None:
        self.buffer = ""
        self.in_call = False
        self.calls = 0
        self.content_sent = False

    def feed(self, text: str) -> list[dict]:
        self.buffer += text
        out = []
        while True:
            if not self.in_call:
                at = self.buffer.find(OPEN)
                if at < 0:
                    hold = max((k for k in range(1, len(OPEN)) if self.buffer.endswith(OPEN[:k])), default=0)
                    send, self.buffer = self.buffer[:len(self.buffer) - hold], self.buffer[len(self.buffer) - hold:]
                    if send:
                        out.append({"content": send})
                    return out
                if self.buffer[:at].strip() or (self.buffer[:at] and self.content_sent):
                    out.append({"content": self.buffer[:at]})
                self.buffer = self.buffer[at + len(OPEN):]
                self.in_call = True
            end = self.buffer.find(CLOSE)
            if end < 0:
                return out
            out.extend(self._call(self.buffer[:end]))
            self.buffer = self.buffer[end + len(CLOSE):]
            self.in_call = False

    def _call(self, block: str) -> list[dict]:
        try:
            call = _call(json.loads(block.strip()))
        except json.JSONDecodeError:
            call = None
        if call is None:
            return [{"content": OPEN + block + CLOSE}]
        delta = {"tool_calls": [{"index": self.calls, **call}]}
        self.calls += 1
        return [delta]

    def finish(self) -> list[dict]:
        """What is left when the answer ends."""
        rest, self.buffer = self.buffer, ""
        if self.in_call:
            self.in_call = False
            out = self._call(rest)
            return [{"content": OPEN + rest}] if out and "content" in out[0] else out
        return [{"content": rest}] if rest else []
