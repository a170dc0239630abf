"""How an answer is picked from the model's output: the seed's raw letter logits, or the
continuation log-likelihood that lm-evaluation-harness uses.

    scorer = Scorer(tokenizer, mode="seed")
    reqs = scorer.requests(prompt_ids, prompt_text, options, group=...)  # what to run
    scores = scorer.scores(text, options, [scorer.reduce(r) for r in logits])  # {"A": …}
    pick(scores)                                                          # "B"

``seed`` (codefuse-devops-eval ``src/evaluate/evaluate.py``): the score of option X is the raw
logit ``logits[0][-1][id(X)]`` at the last prompt position, where ``id(X)`` is
``tokenizer.encode("X")`` when that is one token, else the vocabulary id of the token "X". The
prediction is the highest score; a tie goes to the earlier letter (the seed's strict ``>``).

``loglikelihood`` (lm-evaluation-harness ``multiple_choice``, as its ``cmmlu`` task): the score of
X is ``log P(" X" | prompt)``, summed over the continuation's tokens; the continuation's tokens are
found as the harness does (``encode(context + " X")`` minus the tokens of ``encode(context)``).
With one-token continuations (Qwen: " A" is one token) one forward pass scores all four letters.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

from .engine import Request
from .exams import LETTERS

MODES = ("seed", "loglikelihood")
#: lm-evaluation-harness's target_delimiter for multiple_choice tasks.
TARGET_DELIMITER = " "
#: Characters of prompt text used as context when finding a continuation's tokens: BPE merges
#: never reach that far back, and the harness's own split is reproduced on this tail.
CONTEXT_TAIL = 64


def pick(scores: Mapping[str, float]) -> str:
    """The option with the highest score; ties go to the earlier letter (the seed's strict >)."""
    best, best_score = None, float("-inf")
    for letter in LETTERS:
        if letter in scores and (best is None or scores[letter] > best_score):
            best, best_score = letter, scores[letter]
    if best is None:
        raise ValueError("no option to pick from")
    return best


def seed_letter_ids(tokenizer: Any) -> dict[str, int]:
    """Token id of each letter as the seed looks it up."""
    out = {}
    for letter in LETTERS:
        ids = tokenizer.encode(letter)
        out[letter] = int(ids[0]) if len(ids) == 1 else int(tokenizer.convert_tokens_to_ids(letter))
    return out


def continuation_ids(tokenizer: Any, context: str, continuation: str) -> list[int]:
    """lm-evaluation-harness ``_encode_pair``: trailing spaces of the context move to the
    continuation; the continuation's tokens are those of ``context + continuation`` after the
    context's own tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return list(whole[len(ctx):])


class Scorer:
    """Builds the forward requests for a question and turns their logits into option scores."""

    def __init__(self, tokenizer: Any, mode: str = "seed", letter_ids: Mapping[str, int] | None = None):
        """``letter_ids``: :func:`seed_letter_ids` of this tokenizer when already known (the token
        cache keeps them), so that seed scoring needs no tokenizer at all."""
        if mode not in MODES:
            raise ValueError(f"scoring must be one of {', '.join(MODES)} (got {mode!r})")
        self.tokenizer = tokenizer
        self.mode = mode
        self.letter_ids = dict(letter_ids) if letter_ids is not None else seed_letter_ids(tokenizer)
        self._cont_cache: dict[tuple[str, str], tuple[int, ...]] = {}

    def _continuation(self, text: str, letter: str) -> tuple[int, ...]:
        tail = text[-CONTEXT_TAIL:]
        key = (tail, letter)
        if key not in self._cont_cache:
            ids = continuation_ids(self.tokenizer, tail, TARGET_DELIMITER + letter)
            if not ids:
                raise ValueError(f"continuation {TARGET_DELIMITER + letter!r} encodes to no tokens")
            self._cont_cache[key] = tuple(ids)
        return self._cont_cache[key]

    def requests(self, prompt_ids: Sequence[int], prompt_text: str, options: Sequence[str], group: Hashable = None) -> list[Request]:
        """The forward passes one question needs (one, unless continuations span several tokens)."""
        ids = tuple(prompt_ids)
        if self.mode == "seed":
            return [Request(ids, group, 1)]
        conts = [self._continuation(prompt_text, x) for x in options]
        if all(len(c) == 1 for c in conts):
            return [Request(ids, group, 1)]
        return [Request(ids + c[:-1], group, len(c)) for c in conts]

    @property
    def columns(self) -> list[int] | None:
        """The vocabulary ids scoring reads (seed: the letters A..D), or None for all of them
        (log-likelihood needs the whole row for its softmax)."""
        return sorted(set(self.letter_ids.values())) if self.mode == "seed" else None

    def reduce(self, rows: Any, narrow: bool = False) -> Any:
        """What scoring needs from one request's logits rows ``[n_last, vocab]`` (``[n_last,
        len(columns)]`` when ``narrow``), kept small: the letters' raw logits (seed), or the
        continuation tokens' log-probabilities per row."""
        if self.mode == "seed":
            row = rows[-1]
            if narrow:
                return dict(zip(self.columns or [], row.tolist()))
            return {tid: float(row[tid]) for tid in set(self.letter_ids.values())}
        import torch

        wanted = sorted({t for c in self._cont_cache.values() for t in c})
        logp = torch.log_softmax(rows.float(), dim=-1)[:, wanted]
        return [dict(zip(wanted, r.tolist())) for r in logp]

    def scores(self, prompt_text: str, options: Sequence[str], reduced: Sequence[Any]) -> dict[str, float]:
        """Option scores from :meth:`reduce` of the logits of each of :meth:`requests` (same order)."""
        if self.mode == "seed":
            return {x: reduced[0][self.letter_ids[x]] for x in options}
        conts = [self._continuation(prompt_text, x) for x in options]
        if len(reduced) == 1:
            last = reduced[0][-1]
            return {x: last[c[0]] for x, c in zip(options, conts)}
        return {x: float(sum(rows[j][t] for j, t in enumerate(c))) for x, c, rows in zip(options, conts, reduced)}
