"""The protocol every model backend offers the interpreter: a vocabulary, a tokenizer and batched, cached forward passes."""
from __future__ import annotations

from typing import Protocol, Sequence

from ..index import Vocabulary


class Batch(Protocol):
    """Rows of token sequences that share one key/value cache; each row only ever grows or is truncated."""

    def step(self, feeds: Sequence[Sequence[int]], all_logits: bool = False, only=None):
        """Feed each row its new tokens (possibly none) in one forward pass.

        Returns float32 logits after each row's last token, a tensor (rows, len(vocabulary)); a
        row fed nothing gets the logits after its current last token again. With `all_logits`,
        returns a list with, per row, the logits after each token fed to it: (len(feed), vocab)
        — used to score given continuations (distribution clauses).

        `only` (ignored with `all_logits`): per row None or a sorted int array of token ids whose
        logits the caller will read; a backend may skip computing the others and return -inf
        there (the interpreter passes a hole's allowed tokens when they are few).
        """

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
