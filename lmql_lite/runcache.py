"""The run cache: model work kept across runs (the tokens each hole took, the scores of a `distribution`), in SQLite.

Not `cache.py`, which keeps checked data built from a model (converted weights, token indexes).
An entry is keyed by a digest of everything that decides it (docs/cache.md): the lmql_lite
version, the model's weights fingerprint, the tokenizer's fingerprint, the decoder and the options
that change its choices, the row's prompt token ids where the hole starts (with the bytes token
healing took back), a canonical form of the hole's resolved constraint and, for seeded sampling,
the random generator's state there. A hit replays the tokens with no forward pass.

The store is one SQLite file in WAL mode (concurrent processes wait on a busy timeout); each entry
is written in one transaction with a checksum over its key and value, so a reader never takes a
damaged entry: it is a miss with a note. Size is bounded in bytes, least recently used out first.
Values are JSON, never pickles.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import __version__, cache
from .constraints import json_schema, terms

FILE = "runs.sqlite"
FORMAT = 1                            # bump when keys or values change meaning: older entries then never match
DEFAULT_MAX_BYTES = 256 * 2 ** 20     # LMQL_LITE_CACHE_RUNS_MAX_BYTES overrides it
BUSY_SECONDS = 30.0                   # how long a writer waits for another process's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, checksum TEXT NOT NULL,
    size INTEGER NOT NULL, used REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_by_use ON entries (used);
CREATE TABLE IF NOT EXISTS totals (one INTEGER PRIMARY KEY CHECK (one = 1), entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL, hits INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entry_added AFTER INSERT ON entries
    BEGIN UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS entry_removed AFTER DELETE ON entries
    BEGIN UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size; END;
"""


def default_folder() -> Path:
    return cache.cache_root() / "runs"


def from_setting(setting: Any) -> "RunCache | None":
    """The cache a run uses: `cache=` (a folder, True for the default one, False/None), else `LMQL_LITE_CACHE_RUNS`."""
    if isinstance(setting, RunCache):
        return setting
    if setting is None:
        env = os.environ.get("LMQL_LITE_CACHE_RUNS", "").strip()
        setting = {"": False, "0": False, "off": False, "no": False, "false": False,
                   "1": True, "on": True, "yes": True, "true": True}.get(env.lower(), env)
    if setting is False:
        return None
    folder = default_folder() if setting is True else Path(os.fspath(setting)).expanduser()
    return _opened.setdefault(str(folder), RunCache(folder))


_opened: dict[str, "RunCache"] = {}  # one connection per folder and process


def _max_bytes() -> int:
    try:
        return int(os.environ.get("LMQL_LITE_CACHE_RUNS_MAX_BYTES", DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


class RunCache:
    """One folder's store: `get` and `put` JSON values by key; damage is a miss with a note, never an error."""

    def __init__(self, folder: Path | str, max_bytes: int | None = None):
        self.folder = Path(folder).expanduser()
        self.max_bytes = _max_bytes() if max_bytes is None else int(max_bytes)
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()           # a connection is not carried into a forked child
        self._lock = threading.Lock()     # one connection, used by one thread at a time
        self._off = False                 # unusable here (not writable, not ours, damaged): every lookup misses

    @property
    def path(self) -> Path:
        return self.folder / FILE

    def _connect(self) -> sqlite3.Connection | None:
        if self._pid != os.getpid():
            self._db, self._pid = None, os.getpid()
        if self._db is not None or self._off:
            return self._db
        try:
            cache.private_folder(self.folder)
            try:  # created 0600 before SQLite opens it: its -wal and -shm files take the same mode
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600))
            except FileExistsError:
                pass
            why = cache.untrusted(os.stat(self.path), regular=True)
            if why:
                return self._fail(why)
            db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a crash of the process
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            return self._fail(f"damaged ({e}); `lmql-lite cache clear {self.folder}` starts it afresh")
        except OSError as e:
            return self._fail(f"cannot be used ({e.strerror or e})")
        self._db = db
        return db

    def _fail(self, why: str) -> None:
        self._off = True
        _note(self.path, why)
        return None

    def get(self, key: str) -> Any:
        """The value kept under `key`, or None; a hit marks the entry used now."""
        with self._lock:
            return self._get(key)

    def _get(self, key: str) -> Any:
        db = self._connect()
        if db is None:
            return None
        try:
            row = db.execute("SELECT value, checksum FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            value, checksum = row
            if not isinstance(value, bytes) or _checksum(key, value) != checksum:
                _note(self.path, "an entry is damaged (checksum mismatch); it is dropped")
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                return None
            with _transaction(db):
                db.execute("UPDATE entries SET used = ?, hits = hits + 1 WHERE key = ?", (time.time(), key))
                db.execute("UPDATE totals SET hits = hits + 1")
            return json.loads(value)
        except sqlite3.DatabaseError as e:
            _note(self.path, f"cannot be read ({e})")
            return None
        except ValueError:
            _note(self.path, "an entry is not JSON; it is ignored")
            return None

    def put(self, key: str, value: Any) -> None:
        """Keep `value` under `key` (one transaction), then drop the least recently used entries over the bound."""
        with self._lock:
            self._put(key, value)

    def _put(self, key: str, value: Any) -> None:
        db = self._connect()
        if db is None:
            return
        data = json.dumps(value, separators=(",", ":")).encode()
        size = len(key) + len(data)
        if size > self.max_bytes:
            return
        try:
            with _transaction(db):
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                db.execute("INSERT INTO entries (key, value, checksum, size, used) VALUES (?, ?, ?, ?, ?)",
                           (key, data, _checksum(key, data), size, time.time()))
                while db.execute("SELECT bytes FROM totals").fetchone()[0] > self.max_bytes:
                    db.execute("DELETE FROM entries WHERE key = (SELECT key FROM entries WHERE key != ? "
                               "ORDER BY used LIMIT 1)", (key,))
        except sqlite3.DatabaseError as e:
            _note(self.path, f"cannot be written ({e})")

    def info(self) -> dict:
        """Where the cache is and what it holds: entries, bytes (of keys and values), hits, file size, bound."""
        out = {"location": str(self.path), "entries": 0, "bytes": 0, "hits": 0, "file_bytes": 0,
               "max_bytes": self.max_bytes}
        if not self.path.exists():
            return out
        with self._lock:
            db = self._connect()
            try:
                if db is not None:
                    out["entries"], out["bytes"], out["hits"] = db.execute(
                        "SELECT entries, bytes, hits FROM totals").fetchone()
            except sqlite3.DatabaseError as e:
                _note(self.path, f"cannot be read ({e})")
        out["file_bytes"] = sum(p.stat().st_size for p in self.folder.glob(FILE + "*") if p.is_file())
        return out

    def clear(self) -> int:
        """Remove every entry; how many there were. Other processes may go on using the store meanwhile;
        a damaged store's files are removed, so it starts afresh."""
        if not self.path.exists():
            return 0
        entries = self.info()["entries"]
        with self._lock:
            db = self._connect()
            if db is not None:
                try:
                    with _transaction(db):
                        db.execute("DELETE FROM entries")
                        db.execute("UPDATE totals SET entries = 0, bytes = 0, hits = 0")
                except sqlite3.DatabaseError as e:
                    raise OSError(f"cannot clear {self.path}: {e}") from None
                try:
                    db.execute("VACUUM")  # give the space back; another process reading now may prevent it
                except sqlite3.DatabaseError:
                    pass
                return entries
            self._off = False  # unusable (damaged): its files go
            for p in self.folder.glob(FILE + "*"):
                if p.is_file() and not cache.untrusted(p.lstat(), regular=True):
                    p.unlink()
        return entries

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error): a writer takes the lock before it reads."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _checksum(key: str, data: bytes) -> str:
    return hashlib.sha256(key.encode() + b"\0" + data).hexdigest()


_noted: set[str] = set()


def _note(path: Path, why: str) -> None:
    if (str(path), why) not in _noted:
        _noted.add((str(path), why))
        print(f"lmql_lite: run cache {path}: {why}; running without it where it fails", file=sys.stderr, flush=True)


# ---- keys ------------------------------------------------------------------------------------

def digest(*parts: Any) -> str:
    """SHA-256 of JSON parts (sorted keys): the one way every key is made."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_vocabularies: dict[int, tuple[Any, str]] = {}


def tokenizer_fingerprint(model) -> str:
    """A digest of the vocabulary's bytes, its end and special ids and the BOS ids (once per vocabulary)."""
    vocab = model.vocabulary
    known = _vocabularies.get(id(vocab))
    if known is None or known[0] is not vocab:
        h = hashlib.sha256()
        for t in vocab.tokens:
            h.update(len(t).to_bytes(4, "little") + t)
        h.update(json.dumps([sorted(vocab.eos_ids), sorted(vocab.special_ids), list(model.bos_ids)]).encode())
        known = _vocabularies[id(vocab)] = (vocab, h.hexdigest())
    return known[1]


class Uncacheable(Exception):
    """A constraint holds something with no canonical form (a Python predicate): its hole is not cached."""


def canonical(x: Any) -> Any:
    """A JSON form of a resolved constraint: equal for equal constraints (conjuncts in any order)."""
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, float)):
        return [type(x).__name__, repr(x)]
    if isinstance(x, (tuple, list)):
        return [canonical(v) for v in x]
    if isinstance(x, (terms.And, terms.Or)):
        return [type(x).__name__, sorted((canonical(p) for p in x.parts), key=json.dumps)]
    if isinstance(x, terms.Json):
        return ["Json", x.var, schema_form(x.schema)]
    if isinstance(x, terms.Predicate):
        raise Uncacheable("a Python predicate")
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [type(x).__name__, *(canonical(getattr(x, f.name)) for f in dataclasses.fields(x))]
    raise Uncacheable(type(x).__name__)


def schema_form(spec: Any) -> Any:
    """A JSON schema, dataclass, pydantic model or typing type as the schema its texts follow."""
    try:
        return json.dumps(json_schema.schema(spec), sort_keys=True)
    except Exception as e:  # a schema the guide would refuse: the guide says so, the cache stays out
        raise Uncacheable(str(e)) from None


def hole_type_form(hole_type: Any) -> Any:
    if hole_type is None or hole_type in (str, int, float):
        return getattr(hole_type, "__name__", None)
    if isinstance(hole_type, str):
        return ["regex", hole_type]
    return ["json", schema_form(hole_type)]


# ---- one run's use of it: a lookup where a hole starts, a store where it ends ------------------

_models: dict[int, tuple[Any, str]] = {}


def model_fingerprint(model) -> str | None:
    """The model's weights fingerprint (its `fingerprint()`, once per model object); None: the model offers none."""
    known = _models.get(id(model))
    if known is None or known[0] is not model:
        fingerprint = getattr(model, "fingerprint", None)
        if fingerprint is None:
            return None
        known = _models[id(model)] = (model, f"{type(model).__name__}:{fingerprint()}")
    return known[1]


class Replays:
    """The run cache as one run uses it: the run's part of every key, hits replayed, finished holes stored.

    Cached: argmax (each row alone: rows never influence each other) and sampling with a seed and
    a single row (the generator's state where a hole starts is in its key, its state where the hole
    ended is in the entry and restored on a hit). Not cached: sampling without a seed, sampling of
    several rows (they share one generator), beam search (rows compete), a model with no fingerprint.
    """

    def __init__(self, store: RunCache, model, options, decoder):
        self.store = store
        self.rng = getattr(decoder, "rng", None)
        self.model_part = digest(FORMAT, __version__, model_fingerprint(model), tokenizer_fingerprint(model))
        fields = ["name", "max_len", "max_tokens", "healing"]
        if options.name == "sample":
            fields += ["temperature", "top_k", "top_p", "seed"]
        self.decoder_part = {f: getattr(options, f) for f in fields}
        self.stored: set[str] = set()  # keys this run stored already (argmax's n equal rows store once)

    @classmethod
    def for_run(cls, setting: Any, model, options, decoder, rows: int) -> "Replays | None":
        store = from_setting(setting)
        if store is None or options.name == "beam" or model_fingerprint(model) is None:
            return None
        if options.name == "sample" and (options.seed is None or rows > 1):
            return None
        return cls(store, model, options, decoder)

    def _rng_state(self) -> Any:
        return self.rng.bit_generator.state if self.rng is not None else None

    def begin(self, filling, term: Any) -> None:
        """Where a hole starts: replay its entry when there is one, else record its tokens for `finish`."""
        try:
            constraint = [canonical(term), hole_type_form(filling.hole.type)]
        except Uncacheable:
            return
        tokens = filling.prompt.tokens
        key = digest(self.model_part, self.decoder_part, "hole", tokens, filling.heal_prefix.hex(), constraint,
                     self._rng_state())
        entry = self.store.get(key)
        if entry is not None and filling.replay(entry["tokens"]):
            filling.wish = entry["wish"]
            if self.rng is not None:
                self.rng.bit_generator.state = entry["rng"]
            return
        if entry is not None:
            _note(self.store.path, "an entry does not fit its hole's constraint; it is decoded again")
        filling.record = (key, [])

    def finish(self, filling) -> None:
        """Where a hole ends with a valid value: keep what it took."""
        key, taken = filling.record
        if key not in self.stored:
            self.stored.add(key)
            self.store.put(key, {"tokens": taken, "wish": filling.wish, "rng": self._rng_state()})

    def scores(self, tokens: list[int], candidates: list[list[int]], compute) -> list[float]:
        """A `distribution`'s total log-probabilities: kept, or `compute()`d and kept."""
        key = digest(self.model_part, "distribution", tokens, candidates)
        kept = self.store.get(key)
        if isinstance(kept, list) and len(kept) == len(candidates):
            return [float(s) for s in kept]
        totals = compute()
        self.store.put(key, totals)
        return totals
