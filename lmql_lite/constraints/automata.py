"""Byte-level DFAs for the languages constraints denote, and the operations that combine them (and, or, not).

Every `Dfa` is trimmed: state 0 starts, every state is reachable and can still reach an
accepting state, and a transition into a state that cannot is -1. So "is this prefix still
satisfiable" is "did the walk stay >= 0", which is what makes masks sound. Texts are UTF-8
bytes; complements are taken within valid UTF-8 (`utf8()`), so no operation admits a broken
character. Products are built on demand from the start state (only reachable pairs exist).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import ConstraintBudgetError, ConstraintError

# ---- budgets: every construction below is bounded in states (memory) and in time -------------

MAX_STATES_VAR, MAX_STATES = "LMQL_LITE_MAX_STATES", 100_000          # about 1 KB of table per state
MAX_SECONDS_VAR, MAX_SECONDS = "LMQL_LITE_MAX_COMPILE_SECONDS", 60.0  # per hole's constraint
_deadline: contextvars.ContextVar = contextvars.ContextVar("lmql_lite_compile_deadline", default=None)


def _limit(var: str, default: float, kind: type) -> float:
    text = os.environ.get(var)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = math.nan
    if not value > 0 or value == math.inf:
        raise ConstraintError(f"{var}={text!r} must be a positive {kind.__name__}")
    return value


def max_states() -> int:
    """The most states one automaton may have (LMQL_LITE_MAX_STATES)."""
    return int(_limit(MAX_STATES_VAR, MAX_STATES, int))


@contextlib.contextmanager
def budget():
    """Bound the time of everything compiled inside (LMQL_LITE_MAX_COMPILE_SECONDS); nested uses share the outer one."""
    if _deadline.get() is not None:
        yield
        return
    token = _deadline.set(time.monotonic() + _limit(MAX_SECONDS_VAR, MAX_SECONDS, float))
    try:
        yield
    finally:
        _deadline.reset(token)


def spend(states: int = 0, limit: int | None = None) -> None:
    """ConstraintBudgetError when an automaton has grown past `limit` (default: max_states()) states, or time is up."""
    limit = max_states() if limit is None else limit
    if states > limit:
        raise ConstraintBudgetError(f"the constraint needs more than {limit:,} automaton states "
                                    f"(set {MAX_STATES_VAR} to raise the limit)")
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        seconds = _limit(MAX_SECONDS_VAR, MAX_SECONDS, float)
        raise ConstraintBudgetError(f"compiling the constraint took more than {seconds:g} s "
                                    f"(set {MAX_SECONDS_VAR} to raise the limit)")


@dataclass(eq=False)
class Dfa:
    """A trimmed DFA over bytes: `table[s, byte]` is the next state or -1; `accepting[s]` ends a value."""

    table: np.ndarray      # (S, 256) int32
    accepting: np.ndarray  # (S,) bool

    def __len__(self) -> int:
        return len(self.accepting)

    @property
    def empty(self) -> bool:
        return len(self.accepting) == 0

    def walk(self, data: bytes, state: int = 0) -> int:
        """The state after `data` from `state`, or -1 when no accepted text starts that way."""
        for b in data:
            if state < 0:
                break
            state = int(self.table[state, b])
        return state

    def accepts(self, data: bytes) -> bool:
        s = -1 if self.empty else self.walk(data)
        return s >= 0 and bool(self.accepting[s])


EMPTY = Dfa(np.zeros((0, 256), np.int32), np.zeros(0, bool))


def distances(table: np.ndarray, finals: np.ndarray) -> np.ndarray:
    """Shortest number of bytes from each state to a final state (-1: none reachable)."""
    n = len(table)
    src, byte = np.nonzero(table >= 0)
    dst = table[src, byte].astype(np.int64)
    pairs = np.unique(dst * n + src)  # reverse edges, sorted by their head
    heads, tails = pairs // n, (pairs % n).tolist()
    starts = np.searchsorted(heads, np.arange(n + 1)).tolist()
    dist = np.full(n, -1, np.int64)
    dist[finals] = 0
    queue = deque(np.flatnonzero(finals).tolist())
    while queue:
        x = queue.popleft()
        d = dist[x] + 1
        for y in tails[starts[x]:starts[x + 1]]:
            if dist[y] < 0:
                dist[y] = d
                queue.append(y)
    return dist


def trim(table: np.ndarray, accepting: np.ndarray, finals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Keep the states from which a final state (default: accepting) is reachable; state 0 stays 0.

    Returns (table, kept) where kept are the old ids of the surviving states; an empty `kept`
    means the start state is dead (the language is empty).
    """
    live = distances(table, accepting if finals is None else finals) >= 0
    if not len(live) or not live[0]:
        return np.zeros((0, 256), np.int32), np.zeros(0, np.int64)
    kept = np.flatnonzero(live)
    renumber = np.full(len(table) + 1, -1, np.int32)  # index -1 (a dead target) stays -1
    renumber[kept] = np.arange(len(kept), dtype=np.int32)
    return renumber[table[kept]], kept


def make(table: np.ndarray, accepting: np.ndarray) -> Dfa:
    """A trimmed Dfa from any table whose state 0 starts; minimal unless minimising would cost too much."""
    spend(len(table))
    table, kept = trim(table, accepting)
    if not len(kept):
        return EMPTY
    accepting = accepting[kept]
    table, reps = minimize(table, accepting)
    return Dfa(table, accepting[reps])


_MINIMIZE_WORK = 300_000_000  # state x byte class x round updates before minimising gives up


def minimize(table: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge states that no text can tell apart and that carry equal `labels` (Moore's refinement, vectorised).

    Returns (table, reps): the merged table, and one old state per new state (reps[0] == 0).
    Each round splits the classes by a 64-bit hash of (class, successor classes); the final
    partition is checked to be a congruence, so a hash collision can never merge states
    that differ. Moore needs as many rounds as the longest text that tells two states apart,
    so a long counter would make it quadratic: past `_MINIMIZE_WORK` the table is returned
    as it is (correct, only larger).
    """
    n = len(table)
    # bytes with identical columns act alike: refine on one column per byte class
    columns = table[:, np.unique(table.T, axis=0, return_index=True)[1]]
    classes = np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)
    count = int(classes.max()) + 1 if n else 0
    weights = np.random.default_rng(0).integers(1, 2 ** 63, size=columns.shape[1] + 1, dtype=np.uint64) | 1
    rounds = 0
    while True:
        hashed = _hash(classes, columns, weights)
        refined = np.unique(hashed, return_inverse=True)[1].reshape(-1)
        rounds += 1
        if refined.max() + 1 == count:
            break
        classes, count = refined, int(refined.max()) + 1
        if rounds * n * columns.shape[1] > _MINIMIZE_WORK:
            return table, np.arange(n)
        spend()
    # number the classes by their first state, so the start state's class is 0
    firsts = np.unique(classes, return_index=True)[1]
    rep = firsts[classes]
    for j in range(columns.shape[1]):  # a hash collision merged states that differ: keep the table
        column = columns[:, j]
        succ = np.where(column >= 0, classes[column], -1)
        if not (succ == succ[rep]).all():
            return table, np.arange(n)
    order = np.argsort(firsts)
    renumber = np.empty(count, np.int64)
    renumber[order] = np.arange(count)
    reps = firsts[order]
    sub = table[reps]
    return np.where(sub >= 0, renumber[classes[sub]], -1).astype(np.int32), reps


def _hash(classes: np.ndarray, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per state, a 64-bit hash of its class and of the class each byte class leads to (-1: dead).  (S,)"""
    hashed = classes.astype(np.uint64) * weights[0]
    for j in range(columns.shape[1]):
        column = columns[:, j]
        hashed += np.where(column >= 0, classes[column], -1).astype(np.uint64) * weights[j + 1]
    return hashed


def product(parts: Sequence[Dfa], alive: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The reachable product of `parts`, untrimmed: (table, components (S, k) with -1 for a dead part).

    `alive(next_components (..., k)) -> bool (...)` says which component tuples exist at all.
    """
    k = len(parts)
    # An extra all -1 row at the end: a dead component (-1) indexes it and stays dead.
    tables = [np.vstack([p.table, np.full((1, 256), -1, np.int32)]) for p in parts]
    radix = np.array([len(p) + 1 for p in parts], np.int64)
    if float(np.prod(radix.astype(float))) > 2 ** 62:
        raise ConstraintBudgetError("the combined constraint is too large to compile")
    weight = np.concatenate([[1], np.cumprod(radix)[:-1]]).astype(np.int64)
    start = np.zeros((1, k), np.int64)
    ids = {int(((start + 1) * weight).sum()): 0}
    rows, comps = [], [start]
    frontier = start
    while len(frontier):
        nxt = np.stack([tables[i][frontier[:, i]] for i in range(k)], axis=-1).astype(np.int64)  # (f, 256, k)
        ok = alive(nxt)
        keys = ((nxt[ok] + 1) * weight).sum(-1)
        unique, inverse = np.unique(keys, return_inverse=True)
        uid = np.empty(len(unique), np.int32)
        new = []
        for j, key in enumerate(unique.tolist()):
            i = ids.get(key)
            if i is None:
                i = ids[key] = len(ids)
                new.append(key)
            uid[j] = i
        spend(len(ids))
        row = np.full(ok.shape, -1, np.int32)
        row[ok] = uid[inverse.reshape(-1)]
        rows.append(row)
        new = np.array(new, np.int64)
        frontier = (new[:, None] // weight) % radix - 1
        comps.append(frontier)
    return np.concatenate(rows), np.concatenate(comps)


def _padded(accepting: np.ndarray) -> np.ndarray:
    """`accepting` with a False at index -1, for components that died."""
    return np.append(accepting, False)


@functools.lru_cache(maxsize=512)
def intersect(a: Dfa, b: Dfa) -> Dfa:
    if a.empty or b.empty:
        return EMPTY
    table, comps = product([a, b], lambda n: (n >= 0).all(-1))
    return make(table, a.accepting[comps[:, 0]] & b.accepting[comps[:, 1]])


@functools.lru_cache(maxsize=512)
def union(a: Dfa, b: Dfa) -> Dfa:
    if a.empty or b.empty:
        return b if a.empty else a
    table, comps = product([a, b], lambda n: (n >= 0).any(-1))
    return make(table, _padded(a.accepting)[comps[:, 0]] | _padded(b.accepting)[comps[:, 1]])


@functools.lru_cache(maxsize=512)
def complement(a: Dfa) -> Dfa:
    """Every valid UTF-8 text that `a` does not accept."""
    u = utf8()
    if a.empty:
        return u
    table, comps = product([u, a], lambda n: n[..., 0] >= 0)
    return make(table, u.accepting[comps[:, 0]] & ~_padded(a.accepting)[comps[:, 1]])


@functools.cache
def utf8() -> Dfa:
    """All valid UTF-8 texts (what Python's `str.encode` can produce)."""
    t = np.full((8, 256), -1, np.int32)
    # 0: at a character boundary; 1, 2, 3: that many continuation bytes to go;
    # 4..7: the second byte is restricted (no overlong forms, no surrogates, nothing past U+10FFFF).
    t[0, 0x00:0x80] = 0
    t[0, 0xC2:0xE0] = 1
    t[0, 0xE0] = 4
    t[0, 0xE1:0xED] = 2
    t[0, 0xED] = 5
    t[0, 0xEE:0xF0] = 2
    t[0, 0xF0] = 6
    t[0, 0xF1:0xF4] = 3
    t[0, 0xF4] = 7
    t[1, 0x80:0xC0] = 0
    t[2, 0x80:0xC0] = 1
    t[3, 0x80:0xC0] = 2
    t[4, 0xA0:0xC0] = 1
    t[5, 0x80:0xA0] = 1
    t[6, 0x90:0xC0] = 2
    t[7, 0x80:0x90] = 2
    accepting = np.zeros(8, bool)
    accepting[0] = True
    return Dfa(t, accepting)


def ends_mid_character(data: bytes | bytearray) -> bool:
    """Does `data` end inside a UTF-8 character?"""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b < 0x80:
            return False
        if b >= 0xC0:  # a lead byte: complete if the bytes after it are all its continuation bytes
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return back < need
    return False


def choices(options: Iterable[bytes]) -> Dfa:
    """Exactly the given texts (a trie over their bytes)."""
    edges: dict[tuple[int, int], int] = {}  # (state, byte) -> next state
    ends = set()
    for option in options:
        s = 0
        for b in option:
            nxt = edges.get((s, b))
            if nxt is None:
                nxt = edges[(s, b)] = len(edges) + 1
            s = nxt
        ends.add(s)
    if not ends:
        return EMPTY
    table = np.full((len(edges) + 1, 256), -1, np.int32)
    if edges:
        sources, bytes_ = zip(*edges)
        table[list(sources), list(bytes_)] = list(edges.values())
    accepting = np.zeros(len(edges) + 1, bool)
    accepting[list(ends)] = True
    return Dfa(table, accepting)  # every trie node leads to an option: already trimmed


def char_length(allowed: Callable[[int], bool], cap: int) -> Dfa:
    """Valid UTF-8 texts whose length in characters n satisfies `allowed(min(n, cap))`.

    Built directly as (count, UTF-8 state) pairs and only trimmed: that product is already
    minimal but for a few states, and Moore's minimisation would need `cap` rounds.
    """
    u = utf8()
    nu = len(u)
    spend((cap + 1) * nu)
    counts = np.arange(cap + 1)
    completes = u.table == 0  # (nu, 256): this byte ends a character
    # state c * nu + s: c characters so far (saturating at cap), inside character state s
    nxt_count = np.minimum(counts[:, None, None] + completes[None], cap)  # (cap+1, nu, 256)
    table = np.where(u.table[None] >= 0, nxt_count * nu + u.table[None], -1).reshape(-1, 256).astype(np.int32)
    accepting = (np.array([allowed(int(c)) for c in counts])[:, None] & u.accepting[None]).reshape(-1)
    table, kept = trim(table, accepting)
    if not len(kept):
        return EMPTY
    return Dfa(table, accepting[kept])


def ordered(op: str, bound: bytes) -> Dfa:
    """Texts that compare to `bound` with `op` (< <= > >=) in Python's order (code points = UTF-8 bytes)."""
    n = len(bound)
    less, greater = n + 1, n + 2
    table = np.full((n + 3, 256), -1, np.int32)
    for i, b in enumerate(bound):  # state i: the text so far equals bound[:i]
        table[i, :b] = less
        table[i, b] = i + 1
        table[i, b + 1:] = greater
    table[n, :] = greater  # bound is a proper prefix of the text: the text is greater
    table[less, :] = less
    table[greater, :] = greater
    accepting = np.zeros(n + 3, bool)
    if op in ("<", "<="):
        accepting[less] = True
        accepting[:n] = True  # a proper prefix of bound is less
    else:
        accepting[greater] = True
    if op in ("<=", ">="):
        accepting[n] = True
    return intersect(utf8(), make(table, accepting))
