"""Model backends: the contract (`base`), one module per engine, and loading a model by its name.

A new engine is one module with a `load_model(name)` and one line in ENGINES. A name may say its
engine (`transformers:gpt2`); any other name — a folder, a hub id, None for the embedded
default — goes to DEFAULT_ENGINE. Engines are imported only when a model is loaded, after
`check_name` has refused names that cannot work (a missing path, a garbage `.gguf`), so such a
mistake costs no slow import.
LMQL's spellings are understood too: `local:NAME` (a local model), `random` (random logits over
a real vocabulary, `seed=`), and remote models (`openai/…`, `chatgpt`), which are a clear
ModelError until a serving-engine backend exists.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelError

ENGINES = {
    "transformers": "lmql_lite.models.transformers",  # local folders, hub ids, the embedded default
}
DEFAULT_ENGINE = "transformers"
GGUF_MAGIC = b"GGUF"

# LMQL's shorthands for OpenAI models.
OPENAI_ALIASES = {"chatgpt": "openai/gpt-3.5-turbo", "gpt-4": "openai/gpt-4"}
# Spellings of the embedded default model after `local:`.
DEFAULT_NAMES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "default")
# LMQL options about where and how a local model runs: they change nothing on this CPU backend.
PLACEMENT_OPTIONS = frozenset({"silent", "verbose", "inprocess", "cuda", "device_map", "trust_remote_code",
                               "dtype", "torch_dtype", "async_transport"})
RANDOM_OPTIONS = frozenset({"seed", "tokenizer", "vocab"})
REMOTE = (("openai/", "an OpenAI API model"), ("azure/", "an Azure OpenAI model"),
          ("replicate:", "a Replicate model"), ("llama.cpp:", "a llama.cpp model"))


# What a process's engines read for their CPU thread count; LMQL_LITE_THREADS is ours (engines
# without a thread variable of their own read it), the others are the numeric libraries'.
THREAD_VARIABLES = ("LMQL_LITE_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """At most `threads` CPU threads for the engines of this process (a worker sharing a machine).

    Set before an engine loads, the variables are what it reads at start-up; torch, if already
    loaded, is told directly. An engine with its own thread option reads LMQL_LITE_THREADS.
    """
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def threads_in_use() -> int | None:
    """torch's CPU thread count in this process, or None before torch is loaded."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def load_model(name: str | None = None, **options: Any):
    """The model `name` names, loaded by its engine (see `models.base.LanguageModel`); `options`
    are LMQL's `lmql.model(name, ...)` keywords."""
    if name is not None and not isinstance(name, str):
        raise ModelError(f"a model is named by a string, got {type(name).__name__}")
    remote = _remote(name)
    if remote:
        raise ModelError(remote)
    if name == "random":
        _check_options(name, options, RANDOM_OPTIONS | PLACEMENT_OPTIONS)
        from .random import RandomModel
        return RandomModel(seed=options.get("seed"), tokenizer=options.get("tokenizer") or options.get("vocab"))
    _check_options(name, options, PLACEMENT_OPTIONS)
    if name is not None and name.startswith("local:"):
        name = name[len("local:"):]
        if name in DEFAULT_NAMES:
            name = None
    engine, rest = DEFAULT_ENGINE, name
    if name is not None:
        prefix, colon, tail = name.partition(":")
        if colon and prefix in ENGINES:
            engine, rest = prefix, tail or None
    check_name(rest)
    return importlib.import_module(ENGINES[engine]).load_model(rest)


def _remote(name: str | None) -> str | None:
    """Why `name` cannot run here (a remote API model), or None."""
    if name is None:
        return None
    full = OPENAI_ALIASES.get(name, name)
    if full.startswith("local:"):
        full = full[len("local:"):]
    for prefix, what in REMOTE:
        if full.startswith(prefix):
            return (f"model {name!r} is {what}: remote and llama.cpp models are not supported yet "
                    f"(a serving-engine backend for OpenAI-compatible servers such as vLLM, SGLang "
                    f"and llama.cpp's server is planned). Use a local model: a folder, a hub id in "
                    f"your cache, 'local:NAME', 'random', or no model for the embedded default")
    return None


def _check_options(name: str | None, options: dict[str, Any], known: frozenset[str]) -> None:
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, 1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
            raise ModelError(f"model {name or 'default'!r}: unknown option {key!r}{hint}")


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
