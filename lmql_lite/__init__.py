"""lmql_lite: a query language for language models — prompts, holes, Python and constraints.

`import lmql_lite` stays light (no torch): the entry points load on first use. `import lmql_lite
as lmql` gives LMQL's Python surface too (`run_sync`, `F`, `query`, `model(...).generate`, ...).
"""
import importlib

from .errors import (ConstraintError, LmqlError, LmqlSyntaxError, ModelError, QueryArgumentError,
                     QueryRuntimeError, QueryTimeoutError)

__version__ = "0.1.0"
_API = {"run", "run_sync", "stream", "astream", "run_file", "run_batch", "query", "F", "model", "load", "Result", "LLM",
        "ScoringResult", "set_default_model", "get_default_model", "generate", "generate_sync", "score",
        "score_sync"}
_MODULES = {"decorators"}
__all__ = sorted(_API) + ["LmqlError", "LmqlSyntaxError", "ConstraintError", "ModelError", "QueryArgumentError",
                          "QueryRuntimeError", "QueryTimeoutError"]


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lmql_lite' has no attribute {name!r}")
