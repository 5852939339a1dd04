"""Speculative drafts: tokens guessed ahead of the model, sent in one forward pass and kept as far as the decoder agrees.

A `Proposer` guesses the tokens that follow a row's tokens; `PromptLookup` (the one built in)
finds the end of the row's text earlier in the row (the prompt, the inputs, what was generated)
and proposes the tokens that spell what followed there — what extraction, copying and quoting
queries write. It matches text, not token ids: a value often starts a word the document spells
with a space before it (`"Dr` against ` Dr`), and the two are different tokens. A small draft
model would be another `Proposer`, with the same `propose` and nothing else to change.

`Drafter.draft` walks the hole's guide (a copy: the real one is never advanced) over the
proposal: text the guide forces goes in for free, a token the constraint forbids ends the draft,
and so does the end of the hole or of its budget. It then keeps only as much of the draft as
pays: a wider pass costs more (on a CPU, llama.cpp spends about half a pass on each extra token,
transformers on the default model little for one or two and about half a pass from three), and a
guess is right only so often.
Both are measured as the model runs (`Learned`: the pass times by width, the share of guesses
kept by how long a match they came from), and the draft is cut where the expected tokens per
second of the pass are highest; no draft at all when one token per pass is faster.

At a hole's first token, where token healing took the prompt's last token back, the draft begins
with that token as the prompt spelt it: the model mostly writes it again, and then healing costs
no pass of its own.

The interpreter feeds the draft after the row's queued tokens (`Batch.step_all`), lets the
decoder choose at each position as if decoding one token at a time, keeps the longest agreeing
prefix and truncates the rest (docs/architecture.md). What the model writes never depends on
any of this, to float rounding: only how many passes it takes. llama.cpp's batched passes round
otherwise than its one-token passes (`batch_exact = False`), so there no healed token is guessed
and no draft follows a prompt, where a value's most uncertain choices are made.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict, deque
from dataclasses import dataclass
from statistics import median
from typing import Callable, Protocol, Sequence

from .constraints.base import Guide
from .errors import LmqlError

__all__ = ["Proposal", "Proposer", "PromptLookup", "Drafter", "Learned", "PassCosts", "Spellings", "for_options",
           "forced_tokens", "site_of", "BOUNDARY"]


@dataclass(frozen=True)
class Proposal:
    """Tokens a proposer guesses, and `evidence`: how much supports them (a lookup: the bytes its match is long)."""

    tokens: list[int]
    evidence: int


class Proposer(Protocol):
    """Guesses the tokens that follow a sequence (prompt lookup now; a small draft model later)."""

    def propose(self, tokens: Sequence[int], limit: int,
                wanted: Callable[[int], bool] | None = None) -> Proposal | None:
        """Up to `limit` token ids likely to follow `tokens` (the row's whole sequence), or None.
        `wanted(evidence)`: whether a proposal of that evidence would be used; when not, the
        proposer may stop before spelling it and give None."""


class PromptLookup:
    """The longest end of the row's text (`shortest` to `longest` bytes) found earlier in it; the
    tokens that spell what followed its latest place there.

    A match is searched on the row's bytes (the vocabulary's pieces joined), so it does not care
    how either place was cut into tokens; what followed is spelt by the tokenizer, about `reach`
    bytes per token asked for, the last token dropped when the text was cut short (it may be half
    a word).

    Two rules for the ends of a value, where the bytes before it are the query's and not the
    document's:
    - A match starts at the start of a word, and holds a letter or a digit. Punctuation and the
      end of a word, such as the `s": "` that ends both `"focus": "` and `"opens": "`, say nothing
      of the value after them (they proposed the previous key's value).
    - A word the row ends with that has no match (`"Dr`, `: 2`, too short or after punctuation) is
      looked up as a word, after a space (` Dr.`, ` 2025`): the way a document spells it.
    """

    SHORTEST, LONGEST, REACH = 3, 64, 6

    def __init__(self, pieces: Sequence[bytes], encode: Callable[[str], list[int]],
                 shortest: int | None = None, longest: int | None = None, reach: int | None = None):
        self.pieces, self.encode = pieces, encode
        self.shortest = shortest or self.SHORTEST
        self.longest, self.reach = longest or self.LONGEST, reach or self.REACH

    def propose(self, tokens: Sequence[int], limit: int,
                wanted: Callable[[int], bool] | None = None) -> Proposal | None:
        if limit <= 0:
            return None
        text = b"".join(map(self.pieces.__getitem__, tokens))
        n = len(text)
        found, start = self._match(text)
        if not found or wanted is not None and not wanted(found):
            return None  # not worth spelling: the tokenizer is the dearest part
        follows = text[start:start + limit * self.reach]
        ids = self.encode(follows.decode("utf-8", errors="ignore"))
        if start + len(follows) < n and len(ids) > 1:
            ids = ids[:-1]  # the text was cut: its last token may be half of a longer one
        return Proposal(ids[:limit], found) if ids else None

    def _match(self, text: bytes) -> tuple[int, int]:
        """(the bytes of the match, where the text that followed it begins), or (0, 0)."""
        n = len(text)
        if n > self.shortest and text.rfind(text[-self.shortest:], 0, n - 1) >= 0:
            # The longest end found earlier: an end found earlier has its own ends found earlier, so bisect.
            found, beyond = self.shortest, min(self.longest, n - 1) + 1
            while beyond - found > 1:
                mid = (found + beyond) // 2
                if text.rfind(text[-mid:], 0, n - 1) >= 0:
                    found = mid
                else:
                    beyond = mid
            if found < self.longest and text[-found] in _WORDLY and text[-found - 1] in _WORDLY:
                # it starts inside a word (the words differ there): the match is from that word's end
                found -= len(text[-found:]) - len(text[-found:].lstrip(_WORDLY_BYTES))
            if found >= self.shortest and any(map(_WORDLY.__contains__, text[-found:])):
                return found, text.rfind(text[-found:], 0, n - 1) + found
        word = len(text) - len(text.rstrip(_WORDLY_BYTES))
        if 0 < word < n:
            at = text.rfind(b" " + text[-word:], 0, n - word - 1)
            if at >= 0:
                return word + 1, at + word + 1
        return 0, 0


_WORDLY = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") | frozenset(range(0x80, 0x100))
_WORDLY_BYTES = bytes(sorted(_WORDLY))  # for bytes.rstrip: a letter, a digit, or part of a UTF-8 character


class PassCosts:
    """Seconds per forward pass by the tokens a row is fed in it (the widest row), measured as the
    model runs: the median of the latest few at each width. `relative(w)`: a pass of width w
    against one of width 1. A model may declare its own (`pass_cost(width)`); the fake one does."""

    KEPT = 9     # passes remembered per width
    WIDEST = 64  # wider passes (prompts) are not recorded: drafts never feed so much

    def __init__(self, declared: Callable[[int], float] | None = None):
        self.declared = declared
        self._seconds: dict[int, deque[float]] = {}
        self._medians: dict[int, float] = {}  # width → median of its deque, kept up to date

    def record(self, width: int, seconds: float) -> None:
        if 1 <= width <= self.WIDEST:
            kept = self._seconds.setdefault(width, deque(maxlen=self.KEPT))
            kept.append(seconds)
            self._medians[width] = median(kept)

    def relative(self, width: int) -> float:
        if self.declared is not None:
            return self.declared(width)
        if 1 not in self._medians or width <= 1:
            return 1.0 + 0.1 * (width - 1)  # nothing to compare with yet: nearly free, so a draft gets tried
        base, medians = self._medians[1], self._medians
        below = max([w for w in medians if 1 < w <= width], default=1)
        above = min([w for w in medians if w >= width > 1], default=None)
        at = lambda w: medians[w] / base if w > 1 else 1.0  # noqa: E731
        if above is None:  # wider than any measured: as the widest measured (tried, then known)
            return at(below) if below > 1 else 1.0 + 0.1 * (width - 1)
        if above == below:
            return at(below)
        return at(below) + (at(above) - at(below)) * (width - below) / (above - below)


# The strength of a guess that is no lookup's: a token at a boundary the model may write merged with
# what follows, spelt on its own: the prompt's last token that healing took back, or the last token
# of forced text (fast-forward holds it back: `" "` before `" negative"`).
BOUNDARY = 0


class Learned:
    """What a model's drafts have shown, kept for as long as the model is loaded: its pass costs,
    and per strength of evidence (a match of 2–3, 4–7, 8–15, 16–31, 32+ bytes) how often a drafted
    token the model had not yet refused was kept (hits / trials).

    A token at a boundary (`BOUNDARY`: a healed token, the last of forced text) is a strength of its own.

    The prior is worth two guesses, at the shares `bench/speculation.py --guesses` measured (drafts
    forced on over its queries and bench/run.py's, on the default model): healed tokens kept 12 of
    15, matches under 8 bytes 47 of 84 guesses, of 8–15 bytes 3 of 7, of 32 or more 12 of 13
    (docs/performance.md)."""

    PRIOR = {BOUNDARY: 0.8, 1: 0.55, 2: 0.55, 3: 0.55, 4: 0.65, 5: 0.8, 6: 0.9}
    WEIGHT, CAP = 2.0, 64.0
    SITE_CAP, SITES = 16.0, 1024  # a site's own count is halved past 16 guesses; the latest 1024 are kept

    def __init__(self, declared_cost: Callable[[int], float] | None = None):
        self.costs = PassCosts(declared_cost)
        self._counts: dict[int, list[float]] = {}
        self._sites: OrderedDict[object, list[float]] = OrderedDict()

    @staticmethod
    def strength(evidence: int) -> int:
        return min(max(evidence, 1).bit_length(), 6)

    def _prior(self, strength: int) -> list[float]:
        return [self.PRIOR[strength] * self.WEIGHT, self.WEIGHT]

    def chance(self, strength: int) -> float:
        hits, trials = self._counts.get(strength) or self._prior(strength)
        return hits / trials

    def observed(self, strength: int) -> tuple[float, float]:
        """(guesses kept, guesses judged) of `strength` beyond the prior; exact until `CAP` halves them."""
        hits, trials = self._counts.get(strength) or self._prior(strength)
        prior_hits, prior_trials = self._prior(strength)
        return hits - prior_hits, trials - prior_trials

    def likeliest(self) -> int:
        """The strength whose lookup guesses are kept most often."""
        return max((s for s in self.PRIOR if s != BOUNDARY), key=self.chance)

    def site(self, key) -> list[float]:
        """[guesses kept, guesses judged] at one hole of one query (`site_of`), over every run of it
        while the model is loaded: the same few-shot answer is refused run after run, the same
        document copied run after run. The list itself, for `Drafter.kept` to add to."""
        counts = self._sites.get(key)
        if counts is None:
            counts = self._sites[key] = [0.0, 0.0]
            if len(self._sites) > self.SITES:
                self._sites.popitem(last=False)
        else:
            self._sites.move_to_end(key)
        return counts

    def saw(self, strength: int, kept: bool) -> None:
        counts = self._counts.setdefault(strength, self._prior(strength))
        counts[0] += kept
        counts[1] += 1
        if counts[1] > self.CAP:  # the latest drafts weigh most
            counts[0] /= 2
            counts[1] /= 2


_LEARNED: "weakref.WeakKeyDictionary[object, Learned]" = weakref.WeakKeyDictionary()


def _loaded(model):
    """A handle's loaded model; any other model itself."""
    from .llm import LLM
    return model.load() if isinstance(model, LLM) else model


def learned_for(model) -> Learned:
    """The model's `Learned`, made on its first run with drafts (a handle's: its loaded model's)."""
    model = _loaded(model)
    try:
        found = _LEARNED.get(model)
        if found is None:
            found = _LEARNED[model] = Learned(getattr(model, "pass_cost", None))
        return found
    except TypeError:  # a model that cannot be weakly referenced: learns per run
        return Learned(getattr(model, "pass_cost", None))


def site_of(filling) -> object:
    """Which hole of which query `filling` fills: the query's text and the hole's place in it (a
    loop's hole is one site over its iterations). A filling without them is a site of its own."""
    program, hole = getattr(filling, "program", None), getattr(filling, "hole", None)
    if program is None or hole is None:
        return ("filling", id(filling))
    return (program.query.source, hole.name, hole.line, hole.column)


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
    """Per run: builds each hole's draft from a proposer, under the hole's constraint and budgets,
    as long as it pays (`worth`)."""

    def __init__(self, proposer: Proposer, encode: Callable[[str], list[int]], eos_ids: frozenset[int],
                 learned: Learned | None = None, longest: int = 8, exact: bool = True):
        self.proposer, self.encode, self.eos_ids = proposer, encode, eos_ids
        self.learned = learned or Learned()
        self.longest = longest  # draft tokens per pass at most
        # On a model whose batched passes round otherwise than its one-token passes (`batch_exact`
        # False: llama.cpp), no healed token is guessed and a pass feeding a prompt takes no draft:
        # there a guess would move the value's most uncertain choices off what plain decoding sees.
        self.heal = exact
        self.queued_limit = None if exact else self.INEXACT_QUEUED
        self._strengths: dict[int, list[int | None]] = {}  # id(filling) → per draft token, its strength (None: sure)

    def draft(self, filling, tokens: list[int], room: int, queued: int = 1, sparse: bool = False) -> list[int]:
        """The draft for `filling`'s hole after `tokens` (the row's sequence, `queued` of them not yet
        fed), `room` tokens at most, cut where it stops paying (`sparse`: a plain pass would compute
        the logits of the few tokens the mask allows only, see `worth`)."""
        room = min(room, self.longest)
        key = site_of(filling)
        hole = self.learned.site(key)
        healed = self._healed(filling, tokens)
        boundary = self.learned.site((key, BOUNDARY))

        def pays(strengths: Sequence[int | None]) -> int:
            return self.worth(strengths, queued, hole, boundary, sparse)

        if not healed and not filling.guide.forced() and pays([self.learned.likeliest()] * room) == 0:
            return []  # not even a run of the likeliest guesses would pay: no lookup
        guide = filling.guide.copy()
        out: list[int] = []
        strengths: list[int | None] = []  # None: a token the hole must take (forced text, a lone allowed token)
        proposal: list[int] = []
        strength = 0
        lookups = 0
        try:
            for tok in healed[:room]:  # the prompt's own spelling of the text healing took back
                if not guide.allowed()[tok]:
                    break
                out.append(tok)
                strengths.append(BOUNDARY)
                guide.advance(tok)
            while len(out) < room and not guide.is_finished():
                ids, finishes = forced_tokens(guide, self.encode)
                if ids:
                    # its last token may merge with the text after it (why fast-forward holds it back)
                    sure = [None] * len(ids) if finishes else [None] * (len(ids) - 1) + [BOUNDARY]
                    ids = ids[:room - len(out)]
                    for tok in ids:
                        guide.advance(tok)
                    out += ids
                    strengths += sure[:len(ids)]
                    proposal = proposal[len(ids):] if proposal[:len(ids)] == ids else []
                    continue
                mask = guide.allowed()
                sure = mask.count == 1
                if sure:  # the one token the hole can take (settle takes it too)
                    tok = int(mask.ids[0])
                else:
                    if not proposal:
                        if lookups == 2:
                            break
                        lookups += 1
                        left = room - len(out)
                        found = self.proposer.propose(
                            tokens + out, left,
                            lambda e, s=strengths, left=left: pays(s + [self.learned.strength(e)] * left) > 0)
                        if found is None or not found.tokens:
                            break
                        proposal, strength = found.tokens, self.learned.strength(found.evidence)
                    tok = proposal[0]
                    if not mask[tok]:
                        break  # the constraint forbids it: never sent
                if tok in self.eos_ids:
                    break  # the hole's end is the decoder's to choose, and never goes into the row
                proposal = proposal[1:] if proposal and proposal[0] == tok else []
                out.append(tok)
                strengths.append(None if sure else strength)
                guide.advance(tok)
        except LmqlError:  # no token could continue the copy: what came before stands
            pass
        keep = pays(strengths)
        if keep:
            self._strengths[id(filling)] = strengths[:keep]
        return out[:keep]

    def _healed(self, filling, tokens: list[int]) -> list[int]:
        """At a hole's first token, when healing took the prompt's last token back: the tokens that
        spell the text taken back, the guess that the model writes it as the prompt did (it
        mostly does; guessed, it costs no pass of its own). Else []."""
        prefix = getattr(filling, "heal_prefix", b"")
        if not self.heal or not prefix or len(tokens) != filling.start:
            return []
        try:
            return self.encode(prefix.decode("utf-8"))
        except UnicodeDecodeError:  # half of a character: the tokenizer cannot spell it alone
            return []

    INEXACT_QUEUED = 8  # the most tokens queued (forced text) that a draft follows on such a model

    MARGIN = 1.1  # a draft must promise this much more than a plain pass: near 1 the estimates decide by noise
    HOLE_WEIGHT = 2.0  # the model-wide chance counts as this many of the hole's own guesses
    # and as this many of a boundary's: whether the model writes `" "` alone after `1. ` is the
    # tokenizer's habit there, the same run after run, so the boundary's own count soon decides
    BOUNDARY_WEIGHT = 0.5
    SPARSE = 0.125  # of a one-token pass: the output layer's share, which a plain pass over a few allowed tokens skips

    def worth(self, strengths: Sequence[int | None], queued: int = 1, hole: Sequence[float] | None = None,
              boundary: Sequence[float] | None = None, sparse: bool = False) -> int:
        """How many of a draft's tokens to send: the count with the most expected tokens per unit of
        pass time, if that beats a plain pass by `MARGIN` (else 0). A token counts when every one
        before it was kept; a guess with the model's chance for its strength, moved towards the
        share the hole's own guesses kept (`hole`: [kept, judged]): a few-shot prompt's earlier
        answer matches well and is the one text the model must not copy. A boundary token's chance
        moves towards the share kept at this hole's boundaries (`boundary`), apart: after `1. ` in
        a list the model writes ` Apple`, never the space alone. With `sparse` the plain pass is
        cheaper by `SPARSE`: it computes only the allowed tokens' logits, a draft's pass all of
        them (the transformers engine; the output layer is about an eighth of SmolLM2's pass)."""
        costs = self.learned.costs
        w = self.HOLE_WEIGHT

        def chance(strength: int) -> float:
            if strength == BOUNDARY:
                hits, trials = boundary or (0, 0)
                return (self.learned.chance(strength) * self.BOUNDARY_WEIGHT + hits) / (self.BOUNDARY_WEIGHT + trials)
            hits, trials = hole or (0, 0)
            return (self.learned.chance(strength) * w + hits) / (w + trials)

        plain = costs.relative(max(queued, 1)) - (self.SPARSE if sparse else 0.0)
        best, best_rate = 0, self.MARGIN / plain
        expected, chain = 1.0, 1.0
        for k, strength in enumerate(strengths, 1):
            chain *= 1.0 if strength is None else chance(strength)
            expected += chain
            rate = expected / costs.relative(queued + k)
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def kept(self, filling, accepted: int) -> None:
        """`accepted` tokens of `filling`'s last draft were kept: what its guesses are worth is updated."""
        key = site_of(filling)
        hole = self.learned.site(key)
        for i, strength in enumerate(self._strengths.pop(id(filling), ())):
            if strength is not None:
                self.learned.saw(strength, i < accepted)
                counts = self.learned.site((key, BOUNDARY)) if strength == BOUNDARY else hole
                counts[0] += i < accepted
                counts[1] += 1
                if counts[1] > self.learned.SITE_CAP:  # the latest runs weigh most
                    counts[0] /= 2
                    counts[1] /= 2
            if i >= accepted:
                break


def for_options(options, model, spell: Spellings) -> Drafter | None:
    """The drafter a run uses, or None: argmax drafts by default; sampling when `speculate=True`; beam never."""
    wanted = options.speculate
    if wanted is False or options.name == "beam" or (wanted is None and options.name != "argmax"):
        return None
    return Drafter(PromptLookup(model.vocabulary.tokens, model.encode), spell, model.vocabulary.eos_ids,
                   learned_for(model), exact=getattr(_loaded(model), "batch_exact", True))
