"""LMQL's `random` model: random logits over a real tokenizer's vocabulary, a pure function of the seed and the tokens so far."""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from ..errors import ModelError
from ..index import Vocabulary
from .fake import FakeBatch, FakeModel, log_softmax
from .hf_tokenizer import PLAIN_ROLE_MARKERS, vocabulary_from_tokenizer


class RandomModel:
    """Logits drawn from a generator seeded by (seed, the row's tokens): reproducible, content-free text.

    As in LMQL, it exercises queries without a real model: every run with the same seed, query
    and inputs writes the same text. The vocabulary is the default model's tokenizer (LMQL's
    uses GPT-2's, which is not available offline), or `tokenizer=` a local folder or cached hub id.
    """

    def __init__(self, seed: int | None = None, tokenizer: str | None = None):
        self.seed = int(seed or 0)
        self.name = f"random(seed={self.seed})"
        if tokenizer is None:
            from .transformers import default_tokenizer
            self.tokenizer = default_tokenizer()
        else:
            from transformers import AutoTokenizer
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            except (OSError, ValueError) as e:
                raise ModelError(f"model 'random': tokenizer {tokenizer!r} not found: {e}") from None
        self.vocabulary: Vocabulary = vocabulary_from_tokenizer(self.tokenizer)
        self.bos_ids: list[int] = []

    def fingerprint(self) -> str:
        """Its logits depend on the seed alone (the vocabulary has a fingerprint of its own)."""
        return f"seed={self.seed}"

    def logits_for(self, tokens: Sequence[int]) -> np.ndarray:
        """The model: standard-normal logits seeded by the seed and a checksum of `tokens`."""
        digest = zlib.crc32(np.asarray(tokens, dtype=np.int64).tobytes())
        rng = np.random.default_rng([self.seed, len(tokens), digest])
        return rng.standard_normal(len(self.vocabulary), dtype=np.float32)

    def encode(self, text: str, special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not special)

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.vocabulary.tokens[i] for i in ids).decode("utf-8", errors="replace")

    def role_markers(self, role: str) -> tuple[str, str]:
        if role not in PLAIN_ROLE_MARKERS:
            raise ModelError(f"unknown chat role {role!r}: use system, user or assistant")
        return PLAIN_ROLE_MARKERS[role]

    def chat_preamble(self, first_role: str) -> str:
        return ""

    pass_cost = staticmethod(FakeModel.pass_cost)  # drafts weighed on flat costs, not timings, as on the fake model

    def batch(self, rows: int = 1) -> "RandomBatch":
        return RandomBatch(self, rows)


class RandomBatch(FakeBatch):
    """Rows of token lists; each step draws every row's logits afresh from its tokens.

    The fake batch's rows, truncate, select, tokens, step and step_all (with every logit computed,
    whatever `only` asks); its own score (no logits before the first token).
    """

    sparse = False  # every logit is computed, whatever `only` asks

    def score(self, row: int, continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        prefix = self._rows[row]
        fed = sum(max(len(tokens) - 1, 0) for tokens in continuations)  # as a real batch feeds them
        self.forward_passes += fed > 0
        self.tokens_fed += fed
        out = []
        for tokens in continuations:
            out.append(np.array([log_softmax(self.model.logits_for(prefix + list(tokens[:j])))[t]
                                 if prefix or j else 0.0 for j, t in enumerate(tokens)], np.float64))
        return out
