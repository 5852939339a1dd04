"""Ctrl-C and SIGTERM that a finalizer cannot swallow.

A signal handler raises in whatever Python code runs at that moment. When that code is a
finalizer (a `__del__`, or a weakref callback such as the one the import system runs to drop a
module lock), Python prints "Exception ignored in ..." and carries on: the interruption is lost,
and a batch run killed with SIGTERM went on to its last row. So the command line's handlers also
note the signal here, and the loops that run long (each decoding pass, each row of a batch) call
`check()`, which raises it again while it is pending. The command line clears it once it has
caught it.
"""
from __future__ import annotations

_pending: type[BaseException] | None = None


def note(kind: type[BaseException]) -> None:
    """A signal arrived that raises `kind`; it stays pending until `clear()`."""
    global _pending
    _pending = kind


def check() -> None:
    """Raise the pending signal's exception, if one is pending (it was swallowed where it landed)."""
    if _pending is not None:
        raise _pending()


def clear() -> None:
    global _pending
    _pending = None
