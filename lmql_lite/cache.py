"""The user's model cache: folders written atomically, with a manifest that says what they were built from and what they hold."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MANIFEST = "manifest.json"
FORMAT = 1  # bump when the folder layout changes: older folders are then rebuilt


def cache_root() -> Path:
    """`LMQL_LITE_CACHE`, else `$XDG_CACHE_HOME/lmql_lite`, else `~/.cache/lmql_lite`."""
    if os.environ.get("LMQL_LITE_CACHE"):
        return Path(os.environ["LMQL_LITE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lmql_lite"


def subfolder(name: str) -> Path | None:
    """`cache_root() / name`, created; None when it cannot be created or written (callers then skip caching)."""
    folder = cache_root() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def write_file(path: Path, data: bytes) -> bool:
    """Write one cache file atomically (a temporary sibling renamed into place); False if it could not be written.

    A reader sees the old file or the whole new one, never part of it.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
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


def file_identity(path: Path) -> dict:
    """What identifies a source file cheaply: its path, size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def is_valid(folder: Path, source: dict) -> bool:
    """The folder was completely written from `source`: manifest present, every file it lists there with its size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") != FORMAT or manifest.get("source") != source:
            return False
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def build(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    """(Re)build `folder`: `write(tmp)` fills a temporary sibling, which replaces `folder` only once complete.

    An interrupted build leaves at most a `.tmp-*` sibling behind, never a half-written `folder`.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        _write_synced(tmp / MANIFEST, json.dumps({"format": FORMAT, "source": source, "files": files}, indent=1))
        for name in files:
            _fsync(tmp / name)
        _fsync(tmp)
        _replace_folder(tmp, folder)
        _fsync(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def ensure(folder: Path, source: dict, write: Callable[[Path], None]) -> Path:
    """`folder` if it is a valid build of `source`, else a fresh build."""
    return folder if is_valid(folder, source) else build(folder, source, write)


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
