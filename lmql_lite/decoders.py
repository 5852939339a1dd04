"""How the next tokens are chosen from masked logits: `Argmax`, `Sample`, `Beam`, each a step over rows.

A step gets the logits of every row `(rows, vocab)` and what each row is (`Row`: its mask, its
total log-probability, the text it spells) and returns the rows of the next step as `Choice`s
`(parent_row, token, logprob)`: argmax and sampling keep every row and give each one token;
beam search keeps the n most likely continuations of all rows together, so a row may be
dropped or continued twice. The table of decoder names and options is `options.DECODERS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

from .constraints.base import Mask
from .options import DecoderOptions

__all__ = ["Argmax", "Sample", "Beam", "Choice", "Row", "DecoderOptions", "for_options"]


@dataclass(frozen=True)
class Row:
    """What a decoder sees of one row."""
    row: int
    mask: Mask | None                       # None: the row needs no token (its result is complete)
    logprob: float = 0.0                    # the row's total so far (beam ranking)
    spell: Callable[[int | None], Hashable] | None = None  # the text it spells after a token (beam dedupe)
    draft: int | None = None                # the token a speculative draft proposes here (None: no draft)


@dataclass(frozen=True)
class Choice:
    """One row of the next step: it continues row `row` with `token` (None: as it is)."""
    row: int
    token: int | None
    logprob: float = 0.0                    # of the token under the masked distribution chosen from
    allowed: int = 0                        # tokens the mask allowed (for --trace)


class Argmax:
    """The most likely allowed token of each row."""
    name = "argmax"

    def __init__(self, options: DecoderOptions):
        self.options = options

    def step(self, logits: np.ndarray, rows: Sequence[Row]) -> list[Choice]:
        out = []
        for r in rows:
            if r.mask is None:
                out.append(Choice(r.row, None))
                continue
            token, logprob = self.choose(logits[r.row], r.mask, r.draft)
            out.append(Choice(r.row, token, logprob, r.mask.count))
        return out

    def choose(self, logits: np.ndarray, mask: Mask, draft: int | None) -> tuple[int, float]:
        """The token chosen from one row's logits (vocab,) under `mask`, and its log-probability.

        The most likely allowed token, whatever a draft proposes. When the mask allows few
        tokens only their logits are read; else the masked row is made once and used up.
        """
        if mask.count * 8 <= len(mask):
            ids = mask.ids
            scores = logits[ids]  # (allowed,), our own copy
            top = int(np.argmax(scores))
            return int(ids[top]), top_logprob(scores, top)
        scores = masked(logits, mask)
        token = int(np.argmax(scores))
        return token, top_logprob(scores, token)

    def rank(self, results: list) -> list:
        """The results to report, in order."""
        return results


class Sample(Argmax):
    """A token of each row drawn from its masked distribution after temperature, top-k and top-p."""
    name = "sample"

    def __init__(self, options: DecoderOptions):
        super().__init__(options)
        self.rng = np.random.default_rng(options.seed)  # seeded: a run is reproducible

    def choose(self, logits: np.ndarray, mask: Mask, draft: int | None) -> tuple[int, float]:
        scores = masked(logits, mask)
        return self.pick(scores) if draft is None else self.verify(scores, draft)

    def pick(self, scores: np.ndarray) -> tuple[int, float]:
        """A token drawn from one row's masked scores (vocab,), and its log-probability."""
        return pick_sample(scores, self.options, self.rng)

    def verify(self, scores: np.ndarray, draft: int) -> tuple[int, float]:
        """Speculative sampling with a one-token draft: exactly the distribution `pick` draws from.

        The draft is kept with its probability p(draft); otherwise a token is drawn from p with
        the draft left out, renormalised — so every token t comes out with probability p(t).
        """
        logits = sampling_logits(scores, self.options)
        weights = np.exp(logits.astype(np.float64) - logits.max())
        total = weights.sum()
        if self.rng.random() * total < weights[draft]:
            return draft, log_softmax_at(logits, draft)
        weights[draft] = 0.0
        cumulative = np.cumsum(weights)
        token = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return token, log_softmax_at(logits, token)


class Beam(Argmax):
    """The n most likely continuations over all rows; a complete result competes with them as it is."""
    name = "beam"

    def step(self, logits: np.ndarray, rows: Sequence[Row]) -> list[Choice]:
        n = self.options.n
        candidates = []  # (total logprob, Choice)
        for r in rows:
            if r.mask is None:
                candidates.append((r.logprob, Choice(r.row, None)))
                continue
            for token, logprob in top_candidates(masked(logits[r.row], r.mask), n):
                candidates.append((r.logprob + logprob, Choice(r.row, token, logprob, r.mask.count)))
        candidates.sort(key=lambda c: -c[0])
        # Two tokenizations of the same text are one result: keep the more likely.
        spell = {r.row: r.spell for r in rows}
        chosen, texts = [], set()
        for _, choice in candidates:
            text = spell[choice.row](choice.token)
            if text not in texts:
                texts.add(text)
                chosen.append(choice)
            if len(chosen) == n:
                break
        return chosen

    def rank(self, results: list) -> list:
        """Most likely first; several tokenizations of one text are one result, the likeliest."""
        out, seen = [], set()
        for r in sorted(results, key=lambda r: -r.logprob):
            if r.prompt not in seen:
                seen.add(r.prompt)
                out.append(r)
        return out


_CLASSES = {cls.name: cls for cls in (Argmax, Sample, Beam)}  # one per row of options.DECODERS


def for_options(options: DecoderOptions) -> Argmax:
    """The decoder that `options` names."""
    return _CLASSES[options.name](options)


# ---- the arithmetic, on numpy rows -----------------------------------------------------------

def masked(logits: np.ndarray, mask: Mask) -> np.ndarray:
    """Logits with every disallowed token at -inf.  (vocab,) → (vocab,)

    Plain numpy on one core: for one row of ~50k logits it is several times faster than
    torch's multi-threaded element-wise kernels. The bias is computed once per mask.
    """
    return logits + mask.bias


def with_end(logits: np.ndarray, mask: Mask, eos_ids: np.ndarray, after_text: np.ndarray) -> int | None:
    """Where a value may end but also go on, its end stands for every token it cannot go on with.

    The first allowed end-of-sequence id of `logits` (one row, changed in place) gets the
    log-sum-exp of the logits of the end ids and of every token the mask refuses that could
    follow some complete text (`after_text`: not a special token, not a UTF-8 continuation
    byte), the other end ids -inf: the model's whole probability of leaving the value here, for
    every decoder alike. Returns the token the model itself likes best among those (for the
    trace), or None when ending is no choice here.
    """
    ends = eos_ids[mask.array[eos_ids]]
    if not len(ends) or mask.count == len(ends):
        return None
    leave = after_text & ~mask.array
    leave[ends] = True
    out = logits[leave]
    top = out.max()
    logits[ends] = -np.inf
    logits[ends[0]] = top + np.log(np.exp(out - top).sum()) if np.isfinite(top) else top
    return int(np.flatnonzero(leave)[np.argmax(out)])


def log_softmax_at(scores: np.ndarray, token: int) -> float:
    """log p(token) under softmax(scores), with -inf scores excluded."""
    top = scores.max()
    weights = scores - top
    np.exp(weights, out=weights)
    return float(scores[token] - top - np.log(weights.sum()))


def top_logprob(scores: np.ndarray, top: int) -> float:
    """`log_softmax_at(scores, top)` for the likeliest token `top`, whose score is the max; `scores` is used up.

    One pass over the row less, and no new array: argmax decoding calls it once per token.
    """
    scores -= scores[top]
    np.exp(scores, out=scores)
    return 0.0 - float(np.log(scores.sum()))


def sampling_logits(scores: np.ndarray, options: DecoderOptions) -> np.ndarray:
    """Masked logits after temperature, top-k and top-p: what `pick_sample` draws from.  (vocab,)"""
    scores = scores / np.float32(options.temperature)
    if options.top_k is not None and options.top_k < scores.size:
        kth = np.partition(scores, -options.top_k)[-options.top_k]
        scores = np.where(scores < kth, np.float32(-np.inf), scores)
    if options.top_p is not None and options.top_p < 1.0:
        order = np.argsort(-scores, kind="stable")
        probs = np.exp(scores[order] - scores[order[0]])
        probs /= probs.sum()
        before = np.cumsum(probs) - probs  # probability of the tokens ranked above
        scores = scores.copy()
        scores[order[before >= options.top_p]] = -np.inf  # keep the token that crosses p
    return scores


def pick_sample(scores: np.ndarray, options: DecoderOptions, rng: np.random.Generator) -> tuple[int, float]:
    """A token drawn from the sampling distribution, and its log-probability under it."""
    logits = sampling_logits(scores, options)
    weights = np.exp(logits.astype(np.float64) - logits.max())
    cumulative = np.cumsum(weights)
    # The first token whose cumulative weight passes a uniform draw; a token of weight 0 never is.
    token = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return token, log_softmax_at(logits, token)


def top_candidates(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely allowed tokens with their log-probabilities (beam expansion)."""
    k = min(k, int(np.isfinite(scores).sum()))
    ids = np.argpartition(-scores, k - 1)[:k]
    ids = ids[np.argsort(-scores[ids], kind="stable")]
    top = scores.max()
    norm = top + np.log(np.exp(scores - top).sum())
    return [(int(i), float(scores[i] - norm)) for i in ids]


def normalise(logprobs: dict[str, float]) -> dict[str, float]:
    """Softmax over the values' total log-probabilities: the distribution a `distribution` clause reports."""
    top = max(logprobs.values())
    weights = {v: math.exp(lp - top) for v, lp in logprobs.items()}
    total = sum(weights.values())
    return {v: w / total for v, w in weights.items()}
