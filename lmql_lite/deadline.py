"""A time limit on a whole run that nothing can swallow: not our `except Exception`, a library's, or the query's own.

When the time is up, `Expired` is raised in the running code. It derives from BaseException,
like KeyboardInterrupt, so `except Exception` lets it through; it is raised again every
REPEAT seconds until the run has left the `with` block, so even a bare `except:` only delays it.
Leaving the block turns it into a `QueryTimeoutError` (an LmqlError, exit code 7).

In the main thread the alarm is SIGALRM, which also interrupts blocking calls (`time.sleep`);
in another thread a timer thread raises `Expired` in it between two Python instructions.
"""
from __future__ import annotations

import ctypes
import math
import signal
import threading
import time
from typing import Callable

from .errors import QueryArgumentError, QueryTimeoutError

REPEAT = 0.1        # seconds between alarms once the time is up, in case one was swallowed
LONGEST = 10 ** 8   # seconds (about three years): past this, setitimer overflows on some systems


class Expired(BaseException):
    """Raised in the running code when a Deadline's time is up; becomes QueryTimeoutError when it leaves the block."""

    def __init__(self, deadline: "Deadline"):
        super().__init__(deadline.message)
        self.deadline = deadline


def check_seconds(seconds, label: str = "timeout") -> float:
    """`seconds` as a float if it is a usable time limit, else a QueryArgumentError saying why."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise QueryArgumentError(f"{label} must be a number of seconds, got {seconds!r}")
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > LONGEST:
        raise QueryArgumentError(f"{label} must be a positive number of seconds (at most {LONGEST:g}), got {seconds:g}")
    return seconds


class Deadline:
    """`with Deadline(5): ...` raises QueryTimeoutError if the block runs longer than 5 s from the Deadline's creation.

    The same Deadline may be entered several times (a generator that yields between batches):
    the clock runs from its creation, and only inside the block can it fire. `on_stuck`, when
    given, is called if the block is still running `grace` seconds after the first alarm (code
    that catches BaseException and carries on): the command line ends the process there.
    """

    def __init__(self, seconds: float, *, label: str = "timeout", on_stuck: Callable[[], None] | None = None,
                 grace: float = 3.0):
        self.seconds = check_seconds(seconds, label)
        self.end = time.monotonic() + self.seconds
        self.message = f"the query ran longer than {label} {self.seconds:g} s"
        self.on_stuck = on_stuck
        self.grace = grace
        self._armed = False
        self._fired_at: float | None = None
        self._saved = None      # main thread: (previous handler, previous timer)
        self._timer: threading.Timer | None = None
        self._thread = 0

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def __enter__(self) -> "Deadline":
        if self.expired():
            raise QueryTimeoutError(self.message)
        self._armed = True
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGALRM, self._on_alarm)
            outer = signal.setitimer(signal.ITIMER_REAL, 0)
            self._saved = (previous, outer, time.monotonic())
            remaining = self.end - time.monotonic()
            if outer[0] > 0:  # an outer limit that ends sooner still fires first (through our handler)
                remaining = min(remaining, outer[0])
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-6), REPEAT)
        else:
            self._thread = threading.get_ident()
            self._schedule(self.end - time.monotonic())
        return self

    def __exit__(self, kind, error, tb) -> bool:
        while True:  # an alarm may still arrive while we disarm: it only means we are late
            try:
                self._disarm()
                break
            except Expired as late:
                kind, error = Expired, late
        if kind is None or not issubclass(kind, Expired):
            return False
        if error is not None and error.deadline is not self and error.deadline._armed:
            return False  # an outer deadline fired: let it reach its own block
        timeout = QueryTimeoutError(self.message)
        timeout.decoded = getattr(error, "decoded", None)  # per row, the text so far (set by the interpreter)
        raise timeout from error  # where it fired: shown with --debug

    def _disarm(self) -> None:
        self._armed = False
        if self._saved is not None:
            previous, outer, entered = self._saved
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            self._saved = None
            if outer[0] > 0:  # give an outer timer back what is left of it
                left = outer[0] - (time.monotonic() - entered)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), outer[1])
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        if not self._armed:
            return
        now = time.monotonic()
        if self._fired_at is None:
            self._fired_at = now
        elif self.on_stuck is not None and now - self._fired_at > self.grace:
            self.on_stuck()
        raise Expired(self)

    def _on_alarm(self, signum, frame) -> None:
        if self._saved is not None and self._saved[1][0] > 0 and not self.expired():
            # The outer timer's time came first: hand the alarm to its handler.
            previous, self._saved = self._saved[0], (self._saved[0], (0.0, 0.0), self._saved[2])
            if callable(previous):
                previous(signum, frame)
            return
        self._fire()

    # ---- threads other than the main one -------------------------------------------------

    def _schedule(self, delay: float) -> None:
        self._timer = threading.Timer(max(delay, 0.0), self._raise_in_thread)
        self._timer.daemon = True
        self._timer.start()

    def _raise_in_thread(self) -> None:
        if not self._armed:
            return
        if self._fired_at is None:
            self._fired_at = time.monotonic()
        # The C call takes an exception class and makes it without arguments: a subclass bound to us.
        bound = type("Expired", (Expired,), {"__init__": lambda error, deadline=self: Expired.__init__(error, deadline)})
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread), ctypes.py_object(bound))
        self._schedule(REPEAT)
