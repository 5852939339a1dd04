"""Model backends, and the checks of a model name that need no torch: a mistake is reported before the slow imports."""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

GGUF_MAGIC = b"GGUF"


def load_model(name: str | None = None):
    """The default model (None), a local model folder or `.gguf` file, or a hub id (see `transformers.load_model`)."""
    check_name(name)
    from .transformers import load_model as load
    return load(name)


def check_name(name: str | None) -> None:
    """Raise ModelError for a model name that cannot work, without importing torch: a missing path, a garbage `.gguf`, a folder with no config."""
    if name is None:
        return
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"a model is a folder, a .gguf file or a hub id, got {name!r}")
    path = Path(name).expanduser()
    if not path.exists():
        if name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or name.endswith(".gguf"):
            raise ModelError(f"model {name!r}: no such file or directory")
        return  # a hub id
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: {path} holds no transformers model (no config.json)")
        return
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"model {name!r} is a file: name a model folder (config.json, weights, tokenizer) or a .gguf file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelError(f"model {name!r} cannot be read: {e.strerror or e}") from None
    if head[:4] != GGUF_MAGIC or len(head) < 8 or not 1 <= int.from_bytes(head[4:8], "little") <= 3:
        raise ModelError(f"model {name!r} is not a valid GGUF file (it does not start with a GGUF header)")
