"""The user's cache: private folders, files that are checked data (never code), and model folders built atomically under a lock.

Nothing read from here is unpickled or executed. A file is used only when the current user owns
it, nobody else may write it, and its checksum matches; otherwise it is ignored with a one-line
note on stderr and rebuilt. Folders are created 0700 and files 0600, whatever the umask.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import filelock

MANIFEST = "manifest.json"
FORMAT = 1  # bump when the folder layout changes: older folders are then rebuilt
_MAGIC = b"lmql_lite cache"  # first bytes of every cache file: magic, kind, checksum, then the payload

_noted: set[str] = set()


def cache_root() -> Path:
    """`LMQL_LITE_CACHE`, else `$XDG_CACHE_HOME/lmql_lite`, else `~/.cache/lmql_lite`."""
    if os.environ.get("LMQL_LITE_CACHE"):
        return Path(os.environ["LMQL_LITE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lmql_lite"


def note(path: Path, why: str) -> None:
    """One line on stderr, once per file and process, saying a cache file is ignored and why."""
    if str(path) not in _noted:
        _noted.add(str(path))
        print(f"lmql_lite: ignoring the cache file {path}: {why}; rebuilding it", file=sys.stderr, flush=True)


def private_folder(folder: Path) -> Path:
    """`folder` and its missing parents created 0700; raises OSError when it cannot be, or is not ours."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        missing.append(parent)
    for parent in reversed(missing):
        try:
            parent.mkdir(mode=0o700)
        except FileExistsError:
            pass
    why = _untrusted(folder.stat())
    if why == "writable by other users":
        os.chmod(folder, 0o700)  # ours, made by an older version under a lax umask
    elif why:
        raise PermissionError(f"{folder} is {why}")
    return folder


def subfolder(name: str) -> Path | None:
    """`cache_root() / name`, created private; None when it cannot be created, written or trusted (callers then skip caching)."""
    folder = cache_root() / name
    try:
        private_folder(cache_root())
        private_folder(folder)
    except PermissionError as e:
        if str(folder) not in _noted:
            _noted.add(str(folder))
            print(f"lmql_lite: not caching in {folder}: {e}", file=sys.stderr, flush=True)
        return None
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def write_file(path: Path, data: bytes) -> bool:
    """Write one cache file atomically (a private temporary sibling renamed into place); False if it could not be written.

    A reader sees the old file or the whole new one, never part of it.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mode 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


def save(path: Path, kind: str, payload: bytes) -> bool:
    """Keep `payload` in the cache file `path`, sealed with its kind and checksum (see `load`)."""
    header = b"%s %s %s\n" % (_MAGIC, kind.encode(), hashlib.sha256(payload).hexdigest().encode())
    return write_file(path, header + payload)


def load(path: Path, kind: str) -> bytes | None:
    """The payload `save` kept in `path`; None when missing, and None with a note when not trusted or damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        note(path, f"cannot be read ({e.strerror or e})")
        return None
    with os.fdopen(fd, "rb") as f:
        why = _untrusted(os.fstat(f.fileno()), regular=True)
        if why:
            note(path, why)
            return None
        try:
            data = f.read()
        except OSError as e:
            note(path, f"cannot be read ({e.strerror or e})")
            return None
    header, _, payload = data.partition(b"\n")
    parts = header.split(b" ")
    if header[:len(_MAGIC)] != _MAGIC or len(parts) != 4 or parts[2] != kind.encode():
        note(path, "damaged (not a lmql_lite cache file of this kind)")
        return None
    if hashlib.sha256(payload).hexdigest().encode() != parts[3]:
        note(path, "damaged (checksum mismatch)")
        return None
    return payload


def untrusted(st: os.stat_result, regular: bool = False) -> str | None:
    """Why a file or folder with this status must not be trusted (another owner, writable by others), or None."""
    return _untrusted(st, regular)


def _untrusted(st: os.stat_result, regular: bool = False) -> str | None:
    """Why a file or folder with this status must not be trusted, or None."""
    if regular and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"owned by another user (uid {st.st_uid})"
    if st.st_mode & 0o022:
        return "writable by other users"
    return None


# ---- plain data as JSON: tuples, non-text keys and listed dataclasses survive the round trip ----

def dumps(value, classes: dict[str, type] = {}) -> bytes:
    """`value` (None, bool, int, float, str, list, tuple, dict, or an instance of one of `classes`) as JSON bytes.

    Raises TypeError for anything else: only data goes into the cache.
    """
    return json.dumps(_encode(value, classes), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def loads(data: bytes, classes: dict[str, type] = {}):
    """What `dumps` wrote; builds no object but plain values and instances of `classes`. Raises ValueError when malformed."""
    def decode(obj: dict):
        if len(obj) == 1 and "~t" in obj:
            return tuple(obj["~t"])
        if len(obj) == 1 and "~d" in obj:
            return {k: v for k, v in obj["~d"]}
        if len(obj) == 2 and "~c" in obj:
            cls = classes.get(obj["~c"])
            if cls is None or not isinstance(obj.get("f"), dict):
                raise ValueError(f"unexpected object {obj['~c']!r}")
            return cls(**obj["f"])
        return obj
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"), object_hook=decode)
    except (UnicodeDecodeError, TypeError, RecursionError) as e:
        raise ValueError(str(e)) from None


def _encode(value, classes: dict[str, type]):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, classes) for v in value]
    if isinstance(value, tuple):
        return {"~t": [_encode(v, classes) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("~") for k in value):
            return {k: _encode(v, classes) for k, v in value.items()}
        return {"~d": [[_encode(k, classes), _encode(v, classes)] for k, v in value.items()]}
    cls = type(value)
    if classes.get(cls.__name__) is cls and hasattr(value, "__dataclass_fields__"):
        return {"~c": cls.__name__, "f": {name: _encode(getattr(value, name), classes) for name in value.__dataclass_fields__}}
    raise TypeError(f"{cls.__name__} is not plain data")


# ---- model folders: built once, atomically, by one process at a time ------------------------

def file_identity(path: Path) -> dict:
    """What identifies a source file cheaply: its path, size and modification time."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


_digests: dict[str, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered (in this process and in the cache's `digests` folder) by
    its path, size and modification time, so that a model's weights are read once, not every run."""
    identity = json.dumps(file_identity(path), sort_keys=True)
    if identity in _digests:
        return _digests[identity]
    folder = subfolder("digests")
    memo = folder / hashlib.sha256(identity.encode()).hexdigest()[:32] if folder is not None else None
    kept = load(memo, "digest") if memo is not None else None
    if kept is not None and kept.startswith(identity.encode() + b"\n"):
        digest = kept.decode().split("\n")[1]
    else:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if memo is not None:
            save(memo, "digest", f"{identity}\n{digest}".encode())
    _digests[identity] = digest
    return digest


def is_valid(folder: Path, source: dict) -> bool:
    """The folder was completely written from `source` by this user: manifest present and trusted, every file it lists there with its size."""
    try:
        if _untrusted(folder.stat()) or _untrusted((folder / MANIFEST).stat(), regular=True):
            return False
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT or manifest.get("source") != source:
            return False
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    """(Re)build `folder` under its lock: `write(tmp)` fills a temporary sibling, which replaces `folder` only once complete.

    An interrupted build (an exception, Ctrl-C, SIGTERM, SIGHUP) removes its temporary folder; one
    killed outright (SIGKILL, power loss) leaves a `.tmp-*` sibling that the next build removes.
    """
    with _locked(folder):
        return _build(folder, source, write)


def ensure(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    """`folder` if it is a valid build of `source`, else a fresh build.

    Concurrent first runs build once: the others wait for the lock, then use that build.
    """
    if is_valid(folder, source):
        return folder
    with _locked(folder):
        if is_valid(folder, source):  # another process built it while we waited
            return folder
        return _build(folder, source, write)


@contextmanager
def _locked(folder: Path):
    private_folder(folder.parent)
    lock = filelock.FileLock(str(folder.parent / f".{folder.name}.lock"), mode=0o600)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"lmql_lite: waiting for another process that is preparing {folder}...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    _remove_stale(folder)  # we hold the lock: no live build owns them
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        with _terminations_raise():
            write(tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            _write_synced(tmp / MANIFEST, json.dumps({"format": FORMAT, "source": source, "files": files}, indent=1))
            for name in [*files, MANIFEST]:
                os.chmod(tmp / name, 0o600)  # libraries write with the umask's permissions
                _fsync(tmp / name)
            _fsync(tmp)
            _replace_folder(tmp, folder)
            _fsync(folder.parent)
    except _Terminated as e:
        shutil.rmtree(tmp, ignore_errors=True)
        signal.raise_signal(e.signum)  # the default action is back: end as the signal says
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _remove_stale(folder: Path) -> None:
    for prefix in (f".tmp-{folder.name}-", f".old-{folder.name}-"):
        for stale in folder.parent.glob(prefix + "*"):
            if stale.is_dir() and not stale.is_symlink() and not _untrusted(stale.stat()):
                shutil.rmtree(stale, ignore_errors=True)


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived during a build."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _terminations_raise():
    """SIGTERM and SIGHUP, where they would end the process outright, raise `_Terminated` instead, so that the build can clean up.

    Handlers someone else installed (or SIG_IGN) are left alone; the default ones are back on exit.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        def terminated(signum, frame):
            raise _Terminated(signum)
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                previous[signum] = signal.signal(signum, terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _replace_folder(new: Path, folder: Path) -> None:
    # rename() cannot replace a non-empty folder: move the old one aside first.
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{folder.name}-", dir=folder.parent))
        os.replace(folder, old / "x")
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(new, folder)
    except OSError:
        # Another process finished the same build first; its folder is as good as ours.
        if not (folder / MANIFEST).exists():
            raise


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
