"""Speculative drafts: tokens guessed ahead of the model, sent in one forward pass and kept as far as the decoder agrees.

A `Proposer` guesses the tokens that follow a row's tokens; `PromptLookup` (the one built in)
finds the row's last few tokens earlier in the row (the prompt, the inputs, what was generated)
and proposes what followed them there — what extraction, copying and quoting queries write. A
small draft model would be another `Proposer`, with the same `propose` and nothing else to change.

`Drafter.draft` walks the hole's guide (a copy: the real one is never advanced) over the
proposal: text the guide forces goes in for free, a token the constraint forbids ends the draft,
and so does the end of the hole or of its budget. The interpreter feeds the draft after the row's
queued tokens (`Batch.step_all`), lets the decoder choose at each position as if decoding one token
at a time, keeps the longest agreeing prefix and truncates the rest (docs/architecture.md).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

from .constraints.base import Guide
from .errors import LmqlError

__all__ = ["Proposer", "PromptLookup", "Drafter", "Spellings", "for_options", "forced_tokens"]


class Proposer(Protocol):
    """Guesses the tokens that follow a sequence (prompt lookup now; a small draft model later)."""

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` token ids likely to follow `tokens` (the row's whole sequence), or []."""


class PromptLookup:
    """The last `n` tokens (longest n first) found earlier in the sequence; the tokens that followed the latest match.

    Sizes measured on bench/speculation.py (docs/performance.md): single-token matches propose too
    often wrongly, three tokens find most of the copies two do.
    """

    def __init__(self, longest: int = 3, shortest: int = 2):
        self.longest, self.shortest = longest, shortest

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        if limit <= 0 or len(tokens) <= self.shortest:
            return []
        tokens = list(tokens)
        # The earlier places of the last token (each followed by a token at least): where a match
        # can end. list.index scans in C; a short walk back from each, latest first, measures it.
        last, ends, at = tokens[-1], [], 0
        try:
            while True:
                at = tokens.index(last, at, len(tokens) - 1)
                ends.append(at)
                at += 1
        except ValueError:
            pass
        latest: dict[int, int] = {}  # match length → the latest end with a match that long
        for end in reversed(ends):
            n = 1
            while n < self.longest and n <= end and tokens[end - n] == tokens[-1 - n]:
                n += 1
            if n == self.longest:
                return tokens[end + 1:end + 1 + limit]
            latest.setdefault(n, end)
        for n in range(self.longest - 1, self.shortest - 1, -1):
            found = [end for length, end in latest.items() if length >= n]
            if found:
                return tokens[max(found) + 1:max(found) + 1 + limit]
        return []


def forced_tokens(guide: Guide, encode: Callable[[str], list[int]]) -> tuple[list[int], bool]:
    """(the tokens that spell the text `guide` forces from here, whether they finish the hole); ([], False) when none.

    The tokenizer's own spelling of the forced text, walked over a copy of the guide: a spelling
    the guide refuses is no spelling. Fast-forward takes these tokens (all but the last, unless
    they finish the hole) and drafts propose them.
    """
    forced = guide.forced()
    if not forced:
        return [], False
    try:
        text = forced.decode("utf-8")
    except UnicodeDecodeError:
        return [], False
    ids = encode(text)
    probe = guide.copy()
    for tok in ids:
        if not probe.allowed()[tok]:
            return [], False
        probe.advance(tok)
    return ids, probe.is_finished()


class Spellings:
    """The tokenizer's spelling of forced text, kept for a run: the same text is forced pass after
    pass (fast-forward holds its last token back, a draft spells it again), and the tokenizer
    costs more than the guide's walk over its tokens."""

    def __init__(self, encode: Callable[[str], list[int]], size: int = 256):
        self._encode, self._size = encode, size
        self._ids: dict[str, tuple[int, ...]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            if len(self._ids) >= self._size:
                self._ids.clear()
            ids = self._ids[text] = tuple(self._encode(text))
        return list(ids)


class Drafter:
    """Per run: builds each hole's draft from a proposer, under the hole's constraint and budgets."""

    def __init__(self, proposer: Proposer, encode: Callable[[str], list[int]], eos_ids: frozenset[int],
                 longest: int = 8, queued_limit: int = 8, pause: int = 4):
        self.proposer, self.encode, self.eos_ids = proposer, encode, eos_ids
        self.longest = longest            # draft tokens per pass at most
        self.queued_limit = queued_limit  # a pass that feeds more (a prompt) takes no draft: every position costs logits
        self.pause = pause                # passes a hole goes without drafts after one was wholly rejected
        self._paused: dict[int, int] = {}   # id(filling) → passes left without drafts

    def rejected(self, filling) -> None:
        """A draft of `filling`'s hole was wholly rejected: its next drafts wait a few passes (a miss costs a wider pass)."""
        self._paused[id(filling)] = self.pause

    def draft(self, filling, tokens: list[int], room: int) -> list[int]:
        """The draft for `filling`'s hole after `tokens` (the row's sequence), `room` tokens at most."""
        room = min(room, self.longest)
        left = self._paused.get(id(filling), 0)
        if left:
            self._paused[id(filling)] = left - 1
            return []
        guide = filling.guide.copy()
        out: list[int] = []
        proposal: list[int] = []
        lookups = 0
        try:
            while len(out) < room and not guide.is_finished():
                ids, _ = forced_tokens(guide, self.encode)
                if ids:
                    ids = ids[:room - len(out)]
                    for tok in ids:
                        guide.advance(tok)
                    out += ids
                    proposal = proposal[len(ids):] if proposal[:len(ids)] == ids else []
                    continue
                mask = guide.allowed()
                if mask.count == 1:  # the one token the hole can take (settle takes it too)
                    tok = int(mask.ids[0])
                else:
                    if not proposal:
                        if lookups == 2:
                            break
                        lookups += 1
                        proposal = self.proposer.propose(tokens + out, room - len(out))
                        if not proposal:
                            break
                    tok = proposal[0]
                    if not mask[tok]:
                        break  # the constraint forbids it: never sent
                if tok in self.eos_ids:
                    break  # the hole's end is the decoder's to choose, and never goes into the row
                proposal = proposal[1:] if proposal and proposal[0] == tok else []
                out.append(tok)
                guide.advance(tok)
        except LmqlError:  # no token could continue the copy: what came before stands
            pass
        return out


def for_options(options, model, spell: Spellings) -> Drafter | None:
    """The drafter a run uses, or None: argmax drafts by default; sampling when `speculate=True`; beam never."""
    wanted = options.speculate
    if wanted is False or options.name == "beam" or (wanted is None and options.name != "argmax"):
        return None
    return Drafter(PromptLookup(), spell, model.vocabulary.eos_ids)
