"""The vocabulary as bytes, and the token index: per automaton state, which tokens are allowed and where each one leads."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Vocabulary:
    """Token id → the bytes it adds to the text.

    Special tokens (BOS, chat markers, padding) map to b"" and are never allowed inside a hole,
    except the end-of-sequence ids, which end it.
    """

    tokens: tuple[bytes, ...]
    eos_ids: frozenset[int]
    special_ids: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.tokens)
