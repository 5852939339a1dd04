"""How the next token is chosen under a mask: argmax, sampling, beam expansion, and scoring of given values."""
from __future__ import annotations

import math
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


def masked(logits: torch.Tensor, allowed: np.ndarray) -> torch.Tensor:
    """Logits with every disallowed token at -inf.  (vocab,) → (vocab,)"""
    return torch.where(torch.from_numpy(allowed), logits, -math.inf)


def pick_argmax(scores: torch.Tensor) -> int:
    return int(torch.argmax(scores))


def sampling_logits(scores: torch.Tensor, options: DecoderOptions) -> torch.Tensor:
    """Masked logits after temperature, top-k and top-p: what `pick_sample` draws from.  (vocab,)"""
    scores = scores / options.temperature
    if options.top_k is not None and options.top_k < scores.numel():
        kth = torch.topk(scores, options.top_k).values[-1]
        scores = torch.where(scores < kth, -math.inf, scores)
    if options.top_p is not None and options.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, -1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_scores, -1) >= options.top_p  # keep the token that crosses p
        scores = scores.clone()
        scores[order[drop]] = -math.inf
    return scores


def pick_sample(scores: torch.Tensor, options: DecoderOptions, generator: torch.Generator) -> int:
    probs = torch.softmax(sampling_logits(scores, options), -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def top_candidates(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely allowed tokens with their log-probabilities (beam expansion)."""
    k = min(k, int(torch.isfinite(logprobs).sum()))
    values, ids = torch.topk(logprobs, k)
    return [(int(i), float(v)) for i, v in zip(ids, values)]


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
