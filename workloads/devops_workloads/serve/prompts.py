"""The prompt of a chat request: one function, so that what the server renders follows the
model's own template (templates.py) in one place.

    prompt = chat_prompt(tokenizer, messages, tools=None)

* A tokenizer with a chat template renders the messages itself (tools too, when the template
  knows them: Qwen2.5's does, as ``<tools>`` in the system turn).
* Without one, the seed's ``chatml`` template of templates.py renders the conversation.

OpenAI's ``developer`` role is the newer name of ``system`` and is rendered as such; an assistant
turn's ``tool_calls`` reach the template with their arguments as objects (OpenAI sends them as
JSON text; Qwen2.5's template writes ``arguments | tojson``, so text would be quoted twice).
"""

from __future__ import annotations

import json
from typing import Any

from ..templates import get_template


def template_messages(messages: list[Any]) -> list[dict]:
    """Request messages (protocol.ChatMessage) as the dicts a chat template reads."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.content or ""}
        if m.tool_calls:
            d["tool_calls"] = [{"id": c.id, "type": "function",
                                "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                               for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
        out.append(d)
    return out


def chat_prompt(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> str:
    """The text the model continues to answer the conversation (generation prompt included)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True)
    if tools:
        raise ValueError("the tokenizer has no chat template, so it cannot render tools")
    return _chatml(messages)


def _chatml(messages: list[dict]) -> str:
    """The seed's chatml template over (query, response) turns; a run of messages of one role is
    one turn, and a tool result counts as the user's."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns: list[list[str]] = []  # [query, response]
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        if role in ("user", "tool"):
            if turns and turns[-1][1] == "" and turns[-1][0]:
                turns[-1][0] += "\n" + m["content"]
            else:
                turns.append([m["content"], ""])
        else:  # assistant
            if not turns:
                turns.append(["", ""])
            turns[-1][1] += ("\n" if turns[-1][1] else "") + m["content"]
    *history, (query, _) = turns
    return get_template("chatml").render_prompt([tuple(t) for t in history], query, system=system)


def fit_history(eng: Any, messages: list[dict], tools: list[dict] | None, max_tokens: int | None) -> list[dict]:
    """Drop the oldest turns that do not fit the model length (and the model's ``max_window_size``,
    as Qwen-1's make_context does) instead of refusing the request."""
    from ..conventions import fit_history as fit

    def count(msgs: list[dict], generation_prompt: bool) -> int:
        if getattr(eng.tokenizer, "chat_template", None):
            text = eng.tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False,
                                                     add_generation_prompt=generation_prompt)
        else:
            text = _chatml(msgs)
        return len(eng.tokenizer(text, add_special_tokens=False).input_ids)

    window = getattr(getattr(eng.model, "generation_config", None), "max_window_size", None)
    return fit(messages, count, eng.max_model_len - (max_tokens or 1), window)
