"""A tiny deterministic language model for exact tests: a fixed vocabulary and logits that are a pure function of the last two tokens."""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from ..index import Vocabulary

EOS, BOS = "<eos>", "<bos>"
DEFAULT_TOKENS = (
    EOS, BOS,
    *" abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *"0123456789",
    *".,:;!?-_'\"()[]{}/\n+=*#<>", 
    " yes", " no", " pos", "itive", " positive", " neg", "ative", " the", "ab", "cd", "12", "2024",
    "\xe9", "caf",
)
# Raw bytes that split the two-byte "é" (b"\xc3\xa9"): a multi-byte character across tokens.
SPLIT_BYTES = (b"\xc3", b"\xa9")


class FakeModel:
    """Deterministic logits over a small vocabulary, so tests can compute exact probabilities.

    `logits_for(tokens)` is the whole model: tests call it to brute-force what decoders should do.
    `bias` maps a token string to a value added to its logit, to steer tests.
    """

    name = "fake"

    def __init__(self, tokens: Sequence[str] = DEFAULT_TOKENS, *, bias: dict[str, float] | None = None,
                 seed: int = 0):
        self._strings = list(tokens)
        raw = [s.encode() for s in self._strings] + list(SPLIT_BYTES)
        self._strings += [b.decode("latin-1") for b in SPLIT_BYTES]  # placeholders, never matched by encode
        self.eos_id, self.bos_id = 0, 1
        raw[0] = raw[1] = b""
        self.vocabulary = Vocabulary(tokens=tuple(raw), eos_ids=frozenset({0}), special_ids=frozenset({0, 1}))
        self.bos_ids = [self.bos_id]
        self._seed = seed
        self._bias = np.zeros(len(raw), dtype=np.float32)
        for s, b in (bias or {}).items():
            self._bias[self._strings.index(s)] += b
        # Greedy longest match over the encodable (non-special, non-split) tokens.
        self._by_text = {s: i for i, s in enumerate(tokens) if i > 1}
        self._longest = max(len(s) for s in self._by_text)

    def fingerprint(self) -> str:
        """What its logits depend on (the run cache's model identity): vocabulary, seed and bias."""
        h = hashlib.sha256(repr((self._strings, self._seed)).encode())
        h.update(self._bias.tobytes())
        return h.hexdigest()

    def logits_for(self, tokens: Sequence[int]) -> np.ndarray:
        """The model: logits after `tokens`, a function of the last two of them."""
        a = tokens[-1] if tokens else -1
        b = tokens[-2] if len(tokens) > 1 else -1
        rng = np.random.default_rng([self._seed, a + 7, b + 7])
        return (rng.standard_normal(len(self.vocabulary)).astype(np.float32) * 2.0) + self._bias

    def encode(self, text: str, special: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for n in range(min(self._longest, len(text) - i), 0, -1):
                tid = self._by_text.get(text[i:i + n])
                if tid is not None:
                    ids.append(tid)
                    i += n
                    break
            else:
                # Characters outside the vocabulary fall back to their UTF-8 bytes where we have them.
                for byte in text[i].encode():
                    ids.append(self._byte_token(byte))
                i += 1
        return ids

    def _byte_token(self, byte: int) -> int:
        for i, t in enumerate(self.vocabulary.tokens):
            if t == bytes([byte]):
                return i
        raise ValueError(f"the fake model cannot encode byte {byte:#x}")

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.vocabulary.tokens[i] for i in ids).decode("utf-8", errors="replace")

    def role_markers(self, role: str) -> tuple[str, str]:
        return f"{role.capitalize()}: ", "\n"

    def chat_preamble(self, first_role: str) -> str:
        return ""

    @staticmethod
    def pass_cost(width: int) -> float:
        """A pass costs the same at any width (a table lookup per token): drafts are weighed on
        this, not on timings, so tests see the same passes every run (speculate.PassCosts)."""
        return 1.0

    def batch(self, rows: int = 1) -> "FakeBatch":
        return FakeBatch(self, rows)


class FakeBatch:
    """Rows of token lists; every step recomputes logits from each row's tokens (no cache to get wrong)."""

    sparse = True  # honour `only=` as a sparse output head would (-inf outside it)

    def __init__(self, model: FakeModel, rows: int):
        self.model = model
        self._rows: list[list[int]] = [[] for _ in range(rows)]
        self.forward_passes = 0
        self.tokens_fed = 0

    def step(self, feeds: Sequence[Sequence[int]], only=None) -> np.ndarray:
        if len(feeds) != len(self._rows):
            raise ValueError(f"step() got {len(feeds)} feeds for {len(self._rows)} rows")
        self.forward_passes += 1
        out = np.zeros((len(self._rows), len(self.model.vocabulary)), np.float32)
        for r, (row, feed) in enumerate(zip(self._rows, feeds)):
            row.extend(feed)
            self.tokens_fed += len(feed)
            if not row:
                continue
            out[r] = self.model.logits_for(row)
            if self.sparse and only is not None and only[r] is not None:
                # Like a real model's sparse output head: the logits outside `only` are not computed.
                kept = np.full(out.shape[1], -np.inf, np.float32)
                kept[only[r]] = out[r, only[r]]
                out[r] = kept
        return out

    def step_all(self, feeds: Sequence[Sequence[int]], last: Sequence[int] | None = None) -> list[np.ndarray]:
        if len(feeds) != len(self._rows):
            raise ValueError(f"step_all() got {len(feeds)} feeds for {len(self._rows)} rows")
        self.forward_passes += 1
        out = []
        for r, (row, feed) in enumerate(zip(self._rows, feeds)):
            steps = []
            wanted = len(feed) if last is None else max(last[r], 1)
            for i, token in enumerate(feed):
                row.append(token)
                if len(feed) - i <= wanted:
                    steps.append(self.model.logits_for(row))
            self.tokens_fed += len(feed)
            if not steps:
                steps.append(self.model.logits_for(row) if row else np.zeros(len(self.model.vocabulary), np.float32))
            out.append(np.array(steps, np.float32))
        return out

    def score(self, row: int, continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        prefix = self._rows[row]
        fed = sum(max(len(tokens) - 1, 0) for tokens in continuations)  # a last token needs no logits after it
        self.forward_passes += fed > 0
        self.tokens_fed += fed
        out = []
        for tokens in continuations:
            steps = [self.model.logits_for(prefix + list(tokens[:j])) if prefix or j else
                     np.zeros(len(self.model.vocabulary), np.float32) for j in range(len(tokens))]
            out.append(np.array([log_softmax(logits)[t] for logits, t in zip(steps, tokens)], np.float64))
        return out

    def truncate(self, row: int, n: int) -> None:
        del self._rows[row][n:]

    def select(self, rows: Sequence[int]) -> None:
        self._rows = [list(self._rows[r]) for r in rows]

    def tokens(self, row: int) -> list[int]:
        return list(self._rows[row])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax of one row of logits, in float64."""
    x = logits.astype(np.float64)
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())
