"""Many inputs on Ray: one actor per model replica, rows dealt out in chunks, results streamed back to the driver.

The driver (the process that called `run_batch`) keeps everything a user sees: it starts or joins
the cluster, deals rows out, and yields each row's outcome as it arrives, so the caller (the
command's resumable --output writer) stays the only writer. What travels to a worker is the
query's source text and filename (the worker compiles it, once) and the model's name and options
(the worker loads it, once); never a loaded model.

A worker that dies (its process exits, is killed, runs out of memory) is replaced by a fresh one
and loses only the chunk it was running: each of its rows runs once more, alone, and a row whose
worker dies again is given a `WorkerError` in place of its result. Chunks that were only waiting
for the dead worker go back to the queue unchanged.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import LmqlError, QueryArgumentError, WorkerError

IN_FLIGHT = 2   # chunks handed to each worker at a time: one decoding, one waiting, so it never idles
WAIT = 0.1      # seconds per wait for a result, so Ctrl-C and the timeout's alarm are handled promptly
INSTALL = "pip install 'lmql_lite[ray]'"


def import_ray():
    """The `ray` module, or an LmqlError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LmqlError(f"running on Ray needs the ray package: {INSTALL}") from None
    return ray


class Worker:
    """The actor: one model replica, running chunks of rows with the plain in-process batch run."""

    def __init__(self, source: str, filename: str, model: Any, default_model: Any, threads: int):
        from . import models
        models.limit_threads(threads)  # before the engine loads: it reads the variables at start-up
        self.source, self.filename, self.model = source, filename, model
        self.threads = threads
        if default_model is not None:
            from . import api
            api.set_default_model(default_model)

    def run(self, rows: list[dict[str, Any]], seed: int | None, return_errors: bool) -> tuple[str, Any]:
        """("ok", an outcome per row) or ("raised", the error that ended the chunk, as the plain run raises it)."""
        from . import api, models
        try:
            outcomes = [o for _, o in api.run_batch(self.source, rows, batch_size=len(rows), model=self.model,
                                                     seed=seed, filename=self.filename,
                                                     return_errors=return_errors)]
            models.limit_threads(self.threads)  # an engine that reset the count when it loaded
            return "ok", outcomes
        except Exception as e:  # noqa: BLE001 - a ModelError, a row's error without return_errors, a bug
            return "raised", _portable(e)

    def threads_in_use(self) -> tuple[int, int | None]:
        """(pid, torch's thread count): for tests and for the curious."""
        from . import models
        return os.getpid(), models.threads_in_use()


def _portable(error: Exception) -> Exception:
    """`error` if it survives pickling (to travel back to the driver), else an LmqlError saying what it was."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return LmqlError(f"{type(error).__name__}: {error}")


@dataclass
class _Chunk:
    indices: list[int]     # positions in the rows of the run
    retry: bool = False    # a row of a chunk whose worker died, running alone


@dataclass
class _Pool:
    """The workers, the chunks not yet dealt out, and those in flight (by their result's object ref)."""
    ray: Any
    make: Any                                    # () -> a fresh actor handle
    workers: list[Any]
    todo: collections.deque = field(default_factory=collections.deque)
    flight: dict[Any, tuple[Any, _Chunk]] = field(default_factory=dict)
    deaths: int = 0                              # workers that died since a chunk last finished

    def load(self, worker) -> int:
        return sum(1 for w, _ in self.flight.values() if w is worker)

    def replace(self, dead, error: BaseException) -> None:
        """A fresh worker in place of `dead` (once, however many of its chunks report its death).

        Workers that keep dying with no chunk finished in between (one that cannot start: lmql_lite
        missing on a node, no memory for the model) end the run instead of being replaced forever.
        """
        if dead in self.workers:
            self.deaths += 1
            if self.deaths > max(3, 2 * len(self.workers)):
                raise WorkerError(f"{self.deaths} Ray workers died in a row without finishing a row "
                                  f"({type(error).__name__}: {_first_line(error)})")
            self.workers[self.workers.index(dead)] = self.make()
            with contextlib.suppress(Exception):
                self.ray.kill(dead)

    def stop(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                self.ray.kill(worker)
        self.workers, self.flight = [], {}


def run_batch(source: str, filename: str, rows: list[dict[str, Any]], *, batch_size: int, model: Any,
              default_model: Any, seed: int | None, limit, return_errors: bool, address: Any,
              workers: int | None) -> Iterator[tuple[int, Any]]:
    """(row index, outcome) for every row, in the order they finish; see `api.run_batch`."""
    ray = import_ray()
    if not rows:
        return
    with limit or contextlib.nullcontext():
        cluster = _Cluster(ray, address)
    pool = None
    try:
        with limit or contextlib.nullcontext():
            count, threads = _shape(ray, workers)
            remote = ray.remote(num_cpus=threads, max_restarts=0)(Worker)
            pool = _Pool(ray, lambda: remote.remote(source, filename, model, default_model, threads), [])
            pool.workers = [pool.make() for _ in range(count)]
            print(f"ray: {cluster.where}, {count} worker{'s' if count != 1 else ''} x {threads} "
                  f"thread{'s' if threads != 1 else ''}", file=sys.stderr)
        pool.todo.extend(_Chunk(list(range(s, min(s + batch_size, len(rows)))))
                         for s in range(0, len(rows), batch_size))
        while pool.todo or pool.flight:
            with limit or contextlib.nullcontext():
                _deal(pool, rows, seed, return_errors)
                ready, _ = ray.wait(list(pool.flight), num_returns=1, timeout=WAIT)
                finished = [_collect(pool, ref, return_errors) for ref in ready]
            for outcomes in finished:
                yield from outcomes
    finally:
        if pool is not None:
            pool.stop()
        cluster.close()


def _deal(pool: _Pool, rows, seed, return_errors: bool) -> None:
    """Hand chunks to workers with room (retried rows first: they are at the queue's head)."""
    for worker in pool.workers:
        while pool.todo and pool.load(worker) < IN_FLIGHT:
            chunk = pool.todo.popleft()
            ref = worker.run.remote([rows[i] for i in chunk.indices], seed, return_errors)
            pool.flight[ref] = (worker, chunk)


def _collect(pool: _Pool, ref, return_errors: bool) -> list[tuple[int, Any]]:
    """The outcomes of a finished chunk; if its worker died, what that means for each of its chunks."""
    worker, _ = pool.flight[ref]
    try:
        return _outcomes(pool, ref)
    except pool.ray.exceptions.RayError:
        return _worker_died(pool, worker, return_errors)


def _outcomes(pool: _Pool, ref) -> list[tuple[int, Any]]:
    status, value = pool.ray.get(ref)  # a RayError if the worker died (RayActorError) or its process was lost
    _, chunk = pool.flight.pop(ref)
    if status == "raised":
        raise value
    pool.deaths = 0
    return list(zip(chunk.indices, value))


def _worker_died(pool: _Pool, worker, return_errors: bool) -> list[tuple[int, Any]]:
    """A worker died: its chunks that finished still count; of those that did not, the first handed
    to it was running (an actor runs its calls in order) and the others were only waiting.

    The waiting ones go back to the queue as they were. The running one's rows go back one by one,
    marked as retried (the next free worker takes them); a retried row that was running when its
    worker died gets a WorkerError.
    """
    finished, lost = [], []
    for ref in [r for r, (w, _) in pool.flight.items() if w is worker]:  # in the order they were handed out
        try:
            finished += _outcomes(pool, ref)
        except pool.ray.exceptions.RayError as e:
            lost.append((pool.flight.pop(ref)[1], e))
    if not lost:
        return finished
    pool.replace(worker, lost[0][1])
    (running, error), waiting = lost[0], [chunk for chunk, _ in lost[1:]]
    if running.retry:
        failure = WorkerError(f"the Ray worker running this row died, and died again when the row was run alone "
                              f"({type(error).__name__}: {_first_line(error)})")
        if not return_errors:
            raise failure from None
        finished += [(i, failure) for i in running.indices]
        again = []
    else:
        again = [_Chunk([i], retry=True) for i in running.indices]
    pool.todo.extendleft(reversed(again + waiting))
    return finished


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no reason given"


def _shape(ray, workers: int | None) -> tuple[int, int]:
    """(workers, threads each): the most threads per worker such that every worker fits on some node."""
    nodes = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    nodes = [c for c in nodes if c > 0]
    total = sum(nodes)
    if workers is None:
        workers = max(len(nodes), 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise QueryArgumentError(f"workers must be an integer of at least 1, got {workers!r}")
    if workers > total:
        raise QueryArgumentError(f"{workers} Ray workers need at least {workers} CPUs, and the cluster has {total}: "
                                 "ask for fewer workers, or add nodes")
    threads = max(t for t in range(1, max(nodes) + 1) if sum(c // t for c in nodes) >= workers)
    return workers, threads


@contextlib.contextmanager
def _worker_niceness():
    """Ray starts its workers at niceness 15, below everything else on the machine; on a cluster of
    its own that changes nothing, but a local cluster shares this machine with the user's other
    work, and the rows are the work the user asked for: run them at the driver's priority, as
    the plain run does. (RAY_worker_niceness is Ray's setting; one set by the user is kept.)"""
    saved = os.environ.get("RAY_worker_niceness")
    os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_worker_niceness", None)


def _raylet_messages_to_logging() -> None:
    """Ray's driver prints the raylet's error messages ("A worker died or was killed ...") on stdout,
    where the rows of a run without --output go. Send them to the `ray` logger instead (a warning:
    on stderr in a script, silenced by the command, which reports a dead worker in its row).
    Done once per process; LMQL_LITE_RAY_VERBOSE=1 leaves Ray's printing as it is."""
    worker = sys.modules.get("ray._private.worker")
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "lmql_lite", False) or os.environ.get("LMQL_LITE_RAY_VERBOSE"):
        return

    def print_to_stdstream(data, *args, **kwargs):
        if data.get("pid") != "raylet":
            return original(data, *args, **kwargs)
        for line in data.get("lines", []):
            logging.getLogger("ray").warning("%s", line)
    print_to_stdstream.lmql_lite = True
    worker.print_to_stdstream = print_to_stdstream


class _Cluster:
    """The Ray cluster of a run: joined if this process is already connected, connected to if an
    address is given (or RAY_ADDRESS is set), else started locally on this machine's CPUs. Only a
    cluster started here is shut down at the end; a connection made here is closed."""

    def __init__(self, ray, address: Any):
        self.ray = ray
        self.owned = False
        self.quiet = not os.environ.get("LMQL_LITE_RAY_VERBOSE")
        self.where = "the cluster this process is connected to"
        _raylet_messages_to_logging()
        if ray.is_initialized():
            return
        quiet = {"log_to_driver": not self.quiet, "logging_level": logging.ERROR if self.quiet else logging.INFO}
        given = None if address is True or address is None else address
        if not isinstance(given, (str, type(None))):
            raise QueryArgumentError(f"ray= is True, 'auto' or a cluster address ('ray://host:10001', 'host:6379'), "
                                     f"got {address!r}")
        given = given or os.environ.get("RAY_ADDRESS") or None
        try:
            if given is None:
                cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
                with _worker_niceness():
                    ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
                self.where = f"a local cluster of {cpus} CPUs"
            else:
                ray.init(address=given, **quiet)
                self.where = f"the cluster at {given}"
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise LmqlError(f"cannot reach the Ray cluster {given or '(local)'}: {_first_line(e)}") from None
        self.owned = True

    def close(self) -> None:
        if self.owned:
            self.owned = False
            self.ray.shutdown()  # stops a local cluster started here; only disconnects from a remote one
