"""The `lmql-lite` command: run a query file (streaming, JSON, batches of inputs) or check it without a model.

Exit codes: 0 success, 1 other lmql_lite error, 2 syntax error, 3 constraint error, 4 model error,
5 bad query argument, 6 error raised by the query's own Python, 7 timeout, 70 internal error,
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from typing import Any

from .errors import LmqlError, QueryArgumentError, QueryTimeoutError

INTERNAL_ERROR, INTERRUPTED = 70, 130


def main(argv: list[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        return _run(args)
    except LmqlError as e:
        _Printer.end_line()
        print(f"error: {e}" if e.line is None and not e.file else str(e), file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        _Printer.end_line()
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug of ours: say so plainly, show the traceback only on request
        if args.debug:
            traceback.print_exc()
        else:
            print(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


def _arguments() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmql-lite", description="Run LMQL-style queries on local language models.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a .lmq query")
    run.add_argument("file")
    run.add_argument("--model", help="a local model directory or hub id (default: the embedded SmolLM2-135M-Instruct)")
    run.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                     help="a query input (a string); NAME:=JSON passes a JSON value")
    run.add_argument("--json", action="store_true", help="print one JSON document instead of streaming text")
    run.add_argument("--seed", type=int, help="seed for sampling decoders")
    run.add_argument("--quiet", action="store_true", help="print only the query's return value (or nothing)")
    run.add_argument("--trace", action="store_true", help="print a per-token table after the run")
    run.add_argument("--timeout", type=float, help="stop the query after this many seconds (exit code 7)")
    run.add_argument("--no-color", action="store_true", help="no colours even on a terminal (also NO_COLOR=1)")
    run.add_argument("--inputs", help="a JSONL file of input rows: run the query once per row")
    run.add_argument("--batch-size", type=int, default=8, help="rows decoded together with --inputs (default 8)")
    run.add_argument("--output", help="with --inputs: append one JSON line per finished row to this file")
    run.add_argument("--resume", action="store_true", help="with --output: skip rows the file already holds")
    run.add_argument("--debug", action="store_true", help="show Python tracebacks")
    check = sub.add_parser("check", help="parse and statically check queries without loading a model")
    check.add_argument("files", nargs="+")
    check.add_argument("--debug", action="store_true", help="show Python tracebacks")
    return p


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
            print(str(e), file=sys.stderr)
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
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise LmqlSyntaxError("the file is not valid UTF-8", file=path, line=line, column=column) from None


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.rstrip(":").isidentifier():
            raise QueryArgumentError(f"--arg expects NAME=VALUE, got {pair!r}")
        if name.endswith(":"):
            try:
                inputs[name[:-1]] = json.loads(value)
            except json.JSONDecodeError as e:
                raise QueryArgumentError(f"--arg {name}=: not JSON: {e}") from None
        else:
            inputs[name] = value
    return inputs


class _Printer:
    """Streams prompt text and hole values to stdout; values in colour on a terminal."""

    line_open = False  # streamed text does not end with a newline yet

    def __init__(self, color: bool):
        self.color = color

    @classmethod
    def end_line(cls) -> None:
        """Finish a streamed line, so a message that follows starts on its own line."""
        if cls.line_open:
            sys.stdout.write("\n")
            sys.stdout.flush()
            cls.line_open = False

    def __call__(self, row: int, text: str, kind: str) -> None:
        if not text:
            return
        _Printer.line_open = not text.endswith("\n")
        if self.color and kind == "value":
            text = f"\x1b[1;32m{text}\x1b[0m"
        elif self.color and kind == "role":
            text = f"\x1b[2m{text}\x1b[0m"
        sys.stdout.write(text)
        sys.stdout.flush()


def _use_color(args) -> bool:
    return sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")


def _run(args) -> int:
    inputs = _parse_args(args.arg)
    source = _read_source(args.file)
    from . import checker, compiler, parser
    # the static checks come before `api`, which imports torch: such errors take no model load
    checker.first_problem(compiler.compile_query(parser.parse_cached(source, args.file)), inputs)
    from . import api
    program = api.load(source, filename=args.file)
    if args.timeout is not None:
        _arm_timeout(args.timeout)
    if args.inputs:
        return _run_rows(args, program, inputs)
    options = api.decoder_options(program, inputs, seed=args.seed)
    streaming = not (args.json or args.quiet) and options.n == 1
    printer = _Printer(_use_color(args)) if streaming else None
    result = api.run_compiled(program, inputs, model=args.model, seed=args.seed, on_text=printer, trace=args.trace)
    results = result if isinstance(result, list) else [result]
    if args.json:
        docs = [r.to_json() for r in results]
        print(json.dumps(docs if isinstance(result, list) else docs[0], ensure_ascii=False, indent=2))
        return 0
    if args.quiet:
        if results[0].value is not None:
            print(results[0].value if len(results) == 1 else [r.value for r in results])
        return 0
    if streaming:
        _Printer.end_line()
    else:
        for i, r in enumerate(results, 1):
            print(f"--- result {i} of {len(results)} (log-probability {r.logprob:.3f}) ---")
            print(r.prompt)
    for r in results:
        if r.distribution:
            _print_distribution(r)
        if r.value is not None and not args.quiet:
            print(f"→ {r.value!r}")
        for note in r.trace.notes:
            print(f"note: {note}", file=sys.stderr)
        if args.trace:
            _print_trace(r)
    return 0


def _print_distribution(result) -> None:
    width = max(len(repr(v)) for v in result.distribution)
    best = max(result.distribution, key=result.distribution.get)
    print("distribution:")
    for value, p in sorted(result.distribution.items(), key=lambda kv: -kv[1]):
        mark = "*" if value == best else " "
        bar = "█" * round(p * 30)
        print(f" {mark} {repr(value):<{width}}  {p:6.1%}  {bar}")


def _print_trace(result) -> None:
    t = result.trace
    print(f"trace: {t.forward_passes} forward passes, {t.tokens_fed} tokens through the model "
          f"({t.prompt_tokens} prompt, {t.generated_tokens} chosen, {t.forced_tokens} forced), "
          f"masks {t.mask_seconds * 1000:.1f} ms", file=sys.stderr)
    if t.tokens:
        print(f"{'variable':<12} {'token':<16} {'allowed':>8} {'how':<7} {'logprob':>8} {'ms':>8}", file=sys.stderr)
        for rec in t.tokens:
            print(f"{rec.variable:<12} {rec.text!r:<16} {rec.allowed:>8} {rec.how:<7} {rec.logprob:>8.3f} "
                  f"{rec.seconds * 1000:>8.1f}", file=sys.stderr)


def _arm_timeout(seconds: float) -> None:
    if seconds <= 0:
        raise QueryArgumentError(f"--timeout must be positive, got {seconds}")

    def expired(signum, frame):
        raise QueryTimeoutError(f"the query ran longer than --timeout {seconds:g} s")
    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _run_rows(args, program, shared: dict[str, Any]) -> int:
    from . import api
    rows = _read_rows(args.inputs)
    done: set[int] = set()
    if args.output and args.resume and os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["index"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut by a crash is redone
        _drop_cut_line(args.output)
    todo = [(i, {**shared, **row}) for i, row in enumerate(rows) if i not in done]
    out = open(args.output, "a" if args.resume else "w", encoding="utf-8") if args.output else sys.stdout
    progress = sys.stderr.isatty()
    try:
        finished = 0
        for k, result in api.run_batch(source_or_path=program.query.source, inputs=[r for _, r in todo],
                                       batch_size=args.batch_size, model=args.model, seed=args.seed,
                                       filename=program.filename):
            index, row = todo[k]
            doc = [r.to_json() for r in result] if isinstance(result, list) else result.to_json()
            out.write(json.dumps({"index": index, "input": row, "result": doc}, ensure_ascii=False) + "\n")
            out.flush()
            if out is not sys.stdout:
                os.fsync(out.fileno())
            finished += 1
            if progress:
                print(f"\r[{finished}/{len(todo)}] rows", end="", file=sys.stderr, flush=True)
    finally:
        if progress:
            print(file=sys.stderr)
        if out is not sys.stdout:
            out.close()
    return 0


def _drop_cut_line(path: str) -> None:
    """Remove a last line that a crash cut short, so appended rows start on a line of their own."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _read_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise QueryArgumentError(f"not JSON: {e.msg}", file=path, line=n, column=e.colno) from None
                if not isinstance(row, dict):
                    raise QueryArgumentError("each line must be a JSON object of inputs", file=path, line=n, column=1)
                rows.append(row)
    except OSError as e:
        raise QueryArgumentError(f"cannot read {path}: {e.strerror}") from None
    return rows
