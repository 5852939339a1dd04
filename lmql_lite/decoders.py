"""How the next token is chosen under a mask: argmax, sampling, beam expansion, and scoring of given values."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .errors import QueryArgumentError


@dataclass(frozen=True)
class DecoderOptions:
    name: str = "argmax"              # argmax, sample or beam
    n: int = 1                        # results (sample, beam)
    temperature: float = 1.0          # sample: logits are divided by it
    top_k: int | None = None          # sample: keep the k most likely allowed tokens
    top_p: float | None = None        # sample: keep the smallest set with this much probability
    seed: int | None = None           # sample: makes runs reproducible
    max_len: int = 2048               # tokens in the whole sequence, prompt included
    max_tokens: int | None = None     # tokens per hole (LMQL's option of that name)
    healing: bool = True              # token healing at the start of each hole

    def __post_init__(self):
        if self.n < 1:
            raise QueryArgumentError(f"{self.name}: n must be at least 1, got {self.n}")
        if self.temperature <= 0 and self.name == "sample":
            raise QueryArgumentError(f"sample: temperature must be positive, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise QueryArgumentError(f"sample: top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise QueryArgumentError(f"sample: top_k must be at least 1, got {self.top_k}")
        if self.max_len < 1:
            raise QueryArgumentError(f"max_len must be at least 1, got {self.max_len}")


_MAX_CACHED = 512  # masks are cached per automaton state; keep what was derived from the most recent ones
_BIASES: "OrderedDict[int, tuple[np.ndarray, np.ndarray]]" = OrderedDict()
_IDS: "OrderedDict[int, tuple[np.ndarray, np.ndarray]]" = OrderedDict()


def _per_mask(cache: OrderedDict, allowed: np.ndarray, build) -> np.ndarray:
    """`build(allowed)`, cached by the mask array's identity (guides reuse their mask arrays)."""
    hit = cache.get(id(allowed))
    if hit is not None and hit[0] is allowed:
        cache.move_to_end(id(allowed))
        return hit[1]
    value = build(allowed)
    cache[id(allowed)] = (allowed, value)  # holding the mask keeps its id from being reused
    if len(cache) > _MAX_CACHED:
        cache.popitem(last=False)
    return value


def mask_bias(allowed: np.ndarray) -> np.ndarray:
    """0 where a token is allowed, -inf elsewhere (vocab,)."""
    return _per_mask(_BIASES, allowed, lambda a: np.where(a, np.float32(0.0), np.float32(-np.inf)))


def allowed_ids(allowed: np.ndarray) -> np.ndarray:
    """The token ids a mask allows, sorted."""
    return _per_mask(_IDS, allowed, np.flatnonzero)


def masked(logits: torch.Tensor, allowed: np.ndarray) -> np.ndarray:
    """Logits with every disallowed token at -inf.  (vocab,) → (vocab,)

    Plain numpy on one core: for one row of ~50k logits it is several times faster than
    torch's multi-threaded element-wise kernels.
    """
    return logits.numpy() + mask_bias(allowed)


def with_end(scores: np.ndarray, logits: np.ndarray, allowed: np.ndarray, eos_ids: np.ndarray,
             after_text: np.ndarray) -> int | None:
    """Where a value may end but also go on: its end stands for every token it cannot go on with.

    The first end-of-sequence id of `scores` (masked logits, changed in place) gets the
    log-sum-exp of the logits of the end ids and of every token the mask refuses that could
    follow some complete text (`after_text`: not a special token, not a UTF-8 continuation
    byte), the others -inf: the model's whole probability of leaving the value here. Returns
    the token the model itself likes best among those (for the trace), or None when ending is
    no choice here.
    """
    ends = eos_ids[allowed[eos_ids]]
    if not len(ends) or int(allowed.sum()) == len(ends):
        return None
    leave = after_text & ~allowed
    leave[ends] = True
    out = logits[leave]
    top = out.max()
    scores[ends] = -np.inf
    scores[ends[0]] = top + np.log(np.exp(out - top).sum()) if np.isfinite(top) else top
    return int(np.flatnonzero(leave)[np.argmax(out)])


def pick_argmax(scores: np.ndarray) -> int:
    return int(np.argmax(scores))


def log_softmax_at(scores: np.ndarray, token: int) -> float:
    """log p(token) under softmax(scores), with -inf scores excluded."""
    top = scores.max()
    return float(scores[token] - top - np.log(np.exp(scores - top).sum()))


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


def pick_sample(scores: np.ndarray, options: DecoderOptions, generator: torch.Generator) -> tuple[int, float]:
    """A token drawn from the sampling distribution, and its log-probability under it."""
    logits = sampling_logits(scores, options)
    probs = torch.softmax(torch.from_numpy(logits), -1)
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, log_softmax_at(logits, token)


def top_candidates(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely allowed tokens with their log-probabilities (beam expansion)."""
    k = min(k, int(np.isfinite(scores).sum()))
    ids = np.argpartition(-scores, k - 1)[:k]
    ids = ids[np.argsort(-scores[ids], kind="stable")]
    top = scores.max()
    norm = top + np.log(np.exp(scores - top).sum())
    return [(int(i), float(scores[i] - norm)) for i in ids]


def continuation_logprob(first: torch.Tensor, rest: torch.Tensor, tokens: list[int]) -> float:
    """log P(tokens | prefix) from the logits after the prefix `first` (vocab,) and after each token `rest` (len, vocab)."""
    total = float(torch.log_softmax(first, -1)[tokens[0]])
    if len(tokens) > 1:
        lp = torch.log_softmax(rest[:-1], -1)
        total += float(lp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].sum())
    return total


def normalise(logprobs: dict[str, float]) -> dict[str, float]:
    """Softmax over the values' total log-probabilities: the distribution a `distribution` clause reports."""
    top = max(logprobs.values())
    weights = {v: math.exp(lp - top) for v, lp in logprobs.items()}
    total = sum(weights.values())
    return {v: w / total for v, w in weights.items()}
