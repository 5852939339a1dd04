"""Model backends: the contract (`base`), one module per engine, and loading a model by its name.

A new engine is one module with a `load_model(name)` and one line in ENGINES. A name may say its
engine (`transformers:gpt2`); any other name — a folder, a hub id, None for the embedded
default — goes to DEFAULT_ENGINE. Engines are imported only when a model is loaded, after
`check_name` has refused names that cannot work (a missing path, a garbage `.gguf`), so such a
mistake costs no slow import.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelError

ENGINES = {
    "transformers": "lmql_lite.models.transformers",  # local folders, hub ids, the embedded default
}
DEFAULT_ENGINE = "transformers"
GGUF_MAGIC = b"GGUF"


def load_model(name: str | None = None):
    """The model `name` names, loaded by its engine (see `models.base.LanguageModel`)."""
    engine, rest = DEFAULT_ENGINE, name
    if name is not None:
        prefix, colon, tail = name.partition(":")
        if colon and prefix in ENGINES:
            engine, rest = prefix, tail or None
    check_name(rest)
    return importlib.import_module(ENGINES[engine]).load_model(rest)


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
