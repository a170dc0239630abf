"""Constrained decoding for ``response_format`` (``json_object``, ``json_schema``) and forced tool
calls, with xgrammar.

    grammars = Grammars(tokenizer, vocab_size=model.config.vocab_size, stop_ids={151645})
    params.constraint = grammars.json_schema(schema)          # one matcher per request

Why xgrammar: it is the structured-output backend vLLM, SGLang and TensorRT-LLM use by default,
maintained by the MLC team, with prebuilt wheels (no Rust or CUDA toolchain), a CPU path for the
token mask, JSON-schema, EBNF and regex grammars, and a per-tokenizer cache: compiling a schema
for Qwen's 151k vocabulary takes milliseconds after a one-off second. outlines compiles regexes to
automata per schema (slower on first use, heavier dependency tree); llguidance is as good on
speed but is not the engines' default. The engine asks each request's constraint to mask the
logits before sampling, and tells it every sampled token (engine.py, ``SamplingParams.constraint``).
"""

from __future__ import annotations

import threading
from typing import Any


class Constraint:
    """One request's grammar state: masks what may come next, follows what came."""

    def __init__(self, compiled, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask(self, logits_row) -> None:
        """Set the logits of every token the grammar forbids next to -inf (in place)."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        row = logits_row.view(1, -1)
        self._xgr.apply_token_bitmask_inplace(row, self.bitmask.to(row.device), vocab_size=min(self.vocab_size, row.shape[-1]))

    def accept(self, token: int) -> None:
        if not self.matcher.is_terminated():
            self.matcher.accept_token(token)

    @property
    def finished(self) -> bool:
        return self.matcher.is_terminated()


class Grammars:
    """Compiles grammars for one tokenizer (thread-safe; xgrammar caches compiled schemas)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: set[int]):
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self.compiler = xgr.GrammarCompiler(info)
        self.lock = threading.Lock()

    def _constraint(self, compiled) -> Constraint:
        return Constraint(compiled, self.vocab_size)

    def json_object(self) -> Constraint:
        """Any JSON object (``response_format: {"type": "json_object"}``)."""
        return self.json_schema({"type": "object"})

    def json_schema(self, schema: dict) -> Constraint:
        """JSON that satisfies ``schema``; ValueError when the schema cannot be compiled."""
        with self.lock:
            try:
                compiled = self.compiler.compile_json_schema(schema, any_whitespace=False, strict_mode=True)
            except Exception as exc:  # xgrammar raises RuntimeError/InvalidJSONError with the reason
                raise ValueError(f"the JSON schema cannot be used for constrained decoding: {exc}") from None
        return self._constraint(compiled)

    def tool_call(self, tools: list[dict]) -> Constraint:
        """Exactly one hermes-style call of one of ``tools`` (OpenAI tool dicts)."""
        xgr = self._xgr
        with self.lock:
            try:
                body = xgr.Grammar.from_json_schema(tool_call_schema(tools), any_whitespace=False, strict_mode=True)
            except Exception as exc:
                raise ValueError(f"a tool's parameters cannot be used for constrained decoding: {exc}") from None
            grammar = xgr.Grammar.concat(xgr.Grammar.from_ebnf('root ::= "<tool_call>\\n"'), body,
                                         xgr.Grammar.from_ebnf('root ::= "\\n</tool_call>"'))
            compiled = self.compiler.compile_grammar(grammar)
        return self._constraint(compiled)


def tool_call_schema(tools: list[dict]) -> dict:
    """JSON schema of ``{"name": N, "arguments": {...}}`` for any of the tools."""
    options = []
    for t in tools:
        f = t["function"]
        options.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                        "properties": {"name": {"enum": [f["name"]]},
                                       "arguments": f.get("parameters") or {"type": "object"}}})
    return options[0] if len(options) == 1 else {"anyOf": options}
