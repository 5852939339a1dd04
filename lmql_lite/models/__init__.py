"""Model backends: the contract (`base`), one module per engine, and loading a model by its name.

A new engine is one module with a `load_model(name, threads=None)` and one line in ENGINES. The
engine is the one a name says (`transformers:gpt2`, LMQL's `llama.cpp:model.gguf`), else the
`engine=` option, else LMQL_LITE_ENGINE, else `auto`: a GGUF file (the embedded default
included) runs on llama.cpp when llama-cpp-python is installed and is converted for
transformers otherwise; a folder or hub id runs on transformers. Engines are imported only when
a model is loaded, after `check_name` has refused names that cannot work (a missing path, a
garbage `.gguf`), so such a mistake costs no slow import.
LMQL's spellings are understood too: `local:NAME` (a local model), `random` (random logits over
a real vocabulary, `seed=`), and remote models (`openai/…`, `chatgpt`), which are a clear
ModelError until a serving-engine backend exists.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from ..errors import ModelError

ENGINES = {
    "transformers": "lmql_lite.models.transformers",  # local folders, hub ids, GGUF files converted once
    "llama.cpp": "lmql_lite.models.llamacpp",  # GGUF files (the embedded default included), in-process
}
ENGINE_CHOICES = ("auto", *ENGINES)
# What each engine needs installed (the Python module), and the command that installs it.
ENGINE_PACKAGES = {"transformers": ("transformers", "pip install lmql_lite"),
                   "llama.cpp": ("llama_cpp", "pip install 'lmql_lite[llama]'  (from a clone: pip install '.[llama]'; "
                                              "it compiles llama.cpp: docs/engines.md gives the pinned build flags)")}
GGUF_MAGIC = b"GGUF"

# LMQL's shorthands for OpenAI models.
OPENAI_ALIASES = {"chatgpt": "openai/gpt-3.5-turbo", "gpt-4": "openai/gpt-4"}
# Spellings of the embedded default model after `local:`.
DEFAULT_NAMES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "default")
# LMQL options about where and how a local model runs: they change nothing on this CPU backend.
PLACEMENT_OPTIONS = frozenset({"silent", "verbose", "inprocess", "cuda", "device_map", "trust_remote_code",
                               "dtype", "torch_dtype", "async_transport"})
RANDOM_OPTIONS = frozenset({"seed", "tokenizer", "vocab"})
# Options every engine takes: which engine, and how many threads it computes with.
ENGINE_OPTIONS = frozenset({"engine", "threads"})
REMOTE = (("openai/", "an OpenAI API model"), ("azure/", "an Azure OpenAI model"),
          ("replicate:", "a Replicate model"))


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
    _check_options(name, options, PLACEMENT_OPTIONS | ENGINE_OPTIONS)
    if name is not None and name.startswith("local:"):
        name = name[len("local:"):]
        if name in DEFAULT_NAMES:
            name = None
    engine, rest = options.get("engine"), name
    if name is not None:
        prefix, colon, tail = name.partition(":")
        if colon and prefix in ENGINES:
            engine, rest = prefix, tail or None
    check_name(rest)
    engine = choose_engine(rest, engine)
    threads = thread_count(options.get("threads"))
    return importlib.import_module(ENGINES[engine]).load_model(rest, threads=threads)


def choose_engine(name: str | None, engine: str | None = None) -> str:
    """The engine that runs model `name`: `engine` (or LMQL_LITE_ENGINE) when not `auto`, else the one for its kind.

    `auto` runs a GGUF file (None: the embedded default) on llama.cpp when it is installed, else
    on transformers (converted once); anything else on transformers. A ModelError names the
    install command when the engine asked for is not installed.
    """
    given = engine if engine is not None else os.environ.get("LMQL_LITE_ENGINE") or "auto"
    if given not in ENGINE_CHOICES:
        close = difflib.get_close_matches(str(given), ENGINE_CHOICES, 1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = "engine=" if engine is not None else "LMQL_LITE_ENGINE"
        raise ModelError(f"unknown engine {given!r} ({where}){hint}; known: {', '.join(ENGINE_CHOICES)}")
    gguf = name is None or (Path(name).expanduser().is_file() and name.lower().endswith(".gguf"))
    if given == "auto":
        return "llama.cpp" if gguf and installed("llama.cpp") else "transformers"
    if not installed(given):
        raise ModelError(f"the {given} engine is not installed; install it with:\n    {ENGINE_PACKAGES[given][1]}")
    if given == "llama.cpp" and not gguf:
        raise ModelError(f"model {name!r}: the llama.cpp engine runs .gguf files; a model folder or hub id "
                         "runs on transformers (engine='transformers', --engine transformers)")
    return given


def installed(engine: str) -> bool:
    """Whether `engine`'s library can be imported (found, not imported: that costs seconds)."""
    try:
        return importlib.util.find_spec(ENGINE_PACKAGES[engine][0]) is not None
    except (ImportError, ValueError):
        return False


def thread_count(threads: int | None = None) -> int | None:
    """Threads an engine computes with: `threads`, else LMQL_LITE_THREADS, else None (the engine's own choice: every core)."""
    given = threads if threads is not None else os.environ.get("LMQL_LITE_THREADS") or None
    if given is None:
        return None
    try:
        count = int(given) if not isinstance(given, (bool, float)) else 0
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        where = "threads=" if threads is not None else "LMQL_LITE_THREADS"
        raise ModelError(f"threads must be a positive integer, got {given!r} ({where})")
    return count


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _remote(name: str | None) -> str | None:
    """Why `name` cannot run here (a remote API model), or None."""
    if name is None:
        return None
    full = OPENAI_ALIASES.get(name, name)
    if full.startswith("local:"):
        full = full[len("local:"):]
    for prefix, what in REMOTE:
        if full.startswith(prefix):
            return (f"model {name!r} is {what}: remote models are not supported yet "
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
