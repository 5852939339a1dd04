"""LMQL's variable decorators: `@lmql.decorators.pre` (runs before a hole is decoded) and `@lmql.decorators.streaming` (sees each partial value).

A plain function in `[@fn X]` post-processes the finished value (`fn(value)` replaces it, in the
variable and the prompt). A `pre` function is called with the hole's `Variable` before decoding:
returning anything but that variable fixes the hole's value without decoding. A `streaming`
function is called as `fn(text_so_far, context)` after each token of the hole, and its return
value is ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Variable:
    """The hole a `pre` decorator is about to see decoded."""
    name: str


def pre(fn: Callable[[Variable], Any]) -> Callable[[Variable], Any]:
    fn.__lmql_decorator__ = "pre"
    return fn


def streaming(fn: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    fn.__lmql_decorator__ = "streaming"
    return fn


def kind(fn: Any) -> str:
    """'pre', 'streaming' or 'post' (a plain post-processing function)."""
    return getattr(fn, "__lmql_decorator__", "post")
