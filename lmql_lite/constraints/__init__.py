"""Constraints: the terms `where` clauses build, compiled into byte automata and per-hole guides that mask tokens soundly.

`terms` is light (the compiler and `lmql-lite check` use it); the guides (`base.Guide`, the
contract; `guide.AutomatonGuide` and `grammar.GrammarGuide`) load numpy and the automata on first use.
"""

__all__ = ["Guide", "Mask", "compile_guide"]


def __getattr__(name: str):
    if name in ("Guide", "Mask"):
        from . import base
        return getattr(base, name)
    if name == "compile_guide":
        from . import guide
        return guide.compile_guide
    raise AttributeError(f"module 'lmql_lite.constraints' has no attribute {name!r}")
