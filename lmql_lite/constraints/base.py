"""The Guide contract every hole's guide offers the interpreter, and the immutable `Mask` value its `allowed()` returns."""
from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np


class Mask:
    """The tokens allowed at one step: a read-only bool array over the vocabulary, its sorted ids and their count.

    Guides cache masks per automaton state, so one `Mask` serves every visit of a state; what
    decoders derive from it (the 0/-inf bias, the ids) is computed once and kept on it.
    """

    def __init__(self, array: np.ndarray):
        array = np.asarray(array, dtype=bool)
        if array.flags.writeable:
            array = array.copy()
            array.flags.writeable = False
        self.array = array                 # (vocab,) bool, read-only
        self.count = int(array.sum())     # how many tokens are allowed

    @staticmethod
    def none(size: int) -> "Mask":
        """A mask that allows nothing (a finished hole)."""
        return Mask(np.zeros(size, bool))

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """The allowed token ids, sorted (int64)."""
        return np.flatnonzero(self.array)

    @functools.cached_property
    def bias(self) -> np.ndarray:
        """0 where a token is allowed, -inf elsewhere (vocab,) float32: added to logits to mask them."""
        bias = np.where(self.array, np.float32(0.0), np.float32(-np.inf))
        bias.flags.writeable = False
        return bias

    def __getitem__(self, token):
        return self.array[token]

    def __len__(self) -> int:
        return len(self.array)

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def __repr__(self) -> str:
        return f"Mask({self.count} of {len(self.array)} tokens)"


class Guide(Protocol):
    """One hole's decoding state: `allowed()` → `advance(token)` until `is_finished()`, then `text()` and `value()`.

    Every method but `advance` and `heal` leaves the state unchanged.
    """

    def allowed(self) -> Mask:
        """The tokens that keep the hole satisfiable; end-of-sequence only where the value is complete.

        ConstraintError when no token can continue (the hole is stuck)."""

    def advance(self, token_id: int) -> None:
        """Consume one token (an end-of-sequence id ends the hole); ConstraintError if it is not allowed."""

    def is_finished(self) -> bool:
        """Whether the hole has ended."""

    def forced(self) -> bytes:
        """The text every continuation must start with (b"" when there is a choice), whole UTF-8 characters."""

    def heal(self, prefix: bytes) -> None:
        """Token healing: the first token must start with `prefix`, which belongs to the prompt, not the value."""

    def copy(self) -> "Guide":
        """An independent twin (beam search forks a hole being filled)."""

    def text(self) -> str:
        """The hole's text as it stays in the prompt."""

    def value(self) -> Any:
        """The hole's value (converted for typed holes), after the post-checks; ConstraintError if they fail."""
