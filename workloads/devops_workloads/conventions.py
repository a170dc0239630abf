"""Chat conventions follow the run: what an SFT artifact says about its template, and who reads it.

    from devops_workloads import conventions
    conventions.apply_template(tokenizer, "chatml")            # chat template + eos/pad fix-up
    conventions.write_generation_config(out, base_dir, tokenizer, "chatml")
    conventions.fit_history(messages, count, budget)            # drop the oldest turns to fit

An SFT run trains with a template (``chatml``, ``default`` or the tokenizer's own, ``auto``); a base
model's tokenizer knows nothing of it (Qwen2.5-7B: eos ``<|endoftext|>``, its own chat template and
system prompt). So the run writes what it trained into the artifact:

* the tokenizer's ``chat_template`` becomes the template's Jinja text
  (:data:`devops_model.conventions.TEMPLATE_TEXT`; ``auto`` keeps the tokenizer's);
* eos becomes the template's first stop word (``<|im_end|>`` for chatml): the seed's fix-up,
  which is also what ended every training target; pad is kept, else unk, else eos;
* ``generation_config.json`` lists eos + the template's stop words + the base's eos ids as
  ``eos_token_id``, so the built-in server, vLLM and TGI all stop where the model learnt to.

Readers: the built-in server renders chats with the tokenizer's template and stops at the
generation config's ids (``serve/engine.py``); GPTQ calibration renders conversations with the
same template (``quantize/calibration.py``); vLLM/TGI flags come from
:func:`devops_model.conventions.engine_settings`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from devops_model.conventions import CHATML_TEMPLATE, DEFAULT_TEMPLATE, STOP_WORDS, chat_template_text

__all__ = ["CHATML_TEMPLATE", "DEFAULT_TEMPLATE", "apply_template", "save_tokenizer", "stop_token_ids",
           "write_generation_config", "fit_history"]


def apply_template(tokenizer: Any, template: str) -> Any:
    """Set the tokenizer's chat template, eos and pad to what a run with ``template`` trained."""
    from .templates import get_template

    tpl = get_template(template)
    text = chat_template_text(template)
    if text:
        tokenizer.chat_template = text
    eos = tpl.eos_token(tokenizer)  # seed: the first stop word, else the tokenizer's eos, else <|im_end|>
    if tokenizer.eos_token != eos:
        tokenizer.eos_token = eos
    if tokenizer.pad_token is None:
        tokenizer.pad_token = getattr(tokenizer, "unk_token", None) or tokenizer.eos_token
    return tokenizer


def save_tokenizer(tokenizer: Any, out: str | Path, tokenizer_class: str | None = None) -> None:
    """``save_pretrained``, plus the chat template inlined in tokenizer_config.json (TGI and older
    transformers read it only there; transformers 5 writes chat_template.jinja), and optionally a
    ``tokenizer_class`` that every transformers version knows (transformers 5 writes its own
    ``TokenizersBackend``)."""
    tokenizer.save_pretrained(str(out))
    f = Path(out) / "tokenizer_config.json"
    cfg = json.loads(f.read_text())
    if getattr(tokenizer, "chat_template", None) and isinstance(tokenizer.chat_template, str):
        cfg["chat_template"] = tokenizer.chat_template
    if tokenizer_class:
        cfg["tokenizer_class"] = tokenizer_class
    f.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def stop_token_ids(tokenizer: Any, template: str | None, base_eos: Any = None) -> list[int]:
    """eos first, then the template's stop words, then the base model's eos ids (deduplicated)."""
    out: list[int] = []
    words = [tokenizer.eos_token] + list(STOP_WORDS.get(template or "", ()))
    for w in words:
        if w:
            tid = tokenizer.convert_tokens_to_ids(w)
            if tid is not None and tid != getattr(tokenizer, "unk_token_id", None):
                out.append(int(tid))
    out += _ids(base_eos)
    return list(dict.fromkeys(out))


def write_generation_config(out: Path, base_dir: Path | None, tokenizer: Any, template: str | None) -> dict[str, Any]:
    """``out/generation_config.json``: the base's (sampling values kept) with the run's stop ids."""
    gen: dict[str, Any] = {}
    for d in (out, base_dir):
        if d is not None and (Path(d) / "generation_config.json").is_file():
            gen = json.loads((Path(d) / "generation_config.json").read_text())
            break
    gen["eos_token_id"] = stop_token_ids(tokenizer, template, gen.get("eos_token_id"))
    if tokenizer.pad_token_id is not None:
        gen["pad_token_id"] = int(tokenizer.pad_token_id)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return gen


def max_window_size(model_dir: str | Path | None) -> int | None:
    """Qwen-1's history window (``max_window_size`` in generation_config.json), when the model has one."""
    if model_dir is None:
        return None
    f = Path(model_dir) / "generation_config.json"
    if not f.is_file():
        return None
    return json.loads(f.read_text()).get("max_window_size")


def fit_history(messages: Sequence[dict[str, str]], count: Callable[[list[dict[str, str]], bool], int], budget: int,
                window: int | None = None) -> list[dict[str, str]]:
    """Drop the oldest user/assistant turns until the prompt fits, keeping the system message and
    the last user message (Qwen-1's ``make_context``: history newest first, while it fits).

    ``count(messages, generation_prompt)`` is the token count of the rendered messages. A turn is
    kept while the whole prompt stays within ``budget`` and, with ``window`` (Qwen-1's
    ``max_window_size``), while system + kept history stays under it as make_context counts it:
    ``system + ("\n" + turn) * n < window``, i.e. the chatml rendering (which ends each message with
    its "\n") of at most ``window`` tokens."""
    msgs = list(messages)
    head = [msgs[0]] if msgs and msgs[0].get("role") == "system" else []
    body = msgs[len(head):]
    if len(body) <= 1:
        return msgs
    last, history = body[-1:], body[:-1]
    # turns: a user message and what follows it up to the next user message
    turns: list[list[dict[str, str]]] = []
    for m in history:
        if m.get("role") == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    kept: list[list[dict[str, str]]] = []
    for turn in reversed(turns):
        trial = [m for t in [turn] + kept for m in t]
        if count(head + trial + last, True) > budget:
            break
        if window is not None and count(head + trial, False) > window:
            break
        kept.insert(0, turn)
    return head + [m for t in kept for m in t] + last
