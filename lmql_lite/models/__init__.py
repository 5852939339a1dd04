"""Model backends: the contract (`base`), one module per engine, and loading a model by its name.

A new engine is one module with a `load_model(name, device=, dtype=, threads=)` and one line in
ENGINES. The engine is the one a name says (`transformers:gpt2`, LMQL's `llama.cpp:model.gguf`),
else the `engine=` option, else LMQL_LITE_ENGINE, else `auto`: a GGUF file (the embedded default
included) runs on llama.cpp when llama-cpp-python is installed and is converted for transformers
otherwise; a folder, a hub id, a nanoGPT checkpoint, or a model asked onto a GPU or into a dtype
runs on transformers. Engines are imported only when a model is loaded, after `check_name` has
refused names that cannot work (a missing path, a garbage `.gguf`), so such a mistake costs no
slow import.
LMQL's spellings are understood too: `local:NAME` (a local model), `random` (random logits over
a real vocabulary, `seed=`), and remote API models (`openai/…`, `chatgpt`), which are a clear
ModelError. A model on an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server) is named
by its URL, `http://host:port/v1` or `URL#MODEL` (remote.py).
Where a model runs: `device=` (auto, cpu, cuda, cuda:N, mps; LMQL's `cuda=True` and a one-device
`device_map=` too) and `dtype=` (auto, float32, float16, bfloat16; LMQL's `torch_dtype=`), else the
LMQL_LITE_DEVICE and LMQL_LITE_DTYPE environment variables; checked here, torch-free, and
passed on to the engine, which finds out whether the device is there.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelError

ENGINES = {
    "transformers": "lmql_lite.models.transformers",  # local folders, hub ids, GGUF files converted once
    "llama.cpp": "lmql_lite.models.llamacpp",  # GGUF files (the embedded default included), in-process
}
ENGINE_CHOICES = ("auto", *ENGINES)
ENGINE_VARIABLE = "LMQL_LITE_ENGINE"
# What each engine needs installed (the Python module), and the command that installs it.
ENGINE_PACKAGES = {"transformers": ("transformers", "pip install lmql_lite"),
                   "llama.cpp": ("llama_cpp", "pip install 'lmql_lite[llama]'  (from a clone: pip install '.[llama]'; "
                                              "it compiles llama.cpp: docs/engines.md gives the pinned build flags)")}
GGUF_MAGIC = b"GGUF"
NANOGPT_CHECKPOINT = "ckpt.pt"  # the name nanoGPT's train.py gives its checkpoints

# LMQL's shorthands for OpenAI models.
OPENAI_ALIASES = {"chatgpt": "openai/gpt-3.5-turbo", "gpt-4": "openai/gpt-4"}
# Spellings of the embedded default model after `local:`.
DEFAULT_NAMES = ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "default")
# LMQL options about how a local model is served and logged: accepted, they change nothing here.
SERVING_OPTIONS = frozenset({"silent", "verbose", "inprocess", "trust_remote_code", "async_transport"})
# Where the model runs and in what precision (see `placement`).
DEVICE_OPTIONS = frozenset({"device", "cuda", "device_map", "dtype", "torch_dtype"})
PLACEMENT_OPTIONS = SERVING_OPTIONS | DEVICE_OPTIONS
DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "float": "float32",
          "float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
DEVICE_VARIABLE, DTYPE_VARIABLE = "LMQL_LITE_DEVICE", "LMQL_LITE_DTYPE"
RANDOM_OPTIONS = frozenset({"seed", "tokenizer", "vocab"})
# Options every local engine takes: which engine, and how many threads it computes with.
ENGINE_OPTIONS = frozenset({"engine", "threads"})
REMOTE = (("openai/", "an OpenAI API model"), ("azure/", "an Azure OpenAI model"),
          ("replicate:", "a Replicate model"))


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
    if name is not None and name.startswith(("http://", "https://")):
        from .remote import OPTIONS, load_model as load_served
        _check_options(name, options, OPTIONS)
        return load_served(name, **options)
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
    device, dtype = placement(options)
    engine = choose_engine(rest, engine, device, dtype)
    threads = thread_count(options.get("threads"))
    return importlib.import_module(ENGINES[engine]).load_model(rest, device=device, dtype=dtype, threads=threads)


def choose_engine(name: str | None, engine: str | None = None, device: str = "auto", dtype: str = "auto") -> str:
    """The engine that runs model `name`: `engine` (else LMQL_LITE_ENGINE) when not `auto`, else the one for its kind.

    `auto` runs a GGUF file (None: the embedded default) on llama.cpp when it is installed and no
    GPU or dtype is asked for, else on transformers (converted once); anything else on
    transformers. A ModelError names the install command when the engine asked for is missing.
    """
    given = engine if engine is not None else os.environ.get(ENGINE_VARIABLE, "").strip() or "auto"
    if given not in ENGINE_CHOICES:
        close = difflib.get_close_matches(str(given), ENGINE_CHOICES, 1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = "engine=" if engine is not None else f"the environment variable {ENGINE_VARIABLE}"
        raise ModelError(f"unknown engine {given!r} ({where}){hint}; known: {', '.join(ENGINE_CHOICES)}")
    gguf = name is None or (name.lower().endswith(".gguf") and Path(name).expanduser().is_file())
    on_cpu = device in ("auto", "cpu") and dtype == "auto"
    if given == "auto":
        return "llama.cpp" if gguf and on_cpu and installed("llama.cpp") else "transformers"
    if not installed(given):
        raise ModelError(f"the {given} engine is not installed; install it with:\n    {ENGINE_PACKAGES[given][1]}")
    if given == "llama.cpp" and not gguf:
        raise ModelError(f"model {name!r}: the llama.cpp engine runs .gguf files; a model folder, a hub id or a "
                         "checkpoint runs on transformers (engine='transformers', --engine transformers)")
    if given == "llama.cpp" and not on_cpu:
        raise ModelError(f"the llama.cpp engine runs on the CPU in the GGUF file's own precision: device={device!r} "
                         f"dtype={dtype!r} need engine='transformers' (--engine transformers)")
    return given


def installed(engine: str) -> bool:
    """Whether `engine`'s library can be imported (found, not imported: that costs seconds)."""
    try:
        return importlib.util.find_spec(ENGINE_PACKAGES[engine][0]) is not None
    except (ImportError, ValueError):
        return False


def thread_count(threads: int | None = None) -> int | None:
    """Threads an engine computes with: `threads`, else LMQL_LITE_THREADS, else None (the engine's own choice: every core)."""
    given = threads if threads is not None else os.environ.get("LMQL_LITE_THREADS", "").strip() or None
    if given is None:
        return None
    try:
        count = int(given) if not isinstance(given, (bool, float)) else 0
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        where = "threads=" if threads is not None else "the environment variable LMQL_LITE_THREADS"
        raise ModelError(f"threads must be a positive integer, got {given!r} ({where})")
    return count


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def placement(options: dict[str, Any]) -> tuple[str, str]:
    """(device, dtype) a model's options ask for, in our spelling: the device `auto`, `cpu`, `cuda`,
    `cuda:N` or `mps`, the dtype `auto`, `float32`, `float16` or `bfloat16`.

    `device=` (a torch.device too), else LMQL's `cuda=True` or a one-device `device_map=`, else
    LMQL_LITE_DEVICE, else auto; `dtype=` or `torch_dtype=` (a torch dtype too), else
    LMQL_LITE_DTYPE, else auto. A spelling we do not know is a ModelError.
    """
    asked = {}
    if options.get("device") is not None:
        asked["device="] = _device(options["device"], "device=")
    if options.get("cuda") is not None:
        if not isinstance(options["cuda"], bool):
            raise ModelError(f"cuda= is True or False, got {options['cuda']!r}")
        if options["cuda"]:
            asked["cuda=True"] = "cuda"
    if options.get("device_map") is not None:
        if not isinstance(options["device_map"], str):
            raise ModelError("device_map= places the whole model on one device here: give a device name "
                             f"({', '.join(DEVICES)}, cuda:N), not {type(options['device_map']).__name__}")
        asked["device_map="] = _device(options["device_map"], "device_map=")
    if len(set(asked.values())) > 1:
        raise ModelError("the model's options ask for different devices: "
                         + ", ".join(f"{k} {v!r}" for k, v in asked.items()))
    device = next(iter(asked.values()), None) or _from_environment(DEVICE_VARIABLE, _device) or "auto"
    dtypes = {k: _dtype(options[k], f"{k}=") for k in ("dtype", "torch_dtype") if options.get(k) is not None}
    if len(set(dtypes.values())) > 1:
        raise ModelError(f"dtype= {options['dtype']!r} and torch_dtype= {options['torch_dtype']!r} disagree")
    dtype = next(iter(dtypes.values()), None) or _from_environment(DTYPE_VARIABLE, _dtype) or "auto"
    return device, dtype


def _device(value: Any, where: str) -> str:
    text = str(value).strip().lower()  # a torch.device prints as its name
    kind, colon, number = text.partition(":")
    if kind in DEVICES and (not colon or (kind == "cuda" and number.isdigit())):
        return text
    raise ModelError(f"{where} {value!r} is not a device: use {', '.join(DEVICES)} or cuda:N")


def _dtype(value: Any, where: str) -> str:
    text = str(value).strip().lower().removeprefix("torch.")  # torch.bfloat16 prints so
    if text in DTYPES:
        return DTYPES[text]
    raise ModelError(f"{where} {value!r} is not a dtype: use auto, float32, float16 or bfloat16")


def _from_environment(variable: str, parse) -> str | None:
    value = os.environ.get(variable, "").strip()
    return parse(value, f"the environment variable {variable}=") if value else None


def _remote(name: str | None) -> str | None:
    """Why `name` cannot run here (a remote API model), or None."""
    if name is None:
        return None
    full = OPENAI_ALIASES.get(name, name)
    if full.startswith("local:"):
        full = full[len("local:"):]
    for prefix, what in REMOTE:
        if full.startswith(prefix):
            return (f"model {name!r} is {what}: not supported yet (hosted APIs enforce no constraint on "
                    f"a prompt given as tokens). Serve an open model on a serving-engine (vLLM, SGLang, "
                    f"llama.cpp's server) and name it by its URL, http://host:port/v1, or use a local "
                    f"model: a folder, a hub id in your cache, 'local:NAME', 'random', or no model for "
                    f"the embedded default")
    return None


def _check_options(name: str | None, options: dict[str, Any], known: frozenset[str]) -> None:
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, 1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
            raise ModelError(f"model {name or 'default'!r}: unknown option {key!r}{hint}")


def is_nanogpt(path: Path) -> bool:
    """Whether `path` names a nanoGPT checkpoint: a `.pt` file, or a folder holding `ckpt.pt` and no transformers config."""
    if path.is_dir():
        return (path / NANOGPT_CHECKPOINT).is_file() and not (path / "config.json").is_file()
    return path.suffix.lower() == ".pt" and path.is_file()


def check_name(name: str | None) -> None:
    """Raise ModelError for a model name that cannot work, without importing torch: a missing path,
    a garbage `.gguf` or `.pt`, a folder with no config or checkpoint."""
    if name is None:
        return
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"a model is a folder, a .gguf file or a hub id, got {name!r}")
    path = Path(name).expanduser()
    if not path.exists():
        if name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or name.endswith((".gguf", ".pt")):
            raise ModelError(f"model {name!r}: no such file or directory")
        return  # a hub id
    if path.is_dir():
        if is_nanogpt(path):
            _check_zip(path / NANOGPT_CHECKPOINT, name)
        elif not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: {path} holds no transformers model (no config.json) "
                             f"and no nanoGPT checkpoint ({NANOGPT_CHECKPOINT})")
        return
    if is_nanogpt(path):
        _check_zip(path, name)
        return
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"model {name!r} is a file: name a model folder (config.json, weights, tokenizer), "
                         "a .gguf file or a nanoGPT checkpoint (.pt)")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ModelError(f"model {name!r} cannot be read: {e.strerror or e}") from None
    if head[:4] != GGUF_MAGIC or len(head) < 8 or not 1 <= int.from_bytes(head[4:8], "little") <= 3:
        raise ModelError(f"model {name!r} is not a valid GGUF file (it does not start with a GGUF header)")


def _check_zip(path: Path, name: str) -> None:
    # torch.save writes a zip archive (since torch 1.6): anything else is not a checkpoint we read.
    import zipfile

    try:
        ok = zipfile.is_zipfile(path)
    except OSError as e:
        raise ModelError(f"model {name!r} cannot be read: {e.strerror or e}") from None
    if not ok:
        raise ModelError(f"model {name!r} is not a torch checkpoint (a .pt file that torch.save writes is a zip archive)")
