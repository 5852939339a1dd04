"""The vocabulary as bytes, and the token index: per automaton state, which tokens are allowed and where each one leads."""
from __future__ import annotations

import hashlib
import io
import weakref
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import cache
from .constraints import automata

MAX_CACHED_STATES = 2048  # per automaton: the token walks kept for reuse


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

    def __hash__(self) -> int:
        # Caches are keyed by the vocabulary (one lookup per run): hash its 49k tokens once, not per lookup.
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash((self.tokens, self.eos_ids, self.special_ids))
            object.__setattr__(self, "_hash", found)
        return found

    def __getstate__(self) -> dict:  # the hash of bytes differs between processes: never pickled
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)


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

    def __init__(self, vocabulary: Vocabulary, *, cache_dir: Path | None = None):
        """Build the trie of `vocabulary`, or load it from `cache_dir` (where it is saved once built)."""
        self.vocabulary = vocabulary
        never = set(vocabulary.special_ids) | set(vocabulary.eos_ids)
        texts = [b"" if i in never else t for i, t in enumerate(vocabulary.tokens)]
        trie = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"index-{_fingerprint(texts)}.npz"
            trie = _load_trie(path, len(texts))
        if trie is None:
            trie = _build_trie(texts)
            if cache_dir is not None:
                _save_trie(path, trie)
        self._byte, self._child_start, self._child_end, self._token_node = trie
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
        """The tokens that keep `automaton` alive from `state` (cached); `armed`: stop phrases end the walk.

        The most recent `MAX_CACHED_STATES` per automaton are kept (a permissive state's arrays take
        about 0.5 MB on a 49k vocabulary); a new walk counts against the compile-time budget.
        """
        cache = self.cache(automaton).setdefault("allowed", OrderedDict())
        key = (state, armed)
        hit = cache.get(key)
        if hit is None:
            automata.spend()
            hit = cache[key] = self.walk(automaton, state, armed)
            if len(cache) > MAX_CACHED_STATES:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return hit

    def walk(self, automaton, state: int, armed: bool, prefix: bytes = b"") -> Allowed:
        """The tokens that start with `prefix` and whose remaining bytes keep `automaton` alive from `state`."""
        root = self._node(prefix)
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

    def _node(self, prefix: bytes) -> int | None:
        """The trie node spelling `prefix` (0: the root), or None when no token starts with it."""
        node = 0
        for b in prefix:
            lo, hi = int(self._child_start[node]), int(self._child_end[node])
            i = lo + int(np.searchsorted(self._byte[lo:hi], b))  # children are in byte order
            if i >= hi or self._byte[i] != b:
                return None
            node = i
        return node

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


# ---- the trie, built or loaded -------------------------------------------------------------

_TRIE_FORMAT = 2  # bump when the arrays or the file change: older files are then ignored (2: sealed with a checksum)


def _build_trie(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(byte, child_start, child_end, token_node) of the trie of `texts` (b"": never allowed, node 0)."""
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
    below = np.array(parent[1:], np.int64)  # non-decreasing
    child_start = np.searchsorted(below, np.arange(len(parent))) + 1
    child_end = np.searchsorted(below, np.arange(len(parent)), side="right") + 1
    token_node = np.array([node[t] for t in texts], np.int64)
    return np.array(byte, np.int64), child_start, child_end, token_node


def _fingerprint(texts: list[bytes]) -> str:
    digest = hashlib.sha256(f"trie {_TRIE_FORMAT} {len(texts)}\n".encode())
    for t in texts:
        digest.update(len(t).to_bytes(2, "little"))
        digest.update(t)
    return digest.hexdigest()[:32]


def _load_trie(path: Path, tokens: int):
    """The trie saved in `path`, or None: missing, not ours, damaged (checksum) or inconsistent, so built again."""
    payload = cache.load(path, "trie")
    if payload is None:
        return None
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as data:
            trie = tuple(data[name] for name in ("byte", "child_start", "child_end", "token_node"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        trie = None
    if trie is None or not _consistent(trie, tokens):
        cache.note(path, "damaged (not a token trie of this vocabulary)")
        return None
    return trie


def _consistent(trie, tokens: int) -> bool:
    """Shapes, types and ranges that `walk` relies on."""
    byte, child_start, child_end, token_node = trie
    nodes = len(byte)
    if any(a.ndim != 1 or a.dtype.kind not in "iu" for a in trie) or not nodes:
        return False
    if len(token_node) != tokens or len(child_start) != nodes or len(child_end) != nodes:
        return False
    return bool((byte >= 0).all() and (byte < 256).all() and (child_start >= 1).all()
                and (child_start <= child_end).all() and (child_end <= nodes).all()
                and (not tokens or 0 <= token_node.min() <= token_node.max() < nodes))


def _save_trie(path: Path, trie) -> None:
    """Keep the trie in `path`; a cache folder that cannot be written is skipped."""
    data = io.BytesIO()
    np.savez(data, **dict(zip(("byte", "child_start", "child_end", "token_node"), trie)))
    try:
        cache.private_folder(path.parent)
    except OSError:
        return
    cache.save(path, "trie", data.getvalue())
