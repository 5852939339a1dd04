"""Constraints: the terms `where` clauses build, compiled into byte automata and per-hole guides that mask tokens soundly.

`terms` is light (the compiler and `lmql-lite check` use it); the guides load numpy and the
automata on first use.
"""

__all__ = ["Guide", "compile_guide"]


def __getattr__(name: str):
    if name in __all__:
        from . import guide
        return getattr(guide, name)
    raise AttributeError(f"module 'lmql_lite.constraints' has no attribute {name!r}")
