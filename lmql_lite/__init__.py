"""lmql_lite: a query language for language models — prompts, holes, Python and constraints.

`import lmql_lite` stays light (no torch): the entry points load on first use.
"""
from .errors import (ConstraintError, LmqlError, LmqlSyntaxError, ModelError, QueryArgumentError,
                     QueryRuntimeError, QueryTimeoutError)

__version__ = "0.1.0"
__all__ = ["run", "run_batch", "query", "F", "model", "load", "Result", "LmqlError", "LmqlSyntaxError",
           "ConstraintError", "ModelError", "QueryArgumentError", "QueryRuntimeError", "QueryTimeoutError"]

_API = {"run", "run_batch", "query", "F", "model", "load", "Result"}


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'lmql_lite' has no attribute {name!r}")
