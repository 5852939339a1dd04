"""Python regular expressions → byte-level DFAs, so patterns over any Unicode text can mask tokens that split characters.

The pattern is parsed by Python's own `re` parser (so the syntax is exactly Python's) and
compiled here: character sets become UTF-8 byte sequences in a Thompson NFA, and the subset
construction yields a `Dfa`. The language is `re.fullmatch`'s, with one deliberate difference:
`\\d` and `\\s` (and `\\D`, `\\S`) mean ASCII digits and whitespace, as under `re.ASCII`. A model
filling a date or a number should write 0-9, not one of Unicode's 680 other digits, and the
ASCII classes keep the automaton small (Unicode `\\d{4}-\\d{2}-\\d{2}` needs 179 states and 60 ms
to compile; ASCII needs 11 and 2 ms). `\\w` keeps Python's Unicode meaning (words in any
language), or ASCII under `(?a)`.
Under `(?i)` each character set is Python's to the letter: the code points case-related to
its members are decided by `re` itself (so the Kelvin sign is in `(?i)k`, ſ in `(?i)s`).
"""
from __future__ import annotations

import bisect
import functools
import re
import sys

import numpy as np

from ..errors import ConstraintError
from . import automata
from .automata import Dfa, make

import _sre

if sys.version_info >= (3, 11):
    from re import _casefix
    from re import _constants as sre_c
    from re import _parser as sre_parse
else:  # pragma: no cover
    import sre_constants as sre_c
    import sre_parse
    _casefix = None

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
    text = _all_chars()
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


@functools.cache
def _case_classes() -> dict[int, tuple[int, ...]]:
    """Each code point that has other cases, with every code point case-related to it.

    Related: the simple lower and upper case mappings in both directions, and the extra
    pairs Python's `re` folds together (such as s and ſ, k and the Kelvin sign). A
    case-insensitive set can only differ from its case-sensitive self on these points.
    """
    lower = getattr(_sre, "unicode_tolower", lambda c: c)
    extra = getattr(_casefix, "_EXTRA_CASES", {})
    text = _all_chars()
    parent: dict[int, int] = {}

    def root(c: int) -> int:
        while parent.get(c, c) != c:
            c = parent[c]
        return c

    def join(a: int, b: int) -> None:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
        parent.setdefault(min(ra, rb), min(ra, rb))

    step = 1024
    for at in range(0, len(text), step):
        chunk = text[at:at + step]
        if chunk.lower() == chunk and chunk.upper() == chunk:
            continue  # nothing cased here (whole chunks at C speed)
        for c in range(at, at + len(chunk)):
            ch = text[c]
            for other in (ch.lower(), ch.upper(), chr(lower(c))):
                if len(other) == 1 and other != ch:
                    join(c, ord(other))
    for a, others in extra.items():
        for b in others:
            join(a, b)
    groups: dict[int, list[int]] = {}
    for c in parent:
        groups.setdefault(root(c), []).append(c)
    return {c: tuple(sorted(g)) for g in groups.values() if len(g) > 1 for c in g}


@functools.cache
def _all_chars() -> str:
    """Every code point as one string (surrogates included), for scanning with `re` and str methods."""
    return np.arange(_MAX_CHAR + 1, dtype="<u4").tobytes().decode("utf-32-le", "surrogatepass")


def _member(ranges: list[tuple[int, int]], c: int) -> bool:
    i = bisect.bisect_right(ranges, (c, _MAX_CHAR + 1)) - 1
    return i >= 0 and ranges[i][0] <= c <= ranges[i][1]


def _without(ranges: list[tuple[int, int]], points: list[int]) -> list[tuple[int, int]]:
    """Normalised `ranges` minus the sorted `points`."""
    out = []
    for lo, hi in ranges:
        i = bisect.bisect_left(points, lo)
        while i < len(points) and points[i] <= hi:
            if points[i] > lo:
                out.append((lo, points[i] - 1))
            lo = points[i] + 1
            i += 1
        if lo <= hi:
            out.append((lo, hi))
    return out


def _ignoring_case(base, negate: bool, pattern: str, flags: int) -> list[tuple[int, int]]:
    """The code points a one-character `pattern` matches under re.IGNORECASE, exactly as `re` decides.

    `base` is the pattern's set without case folding (before `negate`). Only code points
    case-related to a member of `base` can be decided differently, and `re` itself decides
    those: so the set follows Python's case folding to the letter (the Kelvin sign is not
    in `(?i)[a-z]`'s complement, ſ is in `(?i)s`).
    """
    base = _normalize(base)
    related = _case_classes()
    touched = sorted({r for c in related if _member(base, c) for r in related[c]})
    plain = _negate(base) if negate else base
    prefix = "(?i)" + ("(?a)" if flags & sre_c.SRE_FLAG_ASCII else "")
    match = re.compile(prefix + pattern).fullmatch
    return _normalize(_without(plain, touched) + [(c, c) for c in touched if match(chr(c))])


def _escaped(lo: int, hi: int) -> str:
    return f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}"


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
        if op in (sre_c.LITERAL, sre_c.NOT_LITERAL):
            negate = op is sre_c.NOT_LITERAL
            if flags & sre_c.SRE_FLAG_IGNORECASE:
                return self.chars(_ignoring_case([(av, av)], negate, f"[{'^' * negate}{_escaped(av, av)}]", flags))
            return self.chars(_negate([(av, av)]) if negate else [(av, av)])
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
        ranges, negate, parts = [], False, []  # parts: the set's text, for `re` to decide case folding
        for op, av in items:
            if op is sre_c.NEGATE:
                negate = True
            elif op is sre_c.LITERAL:
                ranges.append((av, av))
                parts.append(_escaped(av, av))
            elif op is sre_c.RANGE:
                ranges.append(av)
                parts.append(_escaped(*av))
            elif op is sre_c.CATEGORY:
                unicode = av in _UNICODE_CATEGORIES and not flags & sre_c.SRE_FLAG_ASCII
                members = _category(_UNICODE_CATEGORIES[av]) if unicode else _ASCII_CATEGORIES[av]
                ranges.extend(members)
                parts.append(_UNICODE_CATEGORIES[av] if av in _UNICODE_CATEGORIES
                             else "".join(_escaped(lo, hi) for lo, hi in members))
            else:
                raise ConstraintError(f"{str(op).lower()} in a character class is not supported")
        if flags & sre_c.SRE_FLAG_IGNORECASE:
            return _ignoring_case(ranges, negate, f"[{'^' * negate}{''.join(parts)}]", flags)
        return _negate(ranges) if negate else _normalize(ranges)

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
