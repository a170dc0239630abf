"""The seed's exam prompt, byte for byte, and its two prompting styles.

    from devops_workloads.evaluate.prompts import render_query, encode_prompt
    text = render_query(exam.questions[0], exam.dev[:5])          # the seed's 5-shot query
    ids = encode_prompt(tokenizer, text, style="chat")              # Qwen chat context tokens

The query is codefuse-devops-eval's (``src/data/data_preprocess.py`` @f0f12d4): the header, then
``问题：{q}``, the options that have a cell as ``X. text``, and ``答案：`` with no newline after it.
k-shot prepends the first k dev rows in file order, each with its own header and ``答案：X\\n``;
the header is repeated before the scored question. ``seed/prompt_examples.txt`` in shared/ holds
two rendered prompts and the tests compare with them byte for byte.

Styles: ``base`` encodes the raw query (the seed's ``ContextBuilder``: ``tokenizer.encode(query)``);
``chat`` wraps it as the seed's ``QwenChatContextBuilder`` did, piece by piece
(``<|im_start|>system\\nyou are a helpful assistant<|im_end|>\\n<|im_start|>user\\n{query}<|im_end|>\\n<|im_start|>assistant\\n``,
lower case, no period), or with the tokenizer's own chat template (``chat_template: tokenizer``,
one user message, the template's own default system prompt).
"""

from __future__ import annotations

from typing import Any, Sequence

from .exams import LETTERS, Question

#: Bump when the rendered text changes; recorded in results.json.
PROMPT_VERSION = "devops-eval-seed-1 (codefuse-devops-eval@f0f12d4 data_preprocess.py)"
HEADER = "以下是关于开发运维领域的单项选择题，请选出其中的正确答案。请直接输出选项。\n"
SYSTEM_PROMPT = "you are a helpful assistant"
STYLES = ("base", "chat")
CHAT_TEMPLATES = ("chatml", "tokenizer")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def render_body(q: Question) -> str:
    """``问题：…\\nA. …\\n…答案：`` for one question (no answer)."""
    text = f"问题：{q.question}\n"
    for letter in LETTERS:
        if letter in q.options:
            text += f"{letter}. {q.options[letter]}\n"
    return text + "答案："


def render_shots(shots: Sequence[Question]) -> str:
    """The few-shot prefix, ending with the header that introduces the scored question."""
    return "".join(HEADER + render_body(s) + f"{s.answer}\n" for s in shots) + HEADER


def render_query(q: Question, shots: Sequence[Question] = ()) -> str:
    """The seed's query for ``q`` with the given dev rows as shots."""
    return render_shots(shots) + render_body(q)


def chatml_text(query: str, system: str = SYSTEM_PROMPT) -> str:
    """The seed's Qwen chat context as text (what :func:`encode_prompt` tokenizes piecewise)."""
    return f"{IM_START}system\n{system}{IM_END}\n{IM_START}user\n{query}{IM_END}\n{IM_START}assistant\n"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _special_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"style chat with template chatml needs the token {token} in the tokenizer; "
                         "use chatTemplate: tokenizer or style base for this model")
    return int(tid)


def encode_prompt(tokenizer: Any, query: str, style: str = "base", chat_template: str = "chatml") -> list[int]:
    """Context token ids for a query, exactly as the seed built them."""
    if style == "base":
        # The seed calls tokenizer.encode(query) with its defaults, so a BOS is added where the
        # tokenizer adds one (Llama) and not for Qwen.
        return list(tokenizer.encode(query))
    if style != "chat":
        raise ValueError(f"style must be one of {', '.join(STYLES)} (got {style!r})")
    if chat_template == "tokenizer":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chatTemplate: tokenizer, but the tokenizer has no chat_template; use chatTemplate: chatml")
        text = tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True)
        return _encode(tokenizer, text)
    if chat_template != "chatml":
        raise ValueError(f"chat_template must be one of {', '.join(CHAT_TEMPLATES)} (got {chat_template!r})")
    lead, trail = _chatml_parts(tokenizer)
    return lead + _encode(tokenizer, query) + trail


def _chatml_parts(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The chatml context before and after the query's own ids. Piece by piece, as
    QwenChatContextBuilder: special tokens by id, text pieces encoded alone."""
    start, end = [_special_id(tokenizer, IM_START)], [_special_id(tokenizer, IM_END)]
    nl = _encode(tokenizer, "\n")
    lead = (start + _encode(tokenizer, "system") + nl + _encode(tokenizer, SYSTEM_PROMPT) + end
            + nl + start + _encode(tokenizer, "user") + nl)
    return lead, end + nl + start + _encode(tokenizer, "assistant") + nl


def _encode_many(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    if getattr(tokenizer, "is_fast", False):  # one call into the Rust tokenizer for all of them
        return [list(x) for x in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    return [list(tokenizer.encode(t, add_special_tokens=add_special_tokens)) for t in texts]


def encode_queries(tokenizer: Any, prefix: str, bodies: Sequence[str], add_special_tokens: bool) -> tuple[list[list[int]], bool]:
    """Token ids of ``prefix + body`` for every body, exactly as encoding each whole text, with the
    shared prefix tokenized once and the bodies in one batched call when that gives the same ids.

    The seam is safe when the tokenizer splits there (Qwen's pre-tokenizer ends a piece at the
    header's newline): checked on the first and the longest body by encoding those whole; every
    body starts with the same text (``问题：``), so the seam behaves alike for all. Otherwise (a
    merge or a leading-space marker across the seam) every text is encoded whole. Returns
    (ids per body, whether the prefix was shared)."""
    if not bodies:
        return [], False
    head = list(tokenizer.encode(prefix, add_special_tokens=add_special_tokens)) if prefix else None
    tails = _encode_many(tokenizer, list(bodies), add_special_tokens=head is None and add_special_tokens)
    if head is not None:
        probes = {0, max(range(len(bodies)), key=lambda i: len(bodies[i]))}
        whole = _encode_many(tokenizer, [prefix + bodies[i] for i in sorted(probes)], add_special_tokens)
        if all(w == head + tails[i] for w, i in zip(whole, sorted(probes))):
            return [head + t for t in tails], True
        return _encode_many(tokenizer, [prefix + b for b in bodies], add_special_tokens), False
    return tails, False


def encode_prompts(tokenizer: Any, prefix: str, bodies: Sequence[str], style: str = "base",
                   chat_template: str = "chatml") -> tuple[list[list[int]], bool]:
    """:func:`encode_prompt` of ``prefix + body`` for every body (the few-shot block and the
    questions of one exam setting), with the prefix tokenized once where that is exact
    (:func:`encode_queries`); the tokenizer's own chat template encodes each prompt whole."""
    if style == "base":
        return encode_queries(tokenizer, prefix, bodies, add_special_tokens=True)
    if style == "chat" and chat_template == "chatml":
        lead, trail = _chatml_parts(tokenizer)
        queries, shared = encode_queries(tokenizer, prefix, bodies, add_special_tokens=False)
        return [lead + q + trail for q in queries], shared
    return [encode_prompt(tokenizer, prefix + b, style, chat_template) for b in bodies], False


def prompt_text(tokenizer: Any, query: str, style: str = "base", chat_template: str = "chatml") -> str:
    """The text the model sees (for logs and the template record in results.json)."""
    if style == "base":
        return query
    if chat_template == "tokenizer":
        return tokenizer.apply_chat_template([{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True)
    return chatml_text(query)
