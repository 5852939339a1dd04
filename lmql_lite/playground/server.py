"""The playground's web server (Starlette): the page, the examples, and runs streamed as server-sent events."""
from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import LmqlError, QueryArgumentError
from .runs import Run, error_event

STATIC = Path(str(resources.files("lmql_lite.playground") / "static"))
MAX_SOURCE = 1_000_000  # characters of query text a run may send
# The parser is one Lark instance whose indenter keeps state: two threads parsing at once corrupt
# each other's parse ("unexpected dedent"). Every parse here takes this lock; a run parses first,
# under it, and the stream then finds the compiled query in api's cache.
PARSING = threading.Lock()
STREAM_KEYWORDS = frozenset({"model", "decoder", "seed", "alternatives"})  # lmql_lite.stream's own keywords


@dataclass
class Settings:
    """What the server was started with."""
    preload: Path | None = None                       # FILE: the editor starts with it
    models: dict[str, Any] = field(default_factory=dict)  # model-field names that mean a ready model (tests)
    remote: bool = False                              # bound to a non-loopback address


def example_files(settings: Settings) -> list[Path]:
    """The .lmq files the page offers: the examples shipped in the wheel (the repository's
    examples/ folder as `lmql_lite.examples`, or that folder in a checkout), then those beside FILE."""
    # Installed, `lmql_lite.examples` is a namespace package (the folder has no __init__.py), whose
    # resources.files() is a MultiplexedPath that str() does not turn into a path: take its folders.
    spec = importlib.util.find_spec("lmql_lite.examples")
    if spec is not None and spec.submodule_search_locations:
        folders = [Path(p) for p in spec.submodule_search_locations]
    else:  # a checkout run in place: the folder next to the package
        folders = [Path(__file__).resolve().parents[2] / "examples"]
    if settings.preload is not None:
        folders.append(settings.preload.parent)
    seen: dict[str, Path] = {}
    for folder in folders:
        folder = Path(str(folder))
        if folder.is_dir():
            for path in sorted(folder.glob("*.lmq")):
                seen.setdefault(path.name, path)
    return list(seen.values())


class Playground:
    """The server's state: settings, the run in progress (one at a time), finished runs by id."""

    KEEP = 20  # finished runs whose events and result stay downloadable

    def __init__(self, settings: Settings):
        self.settings = settings
        self.runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    def start(self, request: dict[str, Any]) -> Run:
        """A new run of the request; the one still running is stopped first (one run at a time)."""
        with self._lock:
            for run in self.runs.values():
                if run.running:
                    run.stop(wait=30)
            run = Run(lambda: self._events(request))
            self.runs[run.id] = run
            for old in list(self.runs)[:-self.KEEP]:
                del self.runs[old]
            return run

    def _events(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        import lmql_lite
        from .. import api
        source, inputs, decoder, seed, model = _parse_request(request)
        with PARSING:
            program = api.load(source)
        reads = set(api.input_order(program)) | set(program.inputs)
        inputs = {k: v for k, v in inputs.items() if k in reads}  # a field left from an earlier version of the query
        clash = sorted(set(inputs) & STREAM_KEYWORDS)
        if clash:
            raise QueryArgumentError(f"the playground cannot pass an input named {clash[0]} (the name of a run's own "
                                     f"setting); rename it in the query")
        if isinstance(model, str) and model in self.settings.models:
            model = self.settings.models[model]
        elif isinstance(model, str):
            yield {"type": "status", "message": f"loading model {model}"}
            model = api.model(model).load()  # loaded once per process, kept for the next runs
        else:
            yield {"type": "status", "message": "starting (a model loads on its first run)"}
        try:
            events = lmql_lite.stream(source, model=model, decoder=decoder, seed=seed, **inputs)
            for event in events:
                yield event.to_json()
        except LmqlError as e:
            yield error_event(e)


def _parse_request(request: dict[str, Any]) -> tuple[str, dict[str, Any], str | None, int | None, Any]:
    source = request.get("source")
    if not isinstance(source, str) or not source.strip():
        raise QueryArgumentError("the query is empty")
    if len(source) > MAX_SOURCE:
        raise QueryArgumentError(f"the query is longer than {MAX_SOURCE} characters")
    inputs = request.get("inputs") or {}
    if not isinstance(inputs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in inputs):
        raise QueryArgumentError("inputs are a JSON object of input names and values")
    decoder = request.get("decoder") or None
    if decoder is not None and not isinstance(decoder, str):
        raise QueryArgumentError(f"the decoder is a name such as argmax or sample, got {decoder!r}")
    seed = request.get("seed")
    if seed in (None, ""):
        seed = None
    else:
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise QueryArgumentError(f"the seed is a whole number, got {seed!r}") from None
    model = request.get("model") or None
    if model is not None and not isinstance(model, str):
        raise QueryArgumentError(f"a model is named by text (a folder, 'random', a hub id), got {model!r}")
    text = source if source.endswith("\n") else source + "\n"  # always query text, never a path to read
    return text, inputs, decoder, seed, model.strip() if model else None


def _inputs(source: str) -> dict[str, Any]:
    """The query's free input variables in the order they appear, or the error that stops it parsing."""
    from .. import api
    try:
        with PARSING:
            program = api.load(source)
    except LmqlError as e:
        return {"inputs": [], "error": error_event(e)}
    return {"inputs": api.input_order(program), "error": None}


def create_app(settings: Settings | None = None) -> Starlette:
    """The playground as an ASGI app (uvicorn serves it; tests may use Starlette's TestClient)."""
    play = Playground(settings or Settings())

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def config(request: Request) -> Response:
        pre = play.settings.preload
        preload = None if pre is None else {"name": pre.name, "source": pre.read_text(encoding="utf-8")}
        return JSONResponse({"preload": preload, "remote": play.settings.remote,
                             "models": sorted(play.settings.models)})

    async def examples(request: Request) -> Response:
        return JSONResponse([{"name": p.name, "source": p.read_text(encoding="utf-8")}
                             for p in example_files(play.settings)])

    async def inputs(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        source = body.get("source")
        if not isinstance(source, str):
            return JSONResponse({"error": "send {\"source\": query text}"}, status_code=400)
        return JSONResponse(await anyio.to_thread.run_sync(_inputs, source))

    async def start(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        run = await anyio.to_thread.run_sync(play.start, body)
        return JSONResponse({"id": run.id, "events": f"/api/runs/{run.id}/events"})

    def _run(request: Request) -> Run | Response:
        run = play.runs.get(request.path_params["id"])
        return run if run is not None else JSONResponse({"error": "no such run"}, status_code=404)

    async def events(request: Request) -> Response:
        run = _run(request)
        if isinstance(run, Response):
            return run
        try:
            seen = int(request.headers.get("last-event-id", "-1")) + 1  # an EventSource that reconnects resumes
        except ValueError:
            seen = 0

        async def stream():
            nonlocal seen
            while True:
                new = await run.next_events(seen, 1.0)
                for event in new:
                    yield f"id: {seen}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
                    seen += 1
                    if event["type"] == "done":
                        return
                if not new:
                    yield ": waiting\n\n"  # a comment line: keeps proxies and the browser from timing out

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def status(request: Request) -> Response:
        run = _run(request)
        if isinstance(run, Response):
            return run
        return JSONResponse({"id": run.id, "state": run.state if not run.running else "running",
                             "events": len(run.events)})

    async def stop(request: Request) -> Response:
        run = _run(request)
        if isinstance(run, Response):
            return run
        await anyio.to_thread.run_sync(run.stop, 30)
        return JSONResponse({"id": run.id, "state": run.state})

    async def result(request: Request) -> Response:
        run = _run(request)
        if isinstance(run, Response):
            return run
        if run.running:
            return JSONResponse({"error": "the run has not finished"}, status_code=409)
        results = run.results()
        if not results:
            return JSONResponse({"error": f"the run ended without a result ({run.state})"}, status_code=404)
        several = any(e.get("type") == "result" and e.get("several") for e in run.events) or len(results) > 1
        return JSONResponse(results if several else results[0],
                            headers={"Content-Disposition": f'attachment; filename="run-{run.id}.json"'})

    routes = [
        Route("/", page),
        Route("/api/config", config),
        Route("/api/examples", examples),
        Route("/api/inputs", inputs, methods=["POST"]),
        Route("/api/run", start, methods=["POST"]),
        Route("/api/runs/{id}", status),
        Route("/api/runs/{id}/events", events),
        Route("/api/runs/{id}/stop", stop, methods=["POST"]),
        Route("/api/runs/{id}/result.json", result),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.playground = play
    return app


async def _body(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return JSONResponse({"error": "the request body is not JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "the request body is a JSON object"}, status_code=400)
    return body


LOOPBACK = ("127.0.0.1", "localhost", "::1")
REMOTE_WARNING = ("a .lmq file is a program: whoever can open the playground runs arbitrary Python on this "
                  "machine, as you")


def bind(host: str, port: int, *, allow_remote: bool = False):
    """A listening socket for the server; a clear LmqlError for a remote host not allowed or a busy port."""
    import errno
    import socket
    if host not in LOOPBACK and not allow_remote:
        raise QueryArgumentError(f"--host {host} would let other machines use the playground, and {REMOTE_WARNING}; "
                                 f"add --allow-remote if that is what you want")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise QueryArgumentError(f"port {port} on {host} is in use: pick another with --port N, "
                                     f"or --port 0 for a free one") from None
        raise QueryArgumentError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(64)
    return sock


def serve(file: str | None, *, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = True,
          allow_remote: bool = False) -> int:
    """`lmql-lite playground`: serve the page until Ctrl-C."""
    import sys
    import uvicorn
    preload = None
    if file is not None:
        preload = Path(file)
        if not preload.is_file():
            raise QueryArgumentError(f"no such query file: {file}")
    sock = bind(host, port, allow_remote=allow_remote)
    shown = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{shown}/"
    remote = host not in LOOPBACK
    if remote:
        print(f"warning: listening on {host}: {REMOTE_WARNING}", file=sys.stderr)
    print(f"lmql-lite playground on {url} (Ctrl-C to stop)", flush=True)
    app = create_app(Settings(preload=preload, remote=remote))
    # Ctrl-C: open event streams get two seconds, then the server ends, and so does a run in progress.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    if open_browser:
        import webbrowser
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.run(sockets=[sock])
    finally:
        for run in app.state.playground.runs.values():
            run.stop(wait=10)
    return 0
