"""LMQL's model objects: `lmql.model(name, ...)` as a lazy handle with `generate` and `score`, and `ScoringResult`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

_loaded: dict[tuple, Any] = {}


class LLM:
    """A model named as LMQL names it; loaded on first use, once per process for equal names and options.

    It stands wherever a model is expected (`model=`, `from`, `lmql.set_default_model`) and reads
    like the loaded model (`.vocabulary`, `.encode`, ...). `generate` and `score` are LMQL's.
    """

    def __init__(self, model_identifier: str | None = None, **configuration: Any):
        self.model_identifier = model_identifier
        self.configuration = configuration

    def load(self):
        """The loaded model (see `models.base.LanguageModel`); raises ModelError when it cannot be had."""
        key = (self.model_identifier, tuple(sorted((k, repr(v)) for k, v in self.configuration.items())))
        if key not in _loaded:
            from .models import load_model
            _loaded[key] = load_model(self.model_identifier, **self.configuration)
        return _loaded[key]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("model_identifier", "configuration"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    async def generate(self, prompt: str, max_tokens: int | None = None, **options: Any):
        return self.generate_sync(prompt, max_tokens, **options)

    def generate_sync(self, prompt: str, max_tokens: int | None = None, **options: Any) -> str | list[str]:
        """The model's continuation of `prompt` (at most `max_tokens` tokens); a list when `n` > 1."""
        from . import api
        source = GENERATE_BOUNDED if max_tokens is not None else GENERATE
        inputs = {"prompt": prompt} | ({"max_tokens": max_tokens} if max_tokens is not None else {})
        result = api.run(source, model=self, **inputs, **options)
        return [r.value for r in result] if isinstance(result, list) else result.value

    async def score(self, prompt: str, values: str | Sequence[str], **options: Any) -> "ScoringResult":
        return self.score_sync(prompt, values, **options)

    def score_sync(self, prompt: str, values: str | Sequence[str], **options: Any) -> "ScoringResult":
        """Log-probabilities of each of `values` as a continuation of `prompt`."""
        if options:
            from .errors import QueryArgumentError
            raise QueryArgumentError(f"score takes no options, got {', '.join(sorted(options))}")
        return score_continuations(self.load(), prompt, [values] if isinstance(values, str) else list(values),
                                   self.model_identifier or "default")

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.configuration.items())
        return f"lmql_lite.model({self.model_identifier!r}{options})"


GENERATE = '"{prompt}[RESPONSE]"\nreturn RESPONSE\n'
GENERATE_BOUNDED = '"{prompt}[RESPONSE]" where len(TOKENS(RESPONSE)) <= max_tokens\nreturn RESPONSE\n'


@dataclass
class ScoringResult:
    """Per continuation: its token ids after the prompt's, and the log-probability of each token."""
    prompt: str
    continuations: list[str]
    seqs: list[list[int]]                 # prompt tokens + continuation tokens
    full_token_scores: list[np.ndarray]   # a log-probability per token of seqs (the very first: 0)
    num_value_tokens: list[int]
    model_identifier: str

    @property
    def token_scores(self) -> list[np.ndarray]:
        return [s[len(s) - n:] for s, n in zip(self.full_token_scores, self.num_value_tokens)]

    def scores(self, agg: str = "sum", alpha: float = 0.7) -> np.ndarray:
        """Each continuation's score: the sum, the mean, or the length-normalised sum of its token log-probabilities."""
        if agg == "sum":
            return np.array([s.sum() for s in self.token_scores])
        if agg == "mean":
            return np.array([s.mean() if len(s) else 0.0 for s in self.token_scores])
        if agg.startswith("normalized"):
            return np.array([s.sum() / max(len(s), 1) ** alpha for s in self.token_scores])
        raise ValueError(f"unknown aggregation {agg!r}: use 'sum', 'mean' or 'normalized'")

    def logprobs(self, agg: str = "sum") -> np.ndarray:
        """Scores normalised over the continuations (log-softmax)."""
        s = self.scores(agg)
        return s - np.logaddexp.reduce(s)

    def probs(self, agg: str = "sum") -> np.ndarray:
        return np.exp(self.logprobs(agg))

    def argmax(self, agg: str = "sum") -> str:
        return self.continuations[int(self.scores(agg).argmax())]


def score_continuations(model, prompt: str, values: list[str], name: str) -> ScoringResult:
    """Score `values` after `prompt`, each tokenized on its own (as a hole's value is)."""
    prompt_ids = list(model.bos_ids) + model.encode(prompt)
    value_ids = [model.encode(v) for v in values]
    batch = model.batch(1)
    # The prompt's own tokens are scored as a continuation of nothing (the first one gets 0).
    (prompt_scores,) = batch.score(0, [prompt_ids])
    batch.step([prompt_ids])
    full = [np.concatenate([prompt_scores, scores]).astype(np.float32)
            for scores in batch.score(0, value_ids)]
    return ScoringResult(prompt, values, [prompt_ids + ids for ids in value_ids], full,
                         [len(ids) for ids in value_ids], name)
