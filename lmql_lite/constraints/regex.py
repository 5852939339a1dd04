"""Python regular expressions → byte-level DFAs, so patterns over any Unicode text can mask tokens that split characters.

The pattern is parsed by Python's own `re` parser (so the syntax is exactly Python's) and
compiled here: character sets become UTF-8 byte sequences in a Thompson NFA, and the subset
construction yields a `Dfa`. The language is `re.fullmatch`'s, with one deliberate difference:
`\\d` and `\\s` (and `\\D`, `\\S`) mean ASCII digits and whitespace, as under `re.ASCII`. A model
filling a date or a number should write 0-9, not one of Unicode's 680 other digits, and the
ASCII classes keep the automaton small (Unicode `\\d{4}-\\d{2}-\\d{2}` needs 179 states and 60 ms
to compile; ASCII needs 11 and 2 ms). `\\w` keeps Python's Unicode meaning (words in any
language), or ASCII under `(?a)`.
"""
from __future__ import annotations

import functools
import re
import sys

import numpy as np

from ..errors import ConstraintError
from . import automata
from .automata import Dfa, make

if sys.version_info >= (3, 11):
    from re import _constants as sre_c
    from re import _parser as sre_parse
else:  # pragma: no cover
    import sre_constants as sre_c
    import sre_parse

_MAX_CHAR = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_MAX_REPEAT = 1000

_UNSUPPORTED = {getattr(sre_c, name): feature for name, feature in {
    "GROUPREF": "backreferences", "GROUPREF_EXISTS": "conditional groups (?(id)yes|no)",
    "ASSERT": "lookaround (?=...), (?<=...)", "ASSERT_NOT": "negative lookaround (?!...), (?<!...)",
    "ATOMIC_GROUP": "atomic groups (?>...)", "POSSESSIVE_REPEAT": "possessive repeats (*+, ++, ?+)",
}.items() if hasattr(sre_c, name)}


@functools.lru_cache(maxsize=256)
def regex_dfa(pattern: str) -> Dfa:
    """The DFA of the texts `re.fullmatch(pattern, text)` accepts."""
    nfa = Nfa()
    return nfa.determinize(*nfa.pattern(pattern))


# ---- character sets as sorted, disjoint, inclusive code point ranges ----------------------

def _normalize(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _negate(ranges) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in _normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_CHAR:
        out.append((nxt, _MAX_CHAR))
    return out


@functools.cache
def _category(pattern: str) -> tuple[tuple[int, int], ...]:
    """The code points a one-character class like \\d matches, computed with `re` itself."""
    text = np.arange(_MAX_CHAR + 1, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")
    return tuple((m.start(), m.end() - 1) for m in re.finditer(pattern + "+", text))


_UNICODE_CATEGORIES = {sre_c.CATEGORY_WORD: r"\w", sre_c.CATEGORY_NOT_WORD: r"\W"}
_ASCII_CATEGORIES = {
    sre_c.CATEGORY_DIGIT: [(48, 57)], sre_c.CATEGORY_WORD: [(48, 57), (65, 90), (95, 95), (97, 122)],
    sre_c.CATEGORY_SPACE: [(9, 13), (32, 32)],
}
_ASCII_CATEGORIES.update({
    sre_c.CATEGORY_NOT_DIGIT: _negate(_ASCII_CATEGORIES[sre_c.CATEGORY_DIGIT]),
    sre_c.CATEGORY_NOT_WORD: _negate(_ASCII_CATEGORIES[sre_c.CATEGORY_WORD]),
    sre_c.CATEGORY_NOT_SPACE: _negate(_ASCII_CATEGORIES[sre_c.CATEGORY_SPACE]),
})


def _casefold(ranges) -> list[tuple[int, int]]:
    """Add the other case of each letter (single-character mappings; ranges past 5,000 chars only ASCII)."""
    extra = []
    for lo, hi in ranges:
        chars = range(lo, hi + 1) if hi - lo < 5000 else [c for c in range(lo, min(hi, 127) + 1)]
        for c in chars:
            for other in (chr(c).lower(), chr(c).upper()):
                if len(other) == 1 and ord(other) != c:
                    extra.append((ord(other), ord(other)))
    return _normalize(list(ranges) + extra)


def _utf8_sequences(lo: int, hi: int):
    """Split a code point range into runs of byte ranges, one byte range per UTF-8 byte."""
    for boundary in (0x7F, 0x7FF, 0xFFFF):
        if lo <= boundary < hi:
            yield from _utf8_sequences(lo, boundary)
            yield from _utf8_sequences(boundary + 1, hi)
            return
    if hi <= 0x7F:
        yield [(lo, hi)]
        return
    n = len(chr(lo).encode("utf-8"))
    for i in range(1, n):
        m = (1 << (6 * i)) - 1
        if lo & ~m != hi & ~m:
            if lo & m:
                yield from _utf8_sequences(lo, lo | m)
                yield from _utf8_sequences((lo | m) + 1, hi)
                return
            if hi & m != m:
                yield from _utf8_sequences(lo, (hi & ~m) - 1)
                yield from _utf8_sequences(hi & ~m, hi)
                return
    yield list(zip(chr(lo).encode("utf-8"), chr(hi).encode("utf-8")))


class Nfa:
    """A Thompson NFA over bytes: per state, epsilon targets and (lo, hi, target) byte edges.

    Methods that build return a fragment `(start, end)`: its texts lead from start to end.
    """

    def __init__(self):
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []

    def state(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def pattern(self, pattern: str) -> tuple[int, int]:
        """A fragment for the texts `re.fullmatch(pattern, text)` accepts."""
        try:
            parsed = sre_parse.parse(pattern)
        except re.error as e:
            raise ConstraintError(f"invalid regular expression {pattern!r}: {e}") from None
        items = list(parsed)
        if items and items[0][0] is sre_c.AT and items[0][1] in (sre_c.AT_BEGINNING, sre_c.AT_BEGINNING_STRING):
            items = items[1:]
        if items and items[-1][0] is sre_c.AT and items[-1][1] in (sre_c.AT_END, sre_c.AT_END_STRING):
            items = items[:-1]
        try:
            return self.sequence(items, parsed.state.flags)
        except ConstraintError as e:
            raise ConstraintError(f"regular expression {pattern!r}: {e.message}") from None

    def literal(self, data: bytes) -> tuple[int, int]:
        start = end = self.state()
        for b in data:
            nxt = self.state()
            self.edges[end].append((b, b, nxt))
            end = nxt
        return start, end

    def embed(self, dfa: Dfa) -> tuple[int, int]:
        """A fragment for the language of `dfa` (a copy of its states)."""
        first = len(self.eps)
        for _ in range(len(dfa)):
            self.state()
        end = self.state()
        for s, row in enumerate(dfa.table):
            cuts = np.flatnonzero(np.diff(row) != 0) + 1
            for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), 256]):
                if row[lo] >= 0:
                    self.edges[first + s].append((lo, hi - 1, first + int(row[lo])))
            if dfa.accepting[s]:
                self.eps[first + s].append(end)
        return first, end

    def chain(self, *fragments: tuple[int, int]) -> tuple[int, int]:
        """The fragments one after another."""
        for (_, e), (s, _) in zip(fragments, fragments[1:]):
            self.eps[e].append(s)
        return fragments[0][0], fragments[-1][1]

    def either(self, fragments) -> tuple[int, int]:
        start, end = self.state(), self.state()
        for s, e in fragments:
            self.eps[start].append(s)
            self.eps[e].append(end)
        return start, end

    def chars(self, ranges) -> tuple[int, int]:
        start, end = self.state(), self.state()
        trie: dict[tuple[int, tuple], int] = {}
        for lo, hi in ranges:
            if lo <= _SURROGATES[1] and hi >= _SURROGATES[0]:  # not encodable: drop
                parts = [(lo, _SURROGATES[0] - 1), (_SURROGATES[1] + 1, hi)]
            else:
                parts = [(lo, hi)]
            for plo, phi in parts:
                if plo > phi:
                    continue
                for seq in _utf8_sequences(plo, phi):
                    s = start
                    for i, (blo, bhi) in enumerate(seq):
                        if i == len(seq) - 1:
                            self.edges[s].append((blo, bhi, end))
                        else:
                            key = (s, (blo, bhi))
                            if key not in trie:
                                trie[key] = self.state()
                                self.edges[s].append((blo, bhi, trie[key]))
                            s = trie[key]
        return start, end

    def sequence(self, items, flags: int) -> tuple[int, int]:
        start = end = self.state()
        for op, av in items:
            s, e = self.item(op, av, flags)
            self.eps[end].append(s)
            end = e
        return start, end

    def item(self, op, av, flags: int) -> tuple[int, int]:
        if op in _UNSUPPORTED:
            raise ConstraintError(f"{_UNSUPPORTED[op]} are not supported")
        if op is sre_c.LITERAL:
            return self.chars(self._fold([(av, av)], flags))
        if op is sre_c.NOT_LITERAL:
            return self.chars(_negate(self._fold([(av, av)], flags)))
        if op is sre_c.ANY:
            return self.chars([(0, _MAX_CHAR)] if flags & sre_c.SRE_FLAG_DOTALL else _negate([(10, 10)]))
        if op is sre_c.IN:
            return self.chars(self._set(av, flags))
        if op is sre_c.BRANCH:
            start, end = self.state(), self.state()
            for alt in av[1]:
                s, e = self.sequence(alt, flags)
                self.eps[start].append(s)
                self.eps[e].append(end)
            return start, end
        if op is sre_c.SUBPATTERN:
            _group, add, remove, body = av
            return self.sequence(body, (flags | add) & ~remove)
        if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
            return self.repeat(*av, flags)
        if op is sre_c.AT:
            raise ConstraintError("anchors (^ $ \\A \\Z \\b \\B) are only supported at the ends of the pattern")
        raise ConstraintError(f"{str(op).lower()} is not supported")

    def repeat(self, lo: int, hi: int, body, flags: int) -> tuple[int, int]:
        unbounded = hi is sre_c.MAXREPEAT
        if lo > _MAX_REPEAT or (not unbounded and hi > _MAX_REPEAT):
            raise ConstraintError(f"repeat counts above {_MAX_REPEAT} are not supported")
        start = end = self.state()
        for _ in range(lo):
            s, e = self.sequence(body, flags)
            self.eps[end].append(s)
            end = e
        if unbounded:
            s, e = self.sequence(body, flags)
            self.eps[end].append(s)
            self.eps[e].append(s)
            self.eps[e].append(end)
            loop_exit = self.state()
            self.eps[end].append(loop_exit)
            self.eps[e].append(loop_exit)
            return start, loop_exit
        optional_end = self.state()
        for _ in range(hi - lo):
            self.eps[end].append(optional_end)
            s, e = self.sequence(body, flags)
            self.eps[end].append(s)
            end = e
        self.eps[end].append(optional_end)
        return start, optional_end

    def _set(self, items, flags: int) -> list[tuple[int, int]]:
        ranges, negate = [], False
        for op, av in items:
            if op is sre_c.NEGATE:
                negate = True
            elif op is sre_c.LITERAL:
                ranges.append((av, av))
            elif op is sre_c.RANGE:
                ranges.append(av)
            elif op is sre_c.CATEGORY:
                unicode = av in _UNICODE_CATEGORIES and not flags & sre_c.SRE_FLAG_ASCII
                ranges.extend(_category(_UNICODE_CATEGORIES[av]) if unicode else _ASCII_CATEGORIES[av])
            else:
                raise ConstraintError(f"{str(op).lower()} in a character class is not supported")
        ranges = self._fold(ranges, flags)
        return _negate(ranges) if negate else ranges

    @staticmethod
    def _fold(ranges, flags: int) -> list[tuple[int, int]]:
        return _casefold(ranges) if flags & sre_c.SRE_FLAG_IGNORECASE else _normalize(ranges)

    def determinize(self, start: int, end: int) -> Dfa:
        closures: dict[int, frozenset[int]] = {}

        def closure(s: int) -> frozenset[int]:
            if s not in closures:
                seen, stack = {s}, [s]
                while stack:
                    for t in self.eps[stack.pop()]:
                        if t not in seen:
                            seen.add(t)
                            stack.append(t)
                closures[s] = frozenset(seen)
            return closures[s]

        first = closure(start)
        ids = {first: 0}
        order = [first]
        rows = []
        unions: dict[frozenset, frozenset] = {}  # edge targets -> the subset they lead to
        limit = automata.max_states()
        for subset in order:  # grows while we iterate: the subset construction's work list
            # one sweep over the subset's edges sorted by their first byte: each byte range's targets
            edges = sorted(e for n in subset for e in self.edges[n])
            row = np.full(256, -1, np.int32)
            if edges:
                cuts = sorted({lo for lo, _, _ in edges} | {hi + 1 for _, hi, _ in edges})
                active: list[tuple[int, int, int]] = []
                i = 0
                for lo, nxt in zip(cuts, cuts[1:]):
                    while i < len(edges) and edges[i][0] <= lo:
                        active.append(edges[i])
                        i += 1
                    active = [e for e in active if e[1] >= lo]
                    if not active:
                        continue
                    heads = frozenset(t for _, _, t in active)
                    targets = unions.get(heads)
                    if targets is None:
                        targets = unions[heads] = frozenset().union(*[closure(t) for t in heads])
                    if targets not in ids:
                        ids[targets] = len(order)
                        order.append(targets)
                    row[lo:nxt] = ids[targets]
            rows.append(row)
            if len(order) > limit:
                automata.spend(len(order), limit)
            elif len(rows) % 1024 == 0:
                automata.spend(0)
        accepting = np.array([end in subset for subset in order])
        return make(np.stack(rows), accepting)
