"""A run in a thread whose events the consumer pulls one by one (`lmql_lite.stream`); closing the stream stops the run."""
from __future__ import annotations

import contextvars
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import LmqlError
from .events import Done, ErrorEvent, Event

AHEAD = 64  # events the run may be ahead of its consumer before it waits


class Closed(BaseException):
    """The consumer closed the stream: raised in the run's thread at its next event, so decoding stops there.

    A BaseException, so that no handler of the interpreter (which catches a query's own
    `Exception`s to position them) takes it for an error of the query.
    """


@dataclass(frozen=True)
class _Raised:
    """An internal error of the run, raised again in the consumer."""
    error: BaseException


def events(run: Callable[[Callable[[Event], None]], None]) -> Iterator[Event]:
    """The events `run(sink)` gives its sink, as the consumer pulls them; a user's error becomes an error event, then done."""
    pipe: queue.Queue = queue.Queue(maxsize=AHEAD)
    closed = threading.Event()

    def sink(event: Event | _Raised) -> None:
        while True:
            if closed.is_set():
                raise Closed
            try:
                pipe.put(event, timeout=0.05)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            run(sink)
            tail: list = [Done()]
        except Closed:
            return
        except LmqlError as e:
            tail = [ErrorEvent.of(e), Done()]
        except BaseException as e:  # a bug of ours, or the consumer's interrupt: the consumer raises it
            tail = [_Raised(e)]
        try:
            for event in tail:
                sink(event)
        except Closed:
            pass

    context = contextvars.copy_context()  # the caller's model and settings hold in the run's thread
    thread = threading.Thread(target=context.run, args=(work,), name="lmql_lite.stream", daemon=True)
    return _consume(thread, pipe, closed)


def _consume(thread: threading.Thread, pipe: queue.Queue, closed: threading.Event) -> Iterator[Event]:
    thread.start()  # on the first pull: a stream never iterated starts nothing
    try:
        while True:
            event = pipe.get()
            if isinstance(event, _Raised):
                raise event.error
            yield event
            if isinstance(event, Done):
                return
    finally:
        closed.set()
        thread.join()
