"""Constraints: the terms `where` clauses build, compiled into byte automata and per-hole guides that mask tokens soundly."""
from .guide import Guide, compile_guide

__all__ = ["Guide", "compile_guide"]
