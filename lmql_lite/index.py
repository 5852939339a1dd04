"""The vocabulary as bytes, and the token index: per automaton state, which tokens are allowed and where each one leads."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Vocabulary:
    """Token id → the bytes it adds to the text.

    Special tokens (BOS, chat markers, padding) map to b"" and are never allowed inside a hole,
    except the end-of-sequence ids, which end it.
    """

    tokens: tuple[bytes, ...]
    eos_ids: frozenset[int]
    special_ids: frozenset[int] = frozenset()

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class Allowed:
    """The tokens allowed from one automaton state, and where each leads."""

    mask: np.ndarray     # (V,) bool; end-of-sequence never set here (the guide decides that)
    ids: np.ndarray      # (n,) the allowed token ids
    ends: np.ndarray     # (n,) the state after each, or -1 where the token completes a stop phrase
    targets: np.ndarray  # the distinct values of `ends`, sorted


class TokenIndex:
    """Masks over a vocabulary for the states of byte automata, computed vectorised and cached per state.

    The tokens are stored as a trie of their bytes (SmolLM2's 332,150 token bytes share 100,297
    prefixes), walked one depth at a time for all live nodes at once: a prefix that dies takes
    every token below it along, so a restrictive state costs a few hundred lookups and a
    permissive one about one per trie node.

    An automaton is any object with `table` ((S, 256) int32, -1 = dead), `stops` ((S,) bool:
    entering this state completes a stop phrase) and `end_ok` ((S,) bool: a token may end here
    while stop phrases are not yet in force). Built once per vocabulary.
    """

    def __init__(self, vocabulary: Vocabulary):
        self.vocabulary = vocabulary
        never = set(vocabulary.special_ids) | set(vocabulary.eos_ids)
        texts = [b"" if i in never else t for i, t in enumerate(vocabulary.tokens)]
        by_depth: dict[int, set[bytes]] = {}
        for t in set(texts):
            for j in range(1, len(t) + 1):
                by_depth.setdefault(j, set()).add(t[:j])
        # Node ids depth by depth, each depth in byte order: the children of a node are contiguous.
        node = {b"": 0}
        parent, byte = [0], [0]
        for depth in sorted(by_depth):
            for prefix in sorted(by_depth[depth]):
                node[prefix] = len(parent)
                parent.append(node[prefix[:-1]])
                byte.append(prefix[-1])
        self._byte = np.array(byte, np.int64)
        below = np.array(parent[1:], np.int64)  # non-decreasing
        self._child_start = np.searchsorted(below, np.arange(len(parent))) + 1
        self._child_end = np.searchsorted(below, np.arange(len(parent)), side="right") + 1
        self._token_node = np.array([node[t] for t in texts], np.int64)  # 0 (the root): never allowed
        self._nodes = node
        self.max_token_bytes = max(map(len, texts), default=0)
        self.eos_ids = np.array(sorted(vocabulary.eos_ids), np.int64)
        singles = {t for t in texts if len(t) == 1}
        self.missing_bytes = np.array([b for b in range(256) if bytes([b]) not in singles], np.int64)  # no 1-byte token
        self._caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __len__(self) -> int:
        return len(self.vocabulary)

    def cache(self, automaton) -> dict:
        """A dict that lives as long as `automaton`: for masks and facts derived from this index."""
        c = self._caches.get(automaton)
        if c is None:
            c = self._caches[automaton] = {}
        return c

    def allowed(self, automaton, state: int, armed: bool) -> Allowed:
        """The tokens that keep `automaton` alive from `state` (cached); `armed`: stop phrases end the walk."""
        cache = self.cache(automaton)
        key = ("allowed", state, armed)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = self.walk(automaton, state, armed)
        return hit

    def walk(self, automaton, state: int, armed: bool, prefix: bytes = b"") -> Allowed:
        """The tokens that start with `prefix` and whose remaining bytes keep `automaton` alive from `state`."""
        root = self._nodes.get(prefix)
        ends_at = np.full(len(self._byte), -1, np.int32)  # per trie node: state after it, -2: a stop fired
        if root is None:
            return self._result(ends_at, armed, None)
        cache = self.cache(automaton)
        if "extended" not in cache:
            # Two extra rows: index -2 (fired) stays fired, index -1 (dead) stays dead.
            cache["extended"] = (np.vstack([automaton.table, np.full((1, 256), -2, np.int32),
                                            np.full((1, 256), -1, np.int32)]),
                                 np.append(automaton.stops, [False, False]),
                                 np.append(automaton.end_ok, [False, False]))
        table, stops, end_ok = cache["extended"]
        if root:
            ends_at[root] = state
        nodes, states = np.array([root]), np.array([state], np.int32)
        while len(nodes):
            # all children of the live nodes, and the state each inherits
            starts, counts = self._child_start[nodes], self._child_end[nodes] - self._child_start[nodes]
            total = int(counts.sum())
            if not total:
                break
            children = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(total)
            nxt = table[np.repeat(states, counts), self._byte[children]]
            if armed:
                nxt = np.where(stops[nxt], -2, nxt)  # a stop phrase ends the hole inside this token
            live = nxt != -1
            nodes, states = children[live], nxt[live]
            ends_at[nodes] = states
        return self._result(ends_at, armed, end_ok)

    def _result(self, ends_at: np.ndarray, armed: bool, end_ok: np.ndarray | None) -> Allowed:
        ends = ends_at[self._token_node]
        ok = ends != -1
        if not armed and end_ok is not None:
            ok &= end_ok[ends]
        ids = np.flatnonzero(ok)
        ends = np.maximum(ends[ids], -1)  # -1 in the result: a stop phrase fired
        mask = np.zeros(len(self.vocabulary), bool)
        mask[ids] = True
        return Allowed(mask, ids, ends, np.unique(ends))
