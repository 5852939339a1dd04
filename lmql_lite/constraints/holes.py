"""What a hole's `where` term means: its automaton (language and stop phrases), token-count bounds, value type and post-check.

A term is put in negation normal form and each part becomes one of four kinds:
- a regular language (REGEX, INT, FLOAT, `in [...]`, `==`, `!=`, `<`..., `"s" in X`, `len(X)`):
  a byte DFA; `and` intersects, `or` unites, `not` complements (within valid UTF-8);
- stop phrases (STOPS_AT, STOPS_BEFORE): endings, not restrictions on the text. The hole ends at
  the first point where a phrase has just been written and the rest of the constraint accepts
  the value there (for STOPS_AT the value includes the phrase, for STOPS_BEFORE the text before
  it); elsewhere a phrase is ordinary text. `or` of stop phrases is the same as `and`: both mean
  "whichever comes first". `not STOPS_AT(...)` means nothing and is an error;
- token counts (`len(TOKENS(X)) op n`): a set of allowed counts; `and`/`or`/`not` are set algebra;
- post-checks (Python predicates, comparisons with numbers): not masked, evaluated on the value.

`or` is exact only within a kind. Mixing kinds under `or` is handled soundly:
a disjunct holding a post-check makes the mask's language of that `or` unrestricted, and the
whole term is checked on the value (a failure is a ConstraintError, never a silent pass);
`or` between a stop phrase or token count and anything of another kind is refused with a
ConstraintError, since no automaton over the text alone can express it.
"""
from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConstraintBudgetError, ConstraintError
from . import automata, grammar, json_schema, terms
from .automata import Dfa
from .regex import regex_dfa

INT_PATTERN = r" ?-?[0-9]+"
FLOAT_PATTERN = r" ?-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"

_OPS = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">=": operator.ge, ">": operator.gt}
_NEGATED = {"<": ">=", "<=": ">", "==": "!=", "!=": "==", ">=": "<", ">": "<="}


@dataclass(frozen=True)
class Counts:
    """Allowed token counts: sorted, disjoint, inclusive intervals (the last may end at math.inf)."""

    intervals: tuple[tuple[int, float], ...]

    @classmethod
    def compare(cls, op: str, n: Any) -> "Counts":
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n != n:
            raise ConstraintError(f"len(TOKENS(...)) compares with a number, got {n!r}")
        if n in (math.inf, -math.inf):  # every count compares with it as 0 does
            return cls(((0, math.inf),)) if _OPS[op](0, n) else cls(())
        below = math.ceil(n) - 1  # the largest count < n
        above = math.floor(n) + 1  # the smallest count > n
        exact = [(int(n), int(n))] if n == int(n) else []
        spans = {"<": [(0, below)], "<=": [(0, math.floor(n))], "==": exact,
                 "!=": [(0, below), (above, math.inf)] if exact else [(0, math.inf)],
                 ">=": [(math.ceil(n), math.inf)], ">": [(above, math.inf)]}[op]
        return cls(tuple((max(lo, 0), hi) for lo, hi in spans if hi >= max(lo, 0)))

    def __and__(self, other: "Counts") -> "Counts":
        out = [(max(a, c), min(b, d)) for a, b in self.intervals for c, d in other.intervals]
        return Counts(tuple(sorted((lo, hi) for lo, hi in out if lo <= hi)))

    def __or__(self, other: "Counts") -> "Counts":
        merged: list[list] = []
        for lo, hi in sorted(self.intervals + other.intervals):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return Counts(tuple((lo, hi) for lo, hi in merged))

    def __invert__(self) -> "Counts":
        out, nxt = [], 0
        for lo, hi in self.intervals:
            if lo > nxt:
                out.append((nxt, lo - 1))
            nxt = hi + 1
        if nxt != math.inf:
            out.append((nxt, math.inf))
        return Counts(tuple(out))

    def allows(self, n: int) -> bool:
        return any(lo <= n <= hi for lo, hi in self.intervals)

    @property
    def lo(self) -> int:
        return self.intervals[0][0]

    @property
    def hi(self) -> float:
        return self.intervals[-1][1]


ANY_COUNT = Counts(((0, math.inf),))


@dataclass(frozen=True)
class Stop:
    phrase: bytes
    before: bool  # STOPS_BEFORE: the phrase is dropped from the value


@dataclass(eq=False)
class HoleAutomaton:
    """The byte automaton a hole decodes under, with the per-state facts the guide and index need."""

    table: np.ndarray      # (S, 256) int32, -1 = no valid value continues this way
    accepting: np.ndarray  # (S,) bool: the text is a complete value (end-of-sequence may end it)
    stop: np.ndarray       # (S,) int: the stop phrase whose completion entering this state is, or -1
    drops: tuple[int, ...]  # per stop phrase: bytes dropped from the end when it ends the hole

    def __post_init__(self):
        self.stops = self.stop >= 0
        finals = self.accepting | self.stops
        self.bytedist = automata.distances(self.table, finals)  # fewest bytes to a possible ending
        self.has_next = (self.table >= 0).any(1)
        self.end_ok = self.accepting | self.has_next
        self.max_bytedist = int(self.bytedist.max())
        self._longest = None
        self._rows: dict[int, list[int]] = {}

    # A guide walks each token byte by byte: Python ints and bools read much faster than numpy scalars.
    def row(self, state: int) -> list[int]:
        """`table[state]` as a Python list, made on the state's first visit."""
        row = self._rows.get(state)
        if row is None:
            row = self._rows[state] = self.table[state].tolist()
        return row

    @functools.cached_property
    def flags(self) -> tuple[list[bool], list[bool], list[bool]]:
        """`accepting`, `stops` and `has_next` as Python lists."""
        return self.accepting.tolist(), self.stops.tolist(), self.has_next.tolist()

    @functools.cached_property
    def only_next(self) -> list[int]:
        """Per state, the one byte that continues it, or -1 (none, or a choice): the forced text's walk."""
        live = self.table >= 0
        return np.where(live.sum(axis=1) == 1, live.argmax(axis=1), -1).tolist()

    @property
    def longest(self) -> np.ndarray:
        """Most bytes from each state to a possible ending (math.inf past a cycle)."""
        if self._longest is None:
            self._longest = longest_paths(self.table, self.accepting | self.stops)
        return self._longest


@dataclass
class HolePlan:
    """Everything the guide needs for one hole, independent of the model."""

    var: str
    term: Any                # the constraint (for messages and the post-check)
    automaton: HoleAutomaton
    counts: Counts
    convert: Any             # text -> value (int, float, JSON), raising ConstraintError; None: the text
    check: bool = False      # the term holds parts only a post-check decides
    atoms: dict = field(default_factory=dict)


def plan_hole(term: Any, var: str, hole_type: Any = None) -> HolePlan:
    """Compile a hole's constraint term (None/True: unconstrained) and type into a plan; ConstraintError if unsatisfiable."""
    if term is True:
        term = None
    try:
        with automata.budget():
            return _plan_hole(term, var, hole_type)
    except ConstraintBudgetError as e:
        raise ConstraintBudgetError(f"{var}: {e.message}") from None
    except MemoryError:
        raise ConstraintBudgetError(f"{var}: compiling its constraint ran out of memory (set "
                                    f"{automata.MAX_STATES_VAR} lower than {automata.max_states():,} to stop it "
                                    "sooner)") from None


def _plan_hole(term: Any, var: str, hole_type: Any) -> HolePlan:
    type_term = _type_term(var, hole_type)
    full = term if type_term is None else (type_term if term is None else terms.And((type_term, term)))
    spec = _Spec() if full is None else _spec(_nnf(full, False), var)
    counts = spec.counts or ANY_COUNT
    shown = full if full is not None else "(no constraint)"
    if not counts.intervals:
        raise ConstraintError(f"{var} can never satisfy its constraint: no token count fits {shown}")
    language = spec.language if spec.language is not None else automata.utf8()
    if language.empty:
        raise ConstraintError(f"{var} can never satisfy its constraint: no text satisfies {shown}")
    automaton = hole_automaton(language, spec.stops)
    if not spec.stops and counts.lo > 0 and automaton.longest[0] < counts.lo:
        raise ConstraintError(f"{var} can never satisfy its constraint: every value is shorter than "
                              f"{counts.lo} tokens in {shown}")
    conjuncts = () if full is None else full.parts if isinstance(full, terms.And) else (full,)
    typed = next((p for p in conjuncts if isinstance(p, (terms.Int, terms.Float, terms.Json, terms.Grammar))), None)
    convert = None if typed is None else json_schema.converter(typed.schema) if isinstance(typed, terms.Json) \
        else grammar.converter(typed.text) if isinstance(typed, terms.Grammar) \
        else _number(int if isinstance(typed, terms.Int) else float)
    return HolePlan(var, full, automaton, counts, convert, spec.check)


def _number(kind: type):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise ConstraintError(f"{text!r} is not a valid {kind.__name__}") from None
    return convert


def _type_term(var: str, hole_type: Any) -> Any:
    if hole_type is None or hole_type is str:
        return None
    if hole_type is int:
        return terms.Int(var)
    if hole_type is float:
        return terms.Float(var)
    if isinstance(hole_type, str):
        return terms.Regex(var, hole_type)
    if json_schema.is_json_type(hole_type):
        return terms.Json(var, hole_type)
    raise ConstraintError(f"[{var}: {getattr(hole_type, '__name__', hole_type)}] is not a type the "
                          "constraint engine supports (int, float, str, a regex string, a dataclass, a pydantic "
                          "model, an enum or a typing type such as list[str])")


# ---- terms → specs ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    language: Dfa | None = None     # None: any text
    stops: tuple[Stop, ...] = ()
    counts: Counts | None = None    # None: any count
    check: bool = False


def _nnf(term: Any, negate: bool) -> Any:
    """Push `not` down to the atoms; a negated atom is returned as terms.Not(atom)."""
    if isinstance(term, terms.Not):
        return _nnf(term.part, not negate)
    if isinstance(term, (terms.And, terms.Or)):
        parts = tuple(_nnf(p, negate) for p in term.parts)
        flip = isinstance(term, terms.And) == negate
        return terms.Or(parts) if flip else terms.And(parts)
    if negate and isinstance(term, (terms.StopsAt, terms.StopsBefore)):
        raise ConstraintError(f"not {term} has no meaning: a stop phrase ends a hole, it does not restrict it")
    if negate and isinstance(term, terms.Compare) and term.op in _NEGATED and not _is_post_check(term):
        return terms.Compare(term.left, _NEGATED[term.op], term.right)
    return terms.Not(term) if negate else term


def _spec(term: Any, var: str) -> _Spec:
    if isinstance(term, terms.And):
        specs = [_spec(p, var) for p in term.parts]
        language, counts = None, None
        for s in specs:
            if s.language is not None:
                language = s.language if language is None else automata.intersect(language, s.language)
            if s.counts is not None:
                counts = s.counts if counts is None else counts & s.counts
        return _Spec(language, tuple(st for s in specs for st in s.stops), counts, any(s.check for s in specs))
    if isinstance(term, terms.Or):
        return _union([_spec(p, var) for p in term.parts], term)
    negated = isinstance(term, terms.Not)
    atom = term.part if negated else term
    _check_var(atom, var)
    if isinstance(atom, (terms.StopsAt, terms.StopsBefore)):
        return _Spec(stops=(Stop(atom.phrase.encode("utf-8"), isinstance(atom, terms.StopsBefore)),))
    if isinstance(atom, terms.Compare) and isinstance(atom.left, terms.Length) \
            and isinstance(atom.left.of, terms.Tokens):
        counts = Counts.compare(atom.op, atom.right)
        return _Spec(counts=~counts if negated else counts)
    if isinstance(atom, terms.Predicate) or _is_post_check(atom):
        return _Spec(check=True)
    language = atom_language(atom)
    return _Spec(automata.complement(language) if negated else language)


def _union(specs: list[_Spec], term: Any) -> _Spec:
    if all(not s.stops and s.counts is None for s in specs):
        languages = [s.language for s in specs]
        check = any(s.check for s in specs)
        if check or any(lang is None for lang in languages):
            return _Spec(None, check=check)  # some disjunct admits any text
        language = languages[0]
        for other in languages[1:]:
            language = automata.union(language, other)
        return _Spec(language)
    if all(s.stops and s.language is None and s.counts is None and not s.check for s in specs):
        return _Spec(stops=tuple(st for s in specs for st in s.stops))
    if all(s.counts is not None and s.language is None and not s.stops and not s.check for s in specs):
        counts = specs[0].counts
        for s in specs[1:]:
            counts = counts | s.counts
        return _Spec(counts=counts)
    raise ConstraintError(f"`{term}`: `or` can join stop phrases only with stop phrases and "
                          "len(TOKENS(...)) only with len(TOKENS(...)); use `and`, or split the hole")


def _check_var(atom: Any, var: str) -> None:
    name = getattr(atom, "var", None)
    if name is None and isinstance(atom, terms.Compare):
        left = atom.left.of if isinstance(atom.left, terms.Length) else atom.left
        name = getattr(left, "var", None) or getattr(left, "name", None)
    if name is not None and name != var:
        raise ConstraintError(f"the constraint {atom} is about {name}, not the hole {var} being decoded")


def _is_post_check(atom: Any) -> bool:
    """Comparisons of the hole with a number: decided on the converted value, not masked."""
    return (isinstance(atom, terms.Compare) and isinstance(atom.left, terms.Var)
            and not isinstance(atom.right, str))


def atom_language(atom: Any) -> Dfa:
    """The byte DFA of one maskable atom."""
    if isinstance(atom, terms.Regex):
        return regex_dfa(atom.pattern)
    if isinstance(atom, terms.Int):
        return regex_dfa(INT_PATTERN)
    if isinstance(atom, terms.Float):
        return regex_dfa(FLOAT_PATTERN)
    if isinstance(atom, terms.In):
        return _choices(atom.options)
    if isinstance(atom, terms.Json):
        return json_schema.language(atom.schema)
    if isinstance(atom, terms.Grammar):
        dfa = grammar.regular_language(atom.text)
        if dfa is None:
            raise ConstraintError(f"{atom}: a recursive grammar cannot be combined with this constraint here")
        return dfa
    if isinstance(atom, terms.Contains):
        return regex_dfa("(?s).*" + re.escape(atom.substring) + ".*")
    if isinstance(atom, terms.Compare) and isinstance(atom.left, terms.Var):
        if atom.op == "==":
            return _choices((atom.right,))
        if atom.op == "!=":
            return automata.complement(_choices((atom.right,)))
        return _ordered(atom.op, atom.right)
    if isinstance(atom, terms.Compare) and isinstance(atom.left, terms.Length):
        return _char_length(atom.op, atom.right)
    raise ConstraintError(f"{atom} is not supported by the constraint engine yet")


@functools.lru_cache(maxsize=512)
def _choices(options: tuple[str, ...]) -> Dfa:
    return automata.choices(o.encode("utf-8") for o in options)


@functools.lru_cache(maxsize=512)
def _ordered(op: str, bound: str) -> Dfa:
    return automata.ordered(op, bound.encode("utf-8"))


@functools.lru_cache(maxsize=512)
def _char_length(op: str, n: Any) -> Dfa:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n != n:
        raise ConstraintError(f"len(...) compares with a number, got {n!r}")
    # every count above n (or every count, when n < 0 or n is infinite) behaves alike
    cap = 0 if n < 0 or n == math.inf else math.floor(n) + 1
    return automata.char_length(lambda c: _OPS[op](c, n), cap)


# ---- the hole automaton: language × stop phrases ------------------------------------------

@functools.lru_cache(maxsize=256)
def hole_automaton(language: Dfa, stops: tuple[Stop, ...]) -> HoleAutomaton:
    """The automaton over the hole's text: `language`, where completing a stop phrase ends the hole.

    A state is (language state, partial phrase matches); a STOPS_AT match may start anywhere and
    fires if the language accepts the text with the phrase, a STOPS_BEFORE match may only start
    where the language accepts the text so far. The language state may die while a STOPS_BEFORE
    match is still open (the phrase is not part of the value).
    """
    if not stops:
        return HoleAutomaton(language.table, language.accepting, np.full(len(language), -1), ())
    phrases = [s.phrase for s in stops]
    before = [s.before for s in stops]
    ltable = np.vstack([language.table, np.full((1, 256), -1, np.int32)])  # row -1: language dead
    laccept = np.append(language.accepting, False)
    relevant = np.zeros(256, bool)
    relevant[[b for p in phrases for b in p]] = True
    first = {}
    for i, p in enumerate(phrases):
        first.setdefault(p[0], []).append(i)
    ids = {(0, frozenset(), -1): 0}
    order = [(0, frozenset(), -1)]
    rows = []

    def state_id(key) -> int:
        i = ids.get(key)
        if i is None:
            i = ids[key] = len(order)
            order.append(key)
        return i

    for lstate, matches, _fired in order:  # grows while we iterate
        base = ltable[lstate]
        row = np.full(256, -1, np.int32)
        plain = ~relevant & (base >= 0)
        for nxt in np.unique(base[plain]).tolist():  # bytes in no phrase: every partial match breaks
            row[plain & (base == nxt)] = state_id((nxt, frozenset(), -1))
        for b in np.flatnonzero(relevant).tolist():
            nxt = int(base[b])
            grown = {(i, j + 1) for i, j in matches if phrases[i][j] == b}
            grown |= {(i, 1) for i in first.get(b, ()) if not before[i] or laccept[lstate]}
            complete = sorted(i for i, j in grown if j == len(phrases[i]))
            fired = next((i for i in complete if before[i] or laccept[nxt]), -1)
            open_ = frozenset((i, j) for i, j in grown if j < len(phrases[i]) and (nxt >= 0 or before[i]))
            if nxt < 0 and not open_ and fired < 0:
                continue
            row[b] = state_id((nxt, open_, fired))
        rows.append(row)
    table = np.stack(rows)
    accepting = laccept[[k[0] for k in order]]
    stop = np.array([k[2] for k in order])
    table, kept = automata.trim(table, accepting, accepting | (stop >= 0))
    accepting, stop = accepting[kept], stop[kept]
    table, reps = automata.minimize(table, stop * 2 + accepting)
    return HoleAutomaton(table, accepting[reps], stop[reps],
                         tuple(len(p) if b else 0 for p, b in zip(phrases, before)))


def longest_paths(table: np.ndarray, finals: np.ndarray) -> np.ndarray:
    """Longest byte path from each state to a final state; math.inf from states that reach a cycle.

    Every state is live, so a reachable cycle means unbounded paths. The rest is a DAG, solved
    from its sinks backwards (Kahn's order); states never reached that way lie before a cycle.
    """
    n = len(table)
    succ = [np.unique(row[row >= 0]).tolist() for row in table]
    pred: list[list[int]] = [[] for _ in range(n)]
    for s, targets in enumerate(succ):
        for t in targets:
            pred[t].append(s)
    outdeg = [len(t) for t in succ]
    longest = np.full(n, math.inf)
    ready = [s for s in range(n) if not outdeg[s]]
    while ready:
        s = ready.pop()
        longest[s] = max([longest[t] + 1 for t in succ[s]] + [0 if finals[s] else -math.inf])
        for p in pred[s]:
            outdeg[p] -= 1
            if not outdeg[p]:
                ready.append(p)
    return longest
