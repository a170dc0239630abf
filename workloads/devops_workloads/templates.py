"""Prompt templates for training and serving: the seed's ``chatml`` and ``default``, and ``auto``.

    from devops_workloads.templates import get_template
    tpl = get_template("chatml")
    pairs = tpl.encode_multiturn(tokenizer, [("Q1", "A1"), ("Q2", "A2")], system=None)
    prompt = tpl.render_prompt([("Q1", "A1")], "Q2")          # text for generation
    tpl.stop_words                                             # ["<|im_end|>"]

``chatml`` and ``default`` are exactly the seed's (LLaMA-Efficient-Tuning 0.1.7
``extras/template.py``, see ``SEED_SPEC.md`` §1c): each piece of a template is tokenized on its
own (special tokens by id, text without added special tokens) and the pieces are concatenated, so
the token ids are the seed's, not those of tokenizing the rendered string in one go.

    turn 0:  bos + prefix + sep + prompt(query)  ->  response + eos
    turn t:  sep + bos + prompt(query)           ->  response + eos

``auto`` uses the tokenizer's own chat template (``tokenizer.apply_chat_template``); the source of
turn t is what the template adds up to the generation prompt, the target is the rest of the turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

#: A template piece: plain text (with ``{{system}}``/``{{query}}``/``{{idx}}``) or a special token.
Piece = Union[str, dict]
#: One exchange: (user query, assistant response).
Turn = tuple[str, str]

NAMES = ("chatml", "default", "auto")


@dataclass(frozen=True)
class Template:
    """A seed-style template (``auto`` defers to the tokenizer's chat template)."""

    name: str
    prefix: tuple[Piece, ...] = ()
    prompt: tuple[Piece, ...] = ()
    system: str = ""
    sep: tuple[Piece, ...] = ()
    stop_words: tuple[str, ...] = ()
    uses_tokenizer_template: bool = False

    # ------------------------------------------------------------------ text (serving, goldens)

    def render_text(self, turns: Sequence[Turn], system: str | None = None) -> list[tuple[str, str]]:
        """(source text, target text) per turn; tokens are rendered as their text."""
        if self.uses_tokenizer_template:
            raise ValueError("template auto renders through a tokenizer: use encode_multiturn")
        system = system or self.system
        out = []
        for idx, (query, resp) in enumerate(turns):
            if idx == 0:
                prefix = _text(self.prefix, system=system)
                head = prefix + _text(self.sep) if prefix else ""
            else:
                head = _text(self.sep)
            out.append((head + _text(self.prompt, query=query, idx=str(idx)), resp))
        return out

    def render_prompt(self, history: Sequence[Turn], query: str, system: str | None = None,
                      tokenizer: Any = None) -> str:
        """The text a model continues to answer ``query`` after ``history`` (seed encode_oneturn).

        Earlier responses are followed by the stop word (eos), as in training."""
        if self.uses_tokenizer_template:
            if tokenizer is None:
                raise ValueError("template auto needs the tokenizer")
            msgs = _messages(list(history) + [(query, "")], system)[:-1]
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        eos = self.stop_words[0] if self.stop_words else ""
        parts = self.render_text(list(history) + [(query, "")], system)
        return "".join(src + (tgt + eos if i < len(parts) - 1 else "") for i, (src, tgt) in enumerate(parts))

    # ------------------------------------------------------------------ token ids (training)

    def eos_token(self, tokenizer: Any) -> str:
        """The seed's tokenizer fix-up: the first stop word becomes eos; else the tokenizer's eos,
        else ``<|im_end|>``."""
        if self.stop_words:
            return self.stop_words[0]
        return tokenizer.eos_token or "<|im_end|>"

    def encode_multiturn(self, tokenizer: Any, turns: Sequence[Turn], system: str | None = None
                         ) -> list[tuple[list[int], list[int]]]:
        """(source ids, target ids) per turn; every target ends with eos."""
        if self.uses_tokenizer_template:
            return _encode_with_chat_template(tokenizer, turns, system)
        system = system or self.system
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", True) else []
        eos_id = tokenizer.convert_tokens_to_ids(self.eos_token(tokenizer))
        sep_ids = _ids(tokenizer, self.sep)
        pairs = []
        for idx, (query, resp) in enumerate(turns):
            if idx == 0:
                prefix_ids = _ids(tokenizer, self.prefix, system=system)
                head = bos + prefix_ids + sep_ids if prefix_ids else list(bos)
            else:
                head = sep_ids + bos
            src = head + _ids(tokenizer, self.prompt, query=query, idx=str(idx))
            tgt = _ids(tokenizer, [resp]) + [eos_id]
            pairs.append((src, tgt))
        return pairs


def _fill(text: str, **values: str) -> str:
    for key, val in values.items():
        text = text.replace("{{" + key + "}}", val)
    return text


def _text(pieces: Sequence[Piece], **values: str) -> str:
    return "".join(p["token"] if isinstance(p, dict) else _fill(p, **values) for p in pieces)


def _ids(tokenizer: Any, pieces: Sequence[Piece], **values: str) -> list[int]:
    out: list[int] = []
    for p in pieces:
        if isinstance(p, dict):
            out.append(tokenizer.convert_tokens_to_ids(p["token"]))
        else:
            text = _fill(p, **values)
            if text:  # the seed skips empty pieces (an empty system prompt adds nothing)
                out.extend(tokenizer.encode(text, add_special_tokens=False))
    return out


def _messages(turns: Sequence[Turn], system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    for q, r in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    return msgs


def _encode_with_chat_template(tokenizer: Any, turns: Sequence[Turn], system: str | None):
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template auto: the tokenizer has no chat_template; use template chatml or default")
    msgs = _messages(turns, system)
    offset = 1 if system else 0
    pairs = []
    done = ""
    for idx in range(len(turns)):
        upto = msgs[: offset + 2 * idx + 1]
        prompt = tokenizer.apply_chat_template(upto, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(msgs[: offset + 2 * idx + 2], tokenize=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError("template auto: the tokenizer's chat template is not incremental "
                             "(rendering more turns changes earlier text); use chatml or default")
        src, tgt = prompt[len(done):], full[len(prompt):]
        pairs.append((tokenizer.encode(src, add_special_tokens=False), tokenizer.encode(tgt, add_special_tokens=False)))
        done = full
    return pairs


TEMPLATES: dict[str, Template] = {
    # Seed: register_template(name="default", prefix=["{{system}}"], prompt=["Human: {{query}}\nAssistant: "], ...)
    "default": Template(
        name="default",
        prefix=("{{system}}",),
        prompt=("Human: {{query}}\nAssistant: ",),
        system="A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        sep=("\n",),
        stop_words=(),
    ),
    # Seed: register_template(name="chatml", ...): tokens given as {"token": ...}.
    "chatml": Template(
        name="chatml",
        prefix=({"token": "<|im_start|>"}, "system\n{{system}}", {"token": "<|im_end|>"}),
        prompt=({"token": "<|im_start|>"}, "user\n{{query}}", {"token": "<|im_end|>"}, "\n",
                {"token": "<|im_start|>"}, "assistant\n"),
        system="You are a helpful assistant.",
        sep=("\n",),
        stop_words=("<|im_end|>",),
    ),
    "auto": Template(name="auto", uses_tokenizer_template=True),
}


def get_template(name: str) -> Template:
    """The template registered as ``name`` (chatml, default or auto)."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r}: use one of {', '.join(NAMES)}") from None
