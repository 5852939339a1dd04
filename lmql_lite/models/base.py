"""The protocol every model backend offers the interpreter: a vocabulary, a tokenizer and batched, cached forward passes.

Engine-neutral: logits cross this boundary as numpy float32 arrays, so the interpreter and the
decoders never import an engine's framework. `tests/contract/` checks every backend against it.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from ..index import Vocabulary


class Batch(Protocol):
    """Rows of token sequences that share one key/value cache; each row only ever grows or is truncated."""

    def step(self, feeds: Sequence[Sequence[int]], only: Sequence[np.ndarray | None] | None = None) -> np.ndarray:
        """Feed each row its new tokens (possibly none) in one forward pass.

        Returns the logits after each row's last token, a numpy float32 array (rows,
        len(vocabulary)) that the caller owns; a row fed nothing gets the logits after its
        current last token again (zeros for a row that holds no tokens). Each token a row holds
        goes through the model once: a backend keeps what it computed (a key/value cache).

        `only`: per row None or a sorted int array of token ids whose logits the caller will
        read; a backend may skip computing the others and return -inf there (the interpreter
        passes a hole's allowed tokens when they are few). The ids given are always exact.
        """

    def step_all(self, feeds: Sequence[Sequence[int]], last: Sequence[int] | None = None) -> list[np.ndarray]:
        """`step` that keeps the logits after every token fed: one forward pass, each token once.

        Per row a numpy float32 array (len(feed), len(vocabulary)), owned by the caller: row r's
        i-th line is the logits after its i-th new token; a row fed nothing gets (1, vocab), the
        logits after its current last token (zeros when it holds none). `step(feeds)[r]` equals
        `step_all(feeds)[r][-1]`. Speculative drafts are verified this way: the interpreter feeds
        a draft, reads the logits at each of its positions, then `truncate`s what it rejects, and
        the rows afterwards are as if the rejected tokens had never been fed.

        `last`: per row, how many of its last tokens fed the caller needs the logits after (1 or
        more); row r's array is then the last min(last[r], len(feed)) lines of the full one, and a
        backend need not compute the others. A prompt or a forced text fed with a draft after it
        needs only the logits of the draft's positions and of the token before them.
        """

    def score(self, row: int, continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per continuation, the log-probability of each of its tokens (len, ) float64 after `row`'s
        tokens and the continuation's tokens before it — `distribution` clauses. The rows are
        as they were afterwards."""

    def truncate(self, row: int, n: int) -> None:
        """Forget all but the first `n` tokens of `row`."""

    def select(self, rows: Sequence[int]) -> None:
        """Replace the rows by `rows` of the current ones (reorder, duplicate or drop)."""

    def tokens(self, row: int) -> list[int]:
        """The token ids `row` holds."""

    @property
    def forward_passes(self) -> int:
        """How many forward passes this batch has run."""

    @property
    def tokens_fed(self) -> int:
        """How many token positions went through the model (all rows together, no padding)."""


class LanguageModel(Protocol):
    name: str
    vocabulary: Vocabulary
    bos_ids: list[int]  # what a sequence starts with (empty when the model expects no BOS)

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`, with no BOS/EOS added; with `special`, marker text such as
        `<|im_start|>` becomes its special token (chat markers), otherwise it is plain text."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""

    def role_markers(self, role: str) -> tuple[str, str]:
        """(text that opens, text that closes) a chat message of `role`: system, user or assistant."""

    def chat_preamble(self, first_role: str) -> str:
        """Text the chat template puts before a chat whose first message is of `first_role`
        (a default system message), or ""."""

    def batch(self, rows: int = 1) -> Batch:
        """A new, empty batch of `rows` sequences."""

    # Optional: `pass_cost(width) -> float`, a pass feeding `width` tokens to a row against one
    # feeding 1. Speculative drafts are weighed on it where a model declares it (the fake and
    # random models: 1.0 at any width), else on the pass times measured as the model runs.
    # Optional: `batch_exact = False` where a token fed with others gets other logits than fed
    # alone beyond float rounding (llama.cpp's CPU kernels, docs/engines.md "Numerics"): the
    # drafter then never guesses a healed token (the value's most uncertain choice) and sends no
    # draft after a prompt.
