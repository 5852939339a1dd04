"""One batch row's prompt: its text, the tokens the row holds or has queued, chat markers, and the token healing takes back.

Prompt text is tokenized per run of text between holes (when the next hole starts, or a chat
marker comes); chat markers are special tokens that belong to the prompt but not to its
visible text. `fed` counts the tokens the batch row already holds: the rest are fed with the
next forward pass, so no token is ever encoded twice unless the row is truncated.
"""
from __future__ import annotations

from typing import Callable

from .result import Trace


class Prompt:
    """The text and tokens of one result being decoded."""

    def __init__(self, model, trace: Trace, emit: Callable[[str, str], None], forget: Callable[[int], None]):
        self.model = model
        self.trace = trace
        self.emit = emit                   # (text, kind): the event stream (prompt, role, value)
        self.forget = forget               # n: the batch row forgets all but its first n tokens
        self.pieces: list[str] = []        # the prompt's text, piece by piece (chat markers included)
        self.tokens: list[int] = list(model.bos_ids)
        self.fed = 0                       # how many of `tokens` the batch row holds
        self.pending = ""                  # text not tokenized yet
        self.role: str | None = None       # the chat message open now
        self.chatted = False               # a chat role was opened
        self.healable = False              # the last token came from prompt text (token healing may redo it)
        self.named: dict[int, str] = {}    # piece index → the variable whose value that piece is
        trace.prompt_tokens = len(self.tokens)

    def copy(self, trace: Trace, emit, forget) -> "Prompt":
        twin = Prompt.__new__(Prompt)
        twin.__dict__.update(self.__dict__, trace=trace, emit=emit, forget=forget,
                             pieces=list(self.pieces), tokens=list(self.tokens), named=dict(self.named))
        return twin

    def text(self) -> str:
        return "".join(self.pieces)

    def queued(self) -> list[int]:
        """The tokens to feed with the next forward pass; from then on the row holds them."""
        queued = self.tokens[self.fed:]
        self.fed = len(self.tokens)
        return queued

    # ---- text --------------------------------------------------------------------------

    def append(self, text: str, kind: str = "prompt") -> None:
        """Prompt text (or a value, `kind="value"`, that the model did not spell): tokenized later, in one run."""
        if text:
            self.pieces.append(text)
            self.pending += text
            self.emit(text, kind)

    def flush(self) -> None:
        """Tokenize the pending text."""
        if self.pending:
            ids = self.model.encode(self.pending)
            self.extend(ids)
            self.healable = bool(ids)
            self.pending = ""

    def extend(self, ids: list[int]) -> None:
        """Append prompt tokens (text already in `pieces`)."""
        self.tokens += ids
        self.trace.prompt_tokens += len(ids)

    def value(self, text: str, name: str) -> None:
        """Variable `name`'s final text, whose tokens are already in place."""
        self.named[len(self.pieces)] = name
        self.pieces.append(text)
        self.emit(text, "value")

    def spans(self) -> list[tuple[int, int, str]]:
        """(start, end, variable) of each value in `text()`."""
        out, at = [], 0
        for i, piece in enumerate(self.pieces):
            if i in self.named:
                out.append((at, at + len(piece), self.named[i]))
            at += len(piece)
        return out

    # ---- chat roles --------------------------------------------------------------------

    def open_role(self, role: str) -> None:
        first = self.role is None and not self.chatted
        self.close_role()
        self.role, self.chatted = role, True
        if first:  # the template's default system message, when the chat starts with another role
            self._special(self.model.chat_preamble(role))
        self._special(self.model.role_markers(role)[0])

    def close_role(self) -> None:
        if self.role is not None:
            self._special(self.model.role_markers(self.role)[1])
            self.role = None

    def _special(self, text: str) -> None:
        self.flush()
        self.extend(self.model.encode(text, special=True) if text else [])
        self.healable = False
        self.pieces.append(text)
        self.emit(text, "role")

    # ---- tokens ------------------------------------------------------------------------

    def mark(self) -> tuple[int, int]:
        """Where the prompt is now (pieces, tokens): `rewind` comes back here (a nested query's text)."""
        return len(self.pieces), len(self.tokens)

    def rewind(self, mark: tuple[int, int]) -> None:
        pieces, tokens = mark
        del self.pieces[pieces:]
        self.named = {i: n for i, n in self.named.items() if i < pieces}
        self.truncate(tokens)
        self.pending = ""

    def truncate(self, n: int) -> None:
        """Forget every token after the first n."""
        del self.tokens[n:]
        if self.fed > n:
            self.forget(n)
            self.fed = n

    def take_back(self) -> bytes:
        """Token healing: the last token, when it came from prompt text, is taken back; its bytes (else b"")."""
        prefix = b""
        if self.healable and len(self.tokens) > len(self.model.bos_ids):
            prefix = self.model.vocabulary.tokens[self.tokens[-1]]
            if prefix:
                self.truncate(len(self.tokens) - 1)
                self.trace.prompt_tokens -= 1
        self.healable = False
        return prefix

    def reconcile(self, start: int, want: bytes) -> None:
        """Make the tokens from `start` on spell exactly `want` (a dropped stop phrase, a decorator's text)."""
        vocab = self.model.vocabulary.tokens
        have = b"".join(vocab[t] for t in self.tokens[start:])
        if have == want:
            return
        keep, length = 0, 0
        for t in self.tokens[start:]:
            if not want.startswith(have[:length + len(vocab[t])]):
                break
            length += len(vocab[t])
            keep += 1
        self.truncate(start + keep)
        rest = want[length:].decode("utf-8", errors="replace")
        if rest:
            self.extend(self.model.encode(rest))
