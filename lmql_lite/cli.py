"""The `lmql-lite` command: run a query file (streaming, JSON, batches of inputs), check it without a model, or open the playground.

Exit codes: 0 success, 1 other lmql_lite error, 2 syntax error, 3 constraint error, 4 model error,
5 bad query or command-line argument, 6 error raised by the query's own Python, 7 timeout,
8 some rows of a batch failed (their error rows say why), 70 internal error, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any

from . import __version__, stops
from .errors import LmqlError, QueryArgumentError, QueryTimeoutError
from .options import MAX_SEED

INTERNAL_ERROR, INTERRUPTED, TERMINATED, ROWS_FAILED = 70, 130, 143, 8
TRACE_TOP = 3  # alternatives per token in the --trace table
# Writing stdout (or a cache) failed for a reason of the user's machine, not of ours.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
TIMED_OUT = QueryTimeoutError.exit_code


class _Terminated(BaseException):
    """SIGTERM, turned into an exception so the run ends like Ctrl-C: rows written whole, a one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit 2 is our "syntax error": say it as a bad argument
        self.print_usage(sys.stderr)
        raise QueryArgumentError(f"{self.prog}: {message}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except KeyboardInterrupt:  # wherever it lands: while running, entering, or inside a handler below
        _Printer.end_line()
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except _Terminated:
        _Printer.end_line()
        print("terminated", file=sys.stderr)
        return TERMINATED


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    with _quiet_libraries(debug), _terminate_on_sigterm():
        try:
            try:
                args = _arguments().parse_args(argv)
            except SystemExit as e:  # --help, --version
                return int(e.code or 0)
            code = {"check": _check, "playground": _playground, "cache": _cache}.get(args.command, _run)(args)
            sys.stdout.flush()
            return code
        except LmqlError as e:
            _Printer.end_line()
            print(_visible(f"error: {e}" if e.line is None and not e.file else str(e)), file=sys.stderr)
            if debug:
                traceback.print_exc()
            return e.exit_code
        except BrokenPipeError:
            _silence_stdout()
            return 0
        except Exception as e:  # a bug of ours: say so plainly, show the traceback only on request
            if isinstance(e, OSError) and e.errno in _DISK_ERRORS:  # stdout on a full disk: not a bug
                _silence_stdout()
                print(f"error: cannot write the output: {e.strerror}", file=sys.stderr)
                return LmqlError.exit_code
            if debug:
                traceback.print_exc()
            else:
                print(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
            return INTERNAL_ERROR


def _arguments() -> argparse.ArgumentParser:
    p = _Parser(prog="lmql-lite", description="Run LMQL-style queries on local language models.")
    p.add_argument("--version", action="version", version=f"lmql-lite {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a .lmq query")
    run.add_argument("file")
    run.add_argument("--model", help="a local model directory, a .gguf file, a hub id or a nanoGPT checkpoint "
                                     "(default: the embedded SmolLM2-135M-Instruct)")
    run.add_argument("--engine", choices=("auto", "transformers", "llama.cpp"),
                     help="what runs the model (default: LMQL_LITE_ENGINE, else auto: a .gguf file and the default "
                          "model on llama.cpp when it is installed, anything else on transformers)")
    run.add_argument("--device", help="where the model runs: auto (default: cuda, else mps, else cpu), cpu, "
                                      "cuda, cuda:N or mps (also LMQL_LITE_DEVICE)")
    run.add_argument("--dtype", choices=("auto", "float32", "float16", "bfloat16"),
                     help="the model's precision (default auto: float32 on the CPU, bfloat16 or float16 on a GPU; "
                          "also LMQL_LITE_DTYPE)")
    run.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                     help="a query input (a string); NAME:=JSON passes a JSON value")
    run.add_argument("--json", action="store_true",
                     help="print one JSON document (with per-variable log-probabilities) instead of streaming text")
    run.add_argument("--seed", type=int, help="seed for sampling decoders (0 to 2**64-1)")
    run.add_argument("--quiet", action="store_true", help="print only the query's return value, as JSON")
    run.add_argument("--trace", action="store_true",
                     help="print a per-token table after the run (with --json: a \"trace\" in the document)")
    run.add_argument("--no-speculate", dest="speculate", action="store_const", const=False, default=None,
                     help="decode one token per forward pass: no speculative drafts (docs/language.md)")
    run.add_argument("--timeout", type=float,
                     help="stop the whole run (model loading included) after this many seconds (exit code 7)")
    run.add_argument("--no-color", action="store_true", help="no colours even on a terminal (also NO_COLOR=1)")
    run.add_argument("--inputs", help="a JSONL file of input rows: run the query once per row")
    run.add_argument("--batch-size", type=int, default=8, help="rows decoded together with --inputs (default 8)")
    run.add_argument("--output", help="with --inputs: write one JSON line per finished row to this file "
                                      "(a new or empty file, unless --resume or --overwrite)")
    run.add_argument("--resume", action="store_true", help="with --output: keep the rows the file holds, run the others")
    run.add_argument("--retry-errors", action="store_true", help="with --resume: run the rows that failed again")
    run.add_argument("--overwrite", action="store_true", help="with --output: replace what the file holds")
    run.add_argument("--ray", nargs="?", const=True, metavar="ADDRESS",
                     help="with --inputs: run the rows on Ray workers, on a local cluster started for the run, or "
                          "on the cluster at ADDRESS ('auto', 'ray://host:10001'); needs pip install 'lmql_lite[ray]'")
    run.add_argument("--workers", type=int, help="with --ray: the number of workers, each with its own copy of the "
                                                 "model (default: one per node)")
    run.add_argument("--cache", metavar="DIR", help="keep the model's work in the run cache in DIR and replay it "
                     "(also LMQL_LITE_CACHE_RUNS=DIR, or =1 for the default folder; docs/cache.md)")
    run.add_argument("--no-cache", action="store_true", help="no run cache, whatever LMQL_LITE_CACHE_RUNS says")
    run.add_argument("--debug", action="store_true", help="show Python tracebacks and the libraries' log messages")
    check = sub.add_parser("check", help="parse and statically check queries without loading a model")
    check.add_argument("files", nargs="+")
    check.add_argument("--debug", action="store_true", help="show Python tracebacks")
    play = sub.add_parser("playground", help="a local web page that runs queries and shows every decoding step")
    play.add_argument("file", nargs="?", help="a .lmq file to open in the editor")
    play.add_argument("--port", type=int, default=8765, help="the port (default 8765; 0 picks a free one)")
    play.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    play.add_argument("--allow-remote", action="store_true",
                      help="allow a --host other machines can reach (they can run any Python here)")
    play.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    play.add_argument("--debug", action="store_true", help="show Python tracebacks")
    runs = sub.add_parser("cache", help="the run cache: what it holds, or empty it")
    runs.add_argument("action", choices=["info", "clear"])
    runs.add_argument("folder", nargs="?", metavar="DIR",
                      help="the cache folder (default: LMQL_LITE_CACHE_RUNS if it names one, else the user's cache)")
    runs.add_argument("--json", action="store_true", help="info as one JSON document")
    runs.add_argument("--debug", action="store_true", help="show Python tracebacks")
    return p


def _playground(args) -> int:
    try:
        from .playground import server
    except ImportError as e:
        raise LmqlError(f"the playground needs its extra: pip install 'lmql_lite[playground]' ({e})") from None
    return server.serve(args.file, host=args.host, port=args.port, open_browser=not args.no_browser,
                        allow_remote=args.allow_remote)


# ---- the process around a run -----------------------------------------------------------

@contextlib.contextmanager
def _quiet_libraries(debug: bool):
    """Keep third-party log lines and warnings (hub retries, advice for library developers) off the terminal."""
    if debug:
        yield
        return
    names = {"HF_HUB_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    saved_env = {k: os.environ.get(k) for k in names}
    for k, v in names.items():
        os.environ.setdefault(k, v)  # read by the libraries when they are first imported
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "transformers", "torch", "urllib3", "filelock", "ray")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # and for libraries already imported
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"lmql_lite")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _terminate_on_sigterm():
    """SIGTERM raises `_Terminated`, and Ctrl-C (where Python's own handler is in place) raises
    KeyboardInterrupt; both are noted in `stops`, so that one a finalizer swallowed is raised again.
    Whatever ends the command, nothing stays pending after it (a later run in the process is not stopped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        stops.note(_Terminated)
        raise _Terminated()

    def interrupted(signum, frame):
        stops.note(KeyboardInterrupt)
        raise KeyboardInterrupt
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminated)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        stops.clear()


def _silence_stdout() -> None:
    # The reader went away: point stdout at /dev/null so Python's final flush does not complain.
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _stuck(deadline) -> None:
    """The query kept running past --timeout by catching even the timeout: end the process here."""
    _Printer.end_line()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    os.write(2, f"error: {deadline.message}, and the query caught the timeout and kept running; "
                f"stopped\n".encode())
    os._exit(TIMED_OUT)


# ---- checking and reading what the user gave ----------------------------------------------

def _check(args) -> int:
    from . import checker, compiler, parser
    worst = 0
    for path in args.files:
        try:
            source = _read_source(path)
            problems = checker.check(compiler.compile_query(parser.parse_cached(source, path)))
        except LmqlError as e:
            problems = [e]
        for e in problems:
            print(_visible(str(e)), file=sys.stderr)
            worst = worst or e.exit_code
        if not problems:
            print(f"{path}: ok")
    return worst


def _read_source(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise QueryArgumentError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        from .errors import LmqlSyntaxError
        line, column = _position(data, e.start)
        raise LmqlSyntaxError("the file is not valid UTF-8", file=path, line=line, column=column) from None


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column), both 1-based, of byte `offset` in `data`."""
    return data[:offset].count(b"\n") + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.rstrip(":").isidentifier():
            raise QueryArgumentError(f"--arg expects NAME=VALUE, got {_visible(repr(pair))}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # bytes that are not UTF-8 reach us as lone surrogates
            raise QueryArgumentError(f"--arg {name}: the value is not valid UTF-8 (at character {e.start + 1})") from None
        if name.endswith(":"):
            try:
                inputs[name[:-1]] = json.loads(value)
            except json.JSONDecodeError as e:
                raise QueryArgumentError(f"--arg {name}=: not JSON: {e}") from None
        else:
            inputs[name] = value
    return inputs


def _check_options(args) -> None:
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise QueryArgumentError(f"--seed must be from 0 to 2**64-1, got {args.seed}")
    if args.batch_size < 1:
        raise QueryArgumentError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.timeout is not None:
        from .deadline import check_seconds
        check_seconds(args.timeout, "--timeout")
    for flag, needs in (("output", "inputs"), ("resume", "output"), ("overwrite", "output"),
                        ("retry_errors", "resume"), ("ray", "inputs"), ("workers", "ray")):
        if getattr(args, flag) and not getattr(args, needs):
            raise QueryArgumentError(f"--{flag.replace('_', '-')} needs --{needs}")
    if args.resume and args.overwrite:
        raise QueryArgumentError("--resume keeps the rows --output holds and --overwrite replaces them: choose one")
    if args.workers is not None and args.workers < 1:
        raise QueryArgumentError(f"--workers must be at least 1, got {args.workers}")
    if args.ray:
        from .ray_batch import import_ray
        import_ray()  # without ray installed: say how to install it before any work
    if args.cache is not None and args.no_cache:
        raise QueryArgumentError("--cache keeps the model's work and --no-cache keeps none: choose one")


# ---- showing text safely ------------------------------------------------------------------

# Control characters a model may write that a terminal would act on (ESC sequences, a carriage
# return that overwrites the line, C1 controls, bidirectional overrides that reorder text).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def _visible(text: str) -> str:
    """`text` for a terminal: control characters written as escapes (\\x1b), newlines and tabs kept."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def _dumps(doc: Any, **kwargs) -> str:
    """JSON text whose strings are exact and still safe to show (json escapes the C0 controls; we escape the rest)."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(doc, ensure_ascii=False, **kwargs))


class _Printer:
    """Streams prompt text and hole values to stdout (values in colour on a terminal), and keeps each row's text.

    With `tokens` (a terminal), a value appears token by token as it is decoded (token events'
    `shown` text); when its final text differs from what was shown (a stop phrase cut or dropped,
    a decorator), the shown part is erased and the final text written in its place.
    """

    line_open = False  # streamed text does not end with a newline yet

    def __init__(self, color: bool, show: bool, tokens: bool = False):
        self.color = color
        self.show = show
        self.tokens = tokens
        self.texts: dict[int, list[str]] = {}
        self.holes: dict[int, str] = {}  # each row's value shown so far, token by token

    @classmethod
    def end_line(cls) -> None:
        """Finish a streamed line, so a message that follows starts on its own line."""
        if cls.line_open:
            cls.line_open = False
            with contextlib.suppress(OSError):
                sys.stdout.write("\n")
                sys.stdout.flush()

    def text(self, row: int) -> str:
        """What was printed of `row`."""
        return "".join(self.texts.get(row, [])) + self.holes.get(row, "")

    def event(self, event) -> None:
        """An event of the run (events.py): a token's text is shown as it comes."""
        if self.show and event.type == "token" and event.shown:
            self.holes[event.row] = self.holes.get(event.row, "") + event.shown
            self._write(event.shown, "value")

    def __call__(self, row: int, text: str, kind: str) -> None:
        shown = self.holes.pop(row, "")
        if shown and kind == "value":  # the hole's final text: write what was not shown yet
            if not text.startswith(shown):
                self._erase("".join(self.texts.get(row, [])), shown, text)
                shown = _common_prefix(shown, text)
            self.texts.setdefault(row, []).append(text)
            if self.show:
                self._write(text[len(shown):], kind)
            return
        if not text:
            return
        self.texts.setdefault(row, []).append(text)
        if self.show:
            self._write(text, kind)

    def _write(self, text: str, kind: str) -> None:
        if not text:
            return
        _Printer.line_open = not text.endswith("\n")
        text = _visible(text)
        if self.color and kind == "value":
            text = f"\x1b[1;32m{text}\x1b[0m"
        elif self.color and kind == "role":
            text = f"\x1b[2m{text}\x1b[0m"
        sys.stdout.write(text)
        sys.stdout.flush()

    def _erase(self, before: str, shown: str, final: str) -> None:
        """Take back the part of `shown` that `final` does not start with (the cursor goes back to where they part)."""
        keep = _common_prefix(shown, final)
        gone = shown[len(keep):]
        line = (before + keep).rsplit("\n", 1)[-1]
        up = gone.count("\n")
        sys.stdout.write("\r" + (f"\x1b[{up}A" if up else "") + (f"\x1b[{len(line)}C" if line else "") + "\x1b[J")


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _use_color(args) -> bool:
    return sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")


# ---- one run ------------------------------------------------------------------------------

def _run(args) -> int:
    _check_options(args)
    inputs = _parse_args(args.arg)
    limit = contextlib.nullcontext()
    if args.timeout is not None:
        from .deadline import Deadline
        limit = Deadline(args.timeout, label="--timeout", on_stuck=lambda: _stuck(limit))
    printer = _Printer(_use_color(args), show=False)
    try:
        with limit:  # parsing, model loading and decoding all count
            source = _read_source(args.file)
            batch = _read_rows(args.inputs) if args.inputs else None
            given = set(inputs).union(*(row for row in batch[1])) if batch else set(inputs)
            from . import checker, compiler, parser
            # the static checks come before `api`, which imports torch: such errors take no model load
            checker.first_problem(compiler.compile_query(parser.parse_cached(source, args.file)), given)
            from . import api
            program = api.load(source, filename=args.file)
            if batch is not None:
                return _run_rows(args, program, inputs, batch)
            options = api.decoder_options(program, inputs, seed=args.seed, speculate=args.speculate)
            printer.show = not (args.json or args.quiet) and options.n == 1
            printer.tokens = printer.show and sys.stdout.isatty()  # a pipe gets each value whole
            watch = printer.tokens or args.trace
            result = api.run_compiled(program, inputs, model=args.model, seed=args.seed, speculate=args.speculate, on_text=printer,
                                      engine=args.engine, device=args.device, dtype=args.dtype,
                                      trace=args.trace, events=printer.event if watch else None,
                                      detail=TRACE_TOP if args.trace else 0, cache=_cache_setting(args))
    except (QueryTimeoutError, KeyboardInterrupt) as e:
        if not args.inputs:  # keep what was decoded: streamed already, or printed now
            _show_partial(args, printer, e)
        raise
    _show(args, result, printer.show)
    return 0


def _cache_setting(args):
    """`--no-cache` (False), `--cache DIR`, or None: LMQL_LITE_CACHE_RUNS decides."""
    return False if args.no_cache else args.cache


def _cache(args) -> int:
    """`lmql-lite cache info|clear [DIR]`."""
    from . import runcache
    folder = args.folder
    if folder is None:
        setting = runcache.from_setting(None)
        folder = setting.folder if setting is not None else runcache.default_folder()
    store = runcache.RunCache(folder)
    if args.action == "clear":
        try:
            removed = store.clear()
        except OSError as e:
            raise LmqlError(str(e)) from None
        print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} from {store.path}")
        return 0
    info = store.info()
    store.close()
    if args.json:
        print(_dumps(info, indent=2))
        return 0
    print(f"location:  {info['location']}{'' if Path(info['location']).exists() else ' (not created yet)'}")
    print(f"entries:   {info['entries']}")
    print(f"bytes:     {info['bytes']:,} in entries, {info['file_bytes']:,} on disk "
          f"(bound {info['max_bytes']:,}, least recently used out first)")
    print(f"hits:      {info['hits']}")
    return 0


def _show_partial(args, printer: _Printer, error: BaseException) -> None:
    """What the rows had decoded when the run stopped: streamed already, or printed now."""
    decoded = getattr(error, "decoded", None) or [printer.text(r) for r in sorted(printer.texts)]
    if printer.show:
        streamed = printer.text(0)
        if decoded and decoded[0].startswith(streamed):  # the hole being decoded, as far as it got
            printer(0, decoded[0][len(streamed):], "value")
        _Printer.end_line()
        return
    if not isinstance(error, LmqlError):  # Ctrl-C: the text, and main's one line
        if not args.json and not args.quiet:
            for text in decoded:
                print(_visible(text))
        return
    if args.json:
        docs = [{"prompt": text, "error": _error_doc(error)} for text in decoded] or [{"error": _error_doc(error)}]
        print(_dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    elif not args.quiet:
        for r, text in enumerate(decoded, 1):
            print(f"--- result {r} of {len(decoded)}, stopped (decoded so far) ---")
            print(_visible(text))


def _show(args, result, streamed: bool) -> None:
    results = result if isinstance(result, list) else [result]
    if args.json:
        docs = [_result_doc(r, args.trace) for r in results]
        print(_dumps(docs if isinstance(result, list) else docs[0], indent=2))
        return
    if args.quiet:
        values = [r.to_json()["value"] for r in results]
        print(_dumps(values if isinstance(result, list) else values[0]))
        if args.trace:
            for r in results:
                _print_trace(r)
        return
    if streamed:
        _Printer.end_line()
    else:
        for i, r in enumerate(results, 1):
            print(f"--- result {i} of {len(results)} (log-probability {r.logprob:.3f}) ---")
            print(_visible(r.prompt))
    for r in results:
        if r.distribution:
            _print_distribution(r)
        if r.value is not None:
            print(f"→ {r.value!r}")
        for note in r.trace.notes:  # a value cut by a budget or max_len, dim after the value
            note = _visible(f"note: {note}")
            print(f"\x1b[2m{note}\x1b[0m" if _use_color(args) else note, file=sys.stderr)
        if args.trace:
            _print_trace(r)


def _result_doc(result, trace: bool) -> dict:
    """A result as JSON: prompt, variables, distribution, value, and the log-probabilities of each variable."""
    doc = result.to_json()
    doc["logprobs"] = dict(result.logprobs)
    doc["logprob"] = result.logprob
    if trace:
        t = result.trace
        doc["trace"] = {
            "forward_passes": t.forward_passes, "tokens_fed": t.tokens_fed, "prompt_tokens": t.prompt_tokens,
            "generated_tokens": t.generated_tokens, "forced_tokens": t.forced_tokens, "cached_tokens": t.cached_tokens,
            "mask_seconds": t.mask_seconds, "drafted_tokens": t.drafted_tokens,
            "accepted_tokens": t.accepted_tokens, "rejected_tokens": t.rejected_tokens, "notes": list(t.notes),
            "tokens": [{"variable": r.variable, "token": r.token, "text": r.text, "allowed": r.allowed,
                        "how": r.how, "logprob": r.logprob, "seconds": r.seconds} for r in t.tokens or []]}
    return doc


def _error_doc(error: LmqlError, inputs: str | None = None, line: int | None = None) -> dict:
    doc: dict[str, Any] = {"type": type(error).__name__, "message": error.message, "exit_code": error.exit_code}
    if inputs is not None:
        doc["inputs"] = {"file": inputs, "line": line}
    if error.file or error.line is not None:
        doc["query"] = {"file": error.file, "line": error.line, "column": error.column}
    return doc


def _print_distribution(result) -> None:
    width = max(len(repr(v)) for v in result.distribution)
    best = max(result.distribution, key=result.distribution.get)
    print("distribution:")
    for value, p in sorted(result.distribution.items(), key=lambda kv: -kv[1]):
        mark = "*" if value == best else " "
        bar = "█" * round(p * 30)
        print(f" {mark} {repr(value):<{width}}  {p:6.1%}  {bar}")


def _print_trace(result) -> None:
    """The run's counts, and a table of the result's token events (p, p_raw, mask size, how, time, alternatives)."""
    t = result.trace
    print(f"trace: {t.forward_passes} forward passes, {t.tokens_fed} tokens through the model "
          f"({t.prompt_tokens} prompt, {t.generated_tokens} chosen, {t.forced_tokens} forced"
          + (f"; {t.cached_tokens} of them replayed from the run cache" if t.cached_tokens else "")
          + f"), masks {t.mask_seconds * 1000:.1f} ms"
          + (f", drafts {t.drafted_tokens} tokens ({t.accepted_tokens} accepted, {t.rejected_tokens} rejected)"
             if t.drafted_tokens else ""), file=sys.stderr)
    tokens = [e for e in t.events or [] if e.type == "token"]
    if not tokens:
        return
    print(f"{'variable':<12} {'token':<16} {'how':<7} {'p':>7} {'p_raw':>7} {'allowed':>13} {'ms':>7}  "
          f"top (x: masked out)", file=sys.stderr)
    for e in tokens:
        p = "" if e.p is None else f"{e.p:.3f}"
        p_raw = "" if e.p_raw is None else f"{e.p_raw:.3f}"
        top = ", ".join(f"{a.text!r} {a.p_raw:.2f}{'' if a.allowed else ' x'}" for a in e.top if a.id != e.id)
        print(_visible(f"{e.hole:<12} {e.text!r:<16} {e.how:<7} {p:>7} {p_raw:>7} {f'{e.allowed}/{e.vocab}':>13} "
                       f"{e.ms:>7.1f}  {top}"), file=sys.stderr)


# ---- batches ------------------------------------------------------------------------------

def _run_rows(args, program, shared: dict[str, Any], batch: tuple[list[int], list[dict[str, Any]]]) -> int:
    from tqdm import tqdm

    from . import api
    lines, rows = batch
    out = _Output(args.output, resume=args.resume, overwrite=args.overwrite, retry=args.retry_errors,
                  rows=len(rows)) if args.output else None
    try:
        done = out.done if out else {}
        failed_before = sum(1 for i, ok in done.items() if not ok)
        if done:
            print(f"{args.output}: {len(done)} rows already done"
                  + (f" ({failed_before} failed; --retry-errors runs them again)" if failed_before else "")
                  + f", {len(rows) - len(done)} to go", file=sys.stderr)
        todo = [(i, {**shared, **row}) for i, row in enumerate(rows) if i not in done]
        ok = failed = 0
        bar = tqdm(total=len(rows), initial=len(done), unit="row", file=sys.stderr, disable=None,
                   dynamic_ncols=True, desc="rows")
        try:
            for k, outcome in api.run_batch(program.query.source, [r for _, r in todo], batch_size=args.batch_size,
                                            model=args.model, seed=args.seed, filename=program.filename,
                                            return_errors=True, engine=args.engine, device=args.device,
                                            dtype=args.dtype, ray=args.ray, workers=args.workers,
                                            cache=_cache_setting(args), speculate=args.speculate):
                index, row = todo[k]
                if isinstance(outcome, LmqlError):
                    failed += 1
                    line = {"index": index, "input": row, "error": _error_doc(outcome, args.inputs, lines[index])}
                    bar.write(_visible(f"{args.inputs}:{lines[index]}: row {index} failed: {outcome}"), file=sys.stderr)
                else:
                    ok += 1
                    docs = [_result_doc(r, args.trace) for r in outcome] if isinstance(outcome, list) \
                        else _result_doc(outcome, args.trace)
                    line = {"index": index, "input": row, "result": docs}
                text = _dumps(line)
                if out is not None:
                    out.write(text)
                else:
                    bar.write(text, file=sys.stdout)
                    sys.stdout.flush()
                bar.update(1)
                stops.check()  # a signal a finalizer swallowed ends the run here, the row written whole
        finally:
            bar.close()
            left = len(todo) - ok - failed
            print(f"{len(rows)} rows: {ok} ok, {failed} failed"
                  + (f", {len(done)} done before" if done else "")
                  + (f", {left} not run (--resume continues)" if left and out else f", {left} not run" if left else ""),
                  file=sys.stderr)
    finally:
        if out is not None:
            out.close()
    return ROWS_FAILED if failed or failed_before else 0


def _read_rows(path: str) -> tuple[list[int], list[dict[str, Any]]]:
    """The input rows of a JSONL file, and the line each came from."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise QueryArgumentError(f"--inputs {path} is a folder, not a JSONL file") from None
    except OSError as e:
        raise QueryArgumentError(f"cannot read --inputs {path}: {e.strerror}") from None
    lines, rows = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise QueryArgumentError("not valid UTF-8", file=path, line=n, column=e.start + 1) from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise QueryArgumentError(f"not JSON: {e.msg}", file=path, line=n, column=e.colno) from None
        if not isinstance(row, dict):
            raise QueryArgumentError("each line must be a JSON object of inputs", file=path, line=n, column=1)
        lines.append(n)
        rows.append(row)
    return lines, rows


class _Output:
    """The --output file of a batch: locked for this run, rows appended whole, what it held (for --resume).

    `done` maps the index of every row the file holds to whether it succeeded.
    """

    def __init__(self, path: str, *, resume: bool, overwrite: bool, retry: bool, rows: int):
        import fcntl
        import stat
        self.path = path
        self.fd = self._open(path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise QueryArgumentError(f"another run is writing --output {path} (it holds the file's lock); "
                                     "wait for it to finish or choose another file") from None
        self.done: dict[int, bool] = {}
        info = os.fstat(self.fd)
        self.regular = stat.S_ISREG(info.st_mode)
        if not self.regular or info.st_size == 0:
            return
        if overwrite:
            os.ftruncate(self.fd, 0)
        elif resume:
            self._resume(retry, rows)
        else:
            self.close()
            raise QueryArgumentError(f"--output {path} already holds rows: pass --resume to keep them and run "
                                     "the others, or --overwrite to replace them")

    @staticmethod
    def _open(path: str) -> int:
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        except IsADirectoryError:
            raise QueryArgumentError(f"--output {path} is a folder: name a file (in it)") from None
        except FileNotFoundError:
            folder = os.path.dirname(path) or "."
            raise QueryArgumentError(f"--output {path}: there is no folder {folder}") from None
        except OSError as e:
            raise QueryArgumentError(f"cannot write --output {path}: {e.strerror}") from None

    def _read(self) -> bytes:
        chunks, offset = [], 0
        while chunk := os.pread(self.fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def _resume(self, retry: bool, rows: int) -> None:
        data = self._read()
        *complete, tail = data.split(b"\n")
        keep, dropped = [], 0
        for n, raw in enumerate(complete, 1):
            index, ok = _row_of(raw, rows)
            if index is None:
                if raw.strip():
                    print(f"{self.path}:{n}: not a row of this run; left as it is", file=sys.stderr)
                keep.append(raw)
            elif not ok and retry:
                dropped += 1
            else:
                self.done.setdefault(index, ok)
                keep.append(raw)
        if tail:
            index, ok = _row_of(tail, rows)
            if index is not None and not (retry and not ok):
                self.done.setdefault(index, ok)  # a whole row that lost only its newline
                keep.append(tail)
            else:
                print(f"{self.path}: the last line was cut short by an interrupted run; its row runs again",
                      file=sys.stderr)
                dropped += 1
        if dropped:
            self._replace(b"".join(line + b"\n" for line in keep))
        elif tail:
            self._write_all(b"\n")

    def _replace(self, content: bytes) -> None:
        """Put `content` in place of the file: written to a locked new file first, then renamed over it."""
        import fcntl
        temporary = f"{self.path}.tmp-{os.getpid()}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            old, self.fd = self.fd, fd
            self._write_all(content)
            os.replace(temporary, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        os.close(old)

    def write(self, line: str) -> None:
        """Append one row (a line of JSON), whole: signals wait until it is on disk."""
        self._write_all(line.encode("utf-8") + b"\n")

    def _write_all(self, data: bytes) -> None:
        held = {signal.SIGALRM, signal.SIGINT, signal.SIGTERM}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            size = os.fstat(self.fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
                if self.regular:
                    os.fsync(self.fd)
            except OSError as e:
                if self.regular:
                    with contextlib.suppress(OSError):
                        os.ftruncate(self.fd, size)  # no half row left behind
                raise LmqlError(f"cannot write a row to {self.path}: {e.strerror}; the rows before it are "
                                "saved, and --resume continues from there") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _row_of(raw: bytes, rows: int) -> tuple[int | None, bool]:
    """(index, succeeded) of an output line that is a row of a run over `rows` inputs; (None, False) otherwise."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None, False
    if not isinstance(doc, dict) or not ("result" in doc or "error" in doc):
        return None, False
    index = doc.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < rows:
        return None, False
    return index, "error" not in doc
