"""One playground run: a query decoded in a thread of its own, its events kept for the page, and Stop."""
from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any, Callable, Iterator

from ..errors import LmqlError
from ..events import ErrorEvent

_ids = itertools.count(1)
POLL = 0.02  # seconds between looks for new events: well under a forward pass


def error_event(error: LmqlError) -> dict[str, Any]:
    """A user error as the stream's `error` event."""
    return ErrorEvent.of(error).to_json()


class Run:
    """The events of one run as they come; `stop()` closes the event stream, which ends decoding.

    `start` gives the run's events (JSON-safe dicts); it is called, iterated and closed in the
    run's own thread, so closing never races the generator.
    """

    def __init__(self, start: Callable[[], Iterator[dict[str, Any]]]):
        self.id = str(next(_ids))
        self.events: list[dict[str, Any]] = []
        self.state = "running"  # then done, stopped or error
        self._start = start
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"playground-run-{self.id}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        state = "done"
        try:
            events = self._start()
            try:
                for event in events:
                    if self._stop.is_set():
                        break
                    self._add(event)
                    if event.get("type") == "error":
                        state = "error"
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()
        except LmqlError as e:
            self._add(error_event(e))
            state = "error"
        except Exception as e:  # a bug of ours: say what it was, never a traceback on the page
            self._add(ErrorEvent(f"internal error: {type(e).__name__}: {e}", None, None, None, "internal").to_json())
            state = "error"
        if self._stop.is_set() and state == "done":
            state = "stopped"
            self._add({"type": "stopped"})
        if not self.events or self.events[-1].get("type") != "done":
            self._add({"type": "done"})
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def _add(self, event: dict[str, Any]) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def stop(self, wait: float | None = None) -> None:
        """Stop decoding at the next event (within one forward pass); `wait` seconds for it to end."""
        self._stop.set()
        if wait is not None:
            self._thread.join(wait)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    async def next_events(self, seen: int, timeout: float) -> list[dict[str, Any]]:
        """The events after the first `seen`, waiting up to `timeout` seconds for one to come.

        Polled on the event loop rather than waited for in a worker thread: a worker blocked in a
        wait would hold up the server's shutdown."""
        waited = 0.0
        while len(self.events) <= seen and self.running and waited < timeout:
            await asyncio.sleep(POLL)
            waited += POLL
        return self.events[seen:]

    def results(self) -> list[dict[str, Any]]:
        return [e["result"] for e in self.events if e.get("type") == "result"]
