"""The Python entry points: run a query, make a query function, choose a model."""
from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
import inspect
import os
import difflib
import re
import textwrap
from typing import Any, Callable, Iterable, Iterator

from . import checker, compiler, parser, streaming
from . import events as events_
from . import options as options_table
from .deadline import Deadline
from .errors import LmqlError, ModelError, QueryArgumentError
from .index import TokenIndex
from .interpreter import run_program
from .llm import LLM, ScoringResult
from .options import IGNORED_OPTIONS, DecoderOptions
from .result import Result as _Result

_indexes: dict[int, tuple[Any, TokenIndex]] = {}
_programs: dict[tuple[str, str], compiler.Program] = {}
_current_model: contextvars.ContextVar = contextvars.ContextVar("lmql_lite_model", default=None)
_default_model: list[Any] = [None]

# Keywords a run takes besides the query's inputs: the decoder and its options (as LMQL names them).
DECODER_KEYWORDS = frozenset({"decoder", "n", "temperature", "top_k", "top_p", "seed", "max_len", "max_tokens",
                              "healing", "speculate"})
# Keywords about what runs the model and where (see `models.choose_engine`, `models.placement`),
# passed on to `lmql_lite.model(...)`.
MODEL_KEYWORDS = frozenset({"engine", "device", "dtype"})
# LMQL keywords about its API batching and console output: accepted, and mean nothing here.
IGNORED_KEYWORDS = frozenset({"chunksize", "openai_chunksize", "output_writer", "verbose"})
# Keywords about the run itself: `cache=` is the run cache (a folder, True for the default one, False: none).
RUN_KEYWORDS = frozenset({"cache"})
_SAMPLING = ("temperature", "top_k", "top_p")
_SHARED = ("max_len", "max_tokens", "healing", "speculate", "seed")


def model(name: str | None = None, **options: Any) -> LLM:
    """A model handle (loaded on first use, once per process): a local directory, a hub id in the
    local cache, a .gguf file, a nanoGPT checkpoint, `local:NAME`, `random` (with `seed=`), or None
    for the embedded default; `engine=` (auto, transformers, llama.cpp) and `threads=` say what runs
    it, `device=` (auto, cpu, cuda, cuda:N, mps) and `dtype=` (auto, float32, float16, bfloat16)
    where and in what precision."""
    return LLM(name, **options)


def set_default_model(m: Any) -> None:
    """The model of every query that names none (LMQL's `lmql.set_default_model`); None restores the default."""
    _default_model[0] = m


def get_default_model() -> Any:
    return _default_model[0]


def _loaded(m: Any):
    return m.load() if isinstance(m, LLM) else m


def _index(m) -> TokenIndex:
    """The model's token index, built once per process; a large vocabulary's trie is also kept on
    disk (in the model cache's `index` folder), so a new process loads it instead of building it."""
    entry = _indexes.get(id(m))
    if entry is None or entry[0] is not m:
        from .cache import cache_root
        disk = cache_root() / "index" if len(m.vocabulary) >= 4096 else None
        entry = _indexes[id(m)] = (m, TokenIndex(m.vocabulary, cache_dir=disk))
    return entry[1]


def load(source_or_path: str, filename: str | None = None) -> compiler.Program:
    """Parse and compile a query (text, or a path to a .lmq/.lmql file); compiled queries are cached."""
    source, filename = _read(source_or_path, filename)
    key = (filename, source)
    program = _programs.get(key)
    if program is None:
        # A query file (not text made in Python: "<query>", "<F>", ...) is also cached on disk.
        parse = parser.parse if filename.startswith("<") else parser.parse_cached
        program = _programs[key] = compiler.compile_query(parse(source, filename))
    return program


QUERY_SUFFIXES = (".lmq", ".lmql")


def _read(source_or_path: str, filename: str | None) -> tuple[str, str]:
    if not isinstance(source_or_path, str):
        raise QueryArgumentError(f"a query is text or a path to a .lmq file, got {type(source_or_path).__name__}")
    looks_like_path = "\n" not in source_or_path and source_or_path.strip().endswith(QUERY_SUFFIXES)
    if looks_like_path:
        path = source_or_path.strip()
        try:
            with open(path, encoding="utf-8") as f:
                return f.read(), filename or path
        except FileNotFoundError:
            raise QueryArgumentError(f"no such query file: {path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise QueryArgumentError(f"cannot read {path}: {e}") from None
    return query_text(source_or_path), filename or "<query>"


def query_text(text: str) -> str:
    """A query written inside Python as LMQL's docs write it: an optional first line `lmql` is
    blanked (so lines keep their numbers); indentation is the parser's to handle."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].strip() == "lmql":
        lines[first] = ""
    out = "\n".join(lines)
    return out if out.endswith("\n") else out + "\n"


def decoder_options(program: compiler.Program, inputs: dict[str, Any], **overrides: Any) -> DecoderOptions:
    """The decoder clause's options, evaluated with the query's inputs, then `overrides` (None ones ignored).

    `name=` (or `decoder=`) overrides the decoder; sampling options given with no decoder named
    anywhere select `sample`. An option the chosen decoder does not take is an error.
    """
    decoder = program.query.decoder
    checker.first_problem(program, inputs)  # `lmql-lite check`'s rules, before any model loads
    fields: dict[str, Any] = {}
    if decoder is not None:
        fields["name"] = decoder.name
        values = [_evaluate(program, e, inputs) for e in decoder.args]
        if values:
            fields["n"] = values[0]
        for key, expr in decoder.kwargs:
            if key in IGNORED_OPTIONS:
                continue  # LMQL's API-batching, logging and caching options mean nothing for a local model
            fields[key] = _evaluate(program, expr, inputs)
    given = {k: v for k, v in overrides.items() if v is not None and k not in IGNORED_KEYWORDS}
    if "decoder" in given:
        given["name"] = given.pop("decoder")
    if "name" in given:
        given["name"] = _decoder_name(given["name"], program)
    elif decoder is None and (any(k in given for k in _SAMPLING) or given.get("n", 1) > 1):
        given["name"] = "sample"
    row = options_table.decoder(given.get("name", fields.get("name", "argmax")))
    name = row.name if row is not None else fields.get("name")
    for key in given:
        if row is None or key in ("name", "seed") or (key == "n" and given[key] == 1):
            continue
        if key not in row.options | options_table.SHARED_OPTIONS:
            hint = " (pass decoder='sample')" if key in _SAMPLING or key == "n" else ""
            raise QueryArgumentError(f"decoder {name} takes no option {key}{hint}", file=program.filename)
    fields.update(given)
    try:
        return DecoderOptions(**fields)
    except TypeError as e:
        raise QueryArgumentError(f"bad decoder options: {e}", file=program.filename) from None


def _decoder_name(name: Any, program: compiler.Program) -> str:
    row = options_table.decoder(name) if isinstance(name, str) else None
    if row is None:
        hint = difflib.get_close_matches(str(name), sorted(options_table.NAMES), 1)
        known = ", ".join(d.name for d in options_table.DECODERS)
        raise QueryArgumentError(f"unknown decoder {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else
                                 f" (known: {known})"), file=program.filename)
    return row.name


def _evaluate(program: compiler.Program, expr, inputs: dict[str, Any]) -> Any:
    import builtins
    try:
        return eval(compile(compiler.as_expression(program.query, expr), program.filename, "eval"),
                    {"__builtins__": builtins, **_namespace()}, dict(inputs))
    except LmqlError:
        raise
    except Exception as e:
        raise QueryArgumentError(f"cannot evaluate {expr.source.strip()}: {type(e).__name__}: {e}",
                                 file=program.filename, line=expr.pos.line, column=expr.pos.column,
                                 source_line=program.source_line(expr.pos.line)) from None


def resolve_model(program: compiler.Program, inputs: dict[str, Any], model_arg: Any = None,
                  placement: dict[str, Any] | None = None):
    """The model a run uses: `model=` / --model, then the query's `from`, then the model of the
    enclosing query, `set_default_model`, LMQL_LITE_MODEL, and last the embedded default.
    `placement` (`engine=`, `device=`, `dtype=`; None ones ignored) joins the options of the model so chosen."""
    placement = {k: v for k, v in (placement or {}).items() if v is not None}
    if model_arg is not None and not isinstance(model_arg, str):
        return _loaded(_placed(model_arg, placement))
    name = model_arg
    if name is None and program.query.model is not None:
        name = _evaluate(program, program.query.model, inputs)
        if name is not None and not isinstance(name, str):
            return _loaded(_placed(name, placement))
    if name is None:
        current = _current_model.get()
        if current is not None and not placement:
            return current
        if _default_model[0] is not None:
            chosen = _default_model[0]
            return _loaded(_placed(model(chosen) if isinstance(chosen, str) else chosen, placement))
        name = os.environ.get("LMQL_LITE_MODEL") or None
    return _loaded(model(name, **placement))


def _placed(m: Any, placement: dict[str, Any]) -> Any:
    """The model handle `m` with `placement` among its options."""
    if not placement:
        return m
    if isinstance(m, LLM):
        return LLM(m.model_identifier, **{**m.configuration, **placement})
    raise QueryArgumentError(f"{', '.join(f'{k}=' for k in placement)} choose where a model loads: name the model "
                             f"(a string, or lmql_lite.model(name, ...)), not one already loaded ({type(m).__name__})")


def _starts(program: compiler.Program, rows: list[dict[str, Any]], scope: dict[str, Any] | None = None):
    namespace = {**_namespace(), **(scope or {})}
    starts = []
    for inputs in rows:
        checker.check_inputs(program, {**namespace, **inputs})
        fn = program.function(tuple(sorted(inputs)), namespace)
        starts.append((functools.partial(fn, **inputs), program))
    return starts


def _namespace() -> dict[str, Any]:
    """Names every query sees: the package under both spellings, and LMQL's `context`."""
    import lmql_lite
    from . import runtime
    return {"lmql": lmql_lite, "lmql_lite": lmql_lite, "context": runtime.context}


class Result(_Result):
    """A query's result, with LMQL's `LMQLResult` names too; `await` on it gives what LMQL's
    `await lmql.run(...)` gives: the query's return value, or the result itself when there is none."""

    distribution_variable: str | None = None

    @property
    def distribution_values(self) -> list[Any] | None:
        return None if self.distribution is None else list(self.distribution)

    def __await__(self):
        return _now(_outcome(self))


class Results(list):
    """Several results (sampling, beam search); awaitable like a single `Result`."""

    def __await__(self):
        return _now(_outcome(self))


def _now(value: Any):
    yield from ()
    return value


def _outcome(result: Any) -> Any:
    """What LMQL returns for a run: the return value where there is one, else the result."""
    if isinstance(result, list):
        return [_outcome(r) for r in result]
    return result.value if result.value is not None else result


def _lmql_result(result: _Result, program: compiler.Program) -> Result:
    out = Result(**{f: getattr(result, f) for f in result.__dataclass_fields__})
    d = program.query.distribution
    if d is not None and result.distribution is not None:
        out.distribution_variable = d.var
        out.variables = {**result.variables, f"P({d.var})": list(result.distribution.items())}
    return out


def _bind(program: compiler.Program, args: tuple, kwargs: dict[str, Any], what: str,
          inputs: Iterable[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(query inputs, decoder options) from a call's arguments: positional ones fill the query's
    inputs in the order they first appear; a keyword is an input if the query reads it, else a
    decoder option, else an error with a suggestion."""
    names = list(inputs) if inputs is not None else input_order(program)
    if len(args) > len(names):
        raise QueryArgumentError(f"{what} takes {len(names)} positional argument{'s' if len(names) != 1 else ''} "
                                 f"({', '.join(names) or 'the query reads no inputs'}), got {len(args)}",
                                 file=program.filename)
    bound = dict(zip(names, args))
    options: dict[str, Any] = {}
    readable = set(names) | set(program.inputs) | _clause_names(program)
    for key, value in kwargs.items():
        if key in bound:
            raise QueryArgumentError(f"{what} got two values for {key}", file=program.filename)
        if key in readable:
            bound[key] = value
        elif key in DECODER_KEYWORDS or key in IGNORED_KEYWORDS or key in MODEL_KEYWORDS or key in RUN_KEYWORDS:
            options[key] = value
        else:
            known = sorted(readable | DECODER_KEYWORDS | MODEL_KEYWORDS)
            hint = difflib.get_close_matches(key, known, 1)
            raise QueryArgumentError(
                f"{what}: unknown argument {key}: the query reads no {key} and it is no decoder option"
                + (f"; did you mean {hint[0]}?" if hint else
                   f" (inputs: {', '.join(sorted(readable)) or 'none'}; options: {', '.join(sorted(DECODER_KEYWORDS))})"),
                file=program.filename)
    return bound, options


def _clause_names(program: compiler.Program) -> set[str]:
    """Names the decoder clause and the `from` clause read (`argmax(n=n)`, `from m`): inputs too."""
    query = program.query
    exprs = [query.model] if query.model is not None else []
    if query.decoder is not None:
        exprs += list(query.decoder.args) + [e for _, e in query.decoder.kwargs]
    names: set[str] = set()
    for expr in exprs:
        try:
            tree = ast.parse(expr.source.strip(), mode="eval")
        except SyntaxError:
            continue
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    return names - {"lmql", "lmql_lite"}


def input_order(program: compiler.Program) -> list[str]:
    """The query's inputs in the order they first appear in its text (walked once per compiled query)."""
    if program._input_order is None:
        wanted = set(program.inputs)
        seen: dict[str, tuple[int, int]] = {}
        for node in ast.walk(program.module):
            if isinstance(node, ast.Name) and node.id in wanted and hasattr(node, "lineno"):
                at = (node.lineno, node.col_offset)
                seen[node.id] = min(seen.get(node.id, at), at)
        program._input_order = tuple(sorted(seen, key=seen.get))
    return list(program._input_order)


def run(source_or_path: str, *args: Any, model: Any = None, decoder: str | None = None, seed: int | None = None,
        on_text: Callable[[int, str, str], None] | None = None, trace: bool = False, timeout: float | None = None,
        **kwargs: Any) -> Result | Results:
    """Run a query (text or a .lmq/.lmql path): one Result, or a list for sample(n>1)/beam.

    Positional arguments fill the query's inputs in the order they appear; keywords are inputs
    when the query reads them, else decoder options (`temperature=`, `n=`, `max_len=`, ...).
    `await lmql_lite.run(...)` gives LMQL's answer instead: the return value where there is one.
    `timeout` (seconds) bounds the whole run, model loading included: QueryTimeoutError past it.
    `cache=` keeps the model's work across runs (docs/cache.md): a folder, True for the default one,
    False for none; by default `LMQL_LITE_CACHE_RUNS` decides.
    """
    with Deadline(timeout, label="timeout") if timeout is not None else contextlib.nullcontext():
        program = load(source_or_path)
        inputs, options = _bind(program, args, kwargs, "run")
        return _run(program, inputs, options, model=model, decoder=decoder, seed=seed, on_text=on_text, trace=trace)


def stream(source_or_path: str, *args: Any, model: Any = None, decoder: str | None = None, seed: int | None = None,
           alternatives: int = 5, **kwargs: Any) -> Iterator[events_.Event]:
    """Run a query and give its events as they happen (events.py, docs/events.md); arguments as for `run`.

    The run goes on in a thread, a few events ahead of the consumer; closing the iterator (a
    `break`, `.close()`) stops decoding. A user's error, a syntax error included, ends the stream
    with an `error` event; the last event is `done`. Each chosen token comes with the
    `alternatives` likeliest tokens before the mask and its own p_raw (0: neither, and no full
    softmax per token). (Not `top_k`: that keyword stays the sampling option it is for `run`.)
    """
    def prepare():
        program = load(source_or_path)
        inputs, options = _bind(program, args, kwargs, "stream")
        given = {k: v for k, v in (("model", model), ("decoder", decoder), ("seed", seed)) if v is not None}
        return program, inputs, {**given, **options}, None
    return _stream(prepare, _alternatives(alternatives))


async def astream(source_or_path: str, *args: Any, **kwargs: Any):
    """`stream` for `async for`: the same events, awaited without blocking the event loop."""
    import asyncio
    events = stream(source_or_path, *args, **kwargs)
    try:
        while (event := await asyncio.to_thread(next, events, None)) is not None:
            yield event
    finally:
        events.close()


def _alternatives(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise QueryArgumentError(f"stream: alternatives must be a whole number of at least 0, got {n!r}")
    return n


def _stream(prepare: Callable[[], tuple], alternatives: int) -> Iterator[events_.Event]:
    """The events of the run `prepare()` describes (program, inputs, options, scope), a result event per result."""
    def run(sink):
        program, inputs, options, scope = prepare()
        results = _run(program, inputs, options, scope=scope, events=sink, detail=alternatives)
        for row, r in enumerate(results if isinstance(results, list) else [results]):
            sink(events_.ResultEvent(row, r))
    return streaming.events(run)


def run_sync(source_or_path: str, *args: Any, **kwargs: Any) -> Any:
    """LMQL's `run_sync`: run a query and give its return value, or its result(s) when it has none."""
    return _outcome(run(source_or_path, *args, **kwargs))


def run_file(path: str, *args: Any, model: Any = None, **kwargs: Any) -> Result | Results:
    """Run the query in the file at `path` (any name); like `run`, and awaitable like it."""
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise QueryArgumentError(f"cannot read {path}: {e.strerror or e}") from None
    program = load(source, filename=str(path))
    inputs, options = _bind(program, args, kwargs, "run_file")
    return _run(program, inputs, options, model=model)


def _run(program, inputs, options, *, model=None, decoder=None, seed=None, on_text=None, trace=False,
         scope=None, events=None, detail: int = 0) -> Result | Results:
    model = options.pop("model", model)
    placement = {k: options.pop(k) for k in MODEL_KEYWORDS if k in options}
    results = run_compiled(program, inputs, model=model, decoder=options.pop("decoder", decoder),
                           seed=options.pop("seed", seed), on_text=on_text, trace=trace, scope=scope,
                           events=events, detail=detail, cache=options.pop("cache", None), **placement, **options)
    if isinstance(results, list):
        return Results(_lmql_result(r, program) for r in results)
    return _lmql_result(results, program)


def run_compiled(program: compiler.Program, inputs: dict[str, Any], *, model: Any = None,
                 decoder: str | None = None, seed: int | None = None, on_text=None, trace: bool = False,
                 scope: dict[str, Any] | None = None, events=None, detail: int = 0, engine: str | None = None,
                 device: Any = None, dtype: Any = None, cache: Any = None, **options: Any):
    env = {**(scope or {}), **inputs}  # what the decoder clause and `from` may read
    options = decoder_options(program, env, name=decoder, seed=seed, **options)
    m = resolve_model(program, env, model, {"engine": engine, "device": device, "dtype": dtype})
    rows = [inputs] * (options.n if options.decoder.row_per_result else 1)
    token = _current_model.set(m)
    try:
        results = run_program(program, m, _index(m), options, _starts(program, rows, scope), on_text=on_text,
                              record_tokens=trace, events=events, detail=detail, cache=cache)
    finally:
        _current_model.reset(token)
    return results if options.several else results[0]


def run_batch(source_or_path: str, inputs: Iterable[dict[str, Any]], *, batch_size: int = 8, model: Any = None,
              seed: int | None = None, filename: str | None = None, timeout: float | None = None,
              return_errors: bool = False, engine: str | None = None, device: Any = None, dtype: Any = None,
              ray: bool | str | None = None, workers: int | None = None,
              cache: Any = None, speculate: bool | None = None) -> Iterator[tuple[int, _Result | list[_Result] | LmqlError]]:
    """Run one query over many inputs, `batch_size` at a time in batched forward passes.

    Yields (input index, result) as each batch finishes, so a caller can save results as they come.
    With `return_errors`, a row that fails (a missing input, a constraint or runtime error) yields
    its LmqlError in place of a result and the other rows go on; a ModelError still ends the run.
    `timeout` (seconds) bounds the whole run; only the time spent inside the generator counts.
    `engine=`, `device=` and `dtype=` say what runs the model and where (see `lmql_lite.model`).

    `ray=True` (a local cluster, or RAY_ADDRESS's), `"auto"` or a cluster address runs the batches
    on `workers` Ray actors (default: one per node), each with its own copy of the model; results
    then come in the order they finish. A row whose worker dies is run once more on a fresh
    worker, then given a WorkerError (see docs/engines.md).

    `speculate=False` turns speculative drafts off (docs/language.md, "Speculative drafts").
    """
    program = load(source_or_path, filename)
    given = {"seed": seed, "speculate": speculate}
    rows = list(inputs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QueryArgumentError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    limit = Deadline(timeout, label="timeout") if timeout is not None else None
    if ray is not None and ray is not False:
        if engine is not None or device is not None or dtype is not None:
            raise QueryArgumentError("with ray, say what runs the workers' model in the model itself "
                                     "(lmql_lite.model(NAME, engine=..., device=..., dtype=...)) or with "
                                     "LMQL_LITE_ENGINE / LMQL_LITE_DEVICE / LMQL_LITE_DTYPE: engine=, device= and "
                                     "dtype= are not passed to the workers")
        if cache is not None and cache is not False:
            raise QueryArgumentError("cache= is not passed to Ray workers yet: run without ray=, or without cache=")
        yield from _run_on_ray(program, rows, batch_size, model, seed, limit, return_errors, ray, workers)
        return
    if workers is not None:
        raise QueryArgumentError("workers= is the number of Ray workers: it needs ray=")
    models: dict[str, Any] = {"placement": {"engine": engine, "device": device, "dtype": dtype}, "cache": cache}  # and the model, resolved once
    for start in range(0, len(rows), batch_size):
        with limit or contextlib.nullcontext():
            outcomes = _run_chunk(program, rows[start:start + batch_size], model, given, models, return_errors)
        for i, outcome in enumerate(outcomes):
            yield start + i, outcome


def _run_on_ray(program, rows, batch_size, model, seed, limit, return_errors, address, workers):
    """`run_batch` on Ray actors: the query travels as its text, the model as its name and options."""
    from . import ray_batch
    if model is not None and not isinstance(model, (str, LLM)):
        raise QueryArgumentError("with ray, name the model (a string or lmql_lite.model(...)): a loaded model "
                                 "cannot travel to the workers, which load their own copy")
    default = _default_model[0]
    if default is not None and not isinstance(default, (str, LLM)):
        raise QueryArgumentError("with ray, set_default_model needs a model name or lmql_lite.model(...): "
                                 "a loaded model cannot travel to the workers")
    default = default if default is not None else os.environ.get("LMQL_LITE_MODEL") or None
    return ray_batch.run_batch(program.query.source, program.filename, rows, batch_size=batch_size, model=model,
                               default_model=default, seed=seed, limit=limit, return_errors=return_errors,
                               address=address, workers=workers)


def _run_chunk(program, chunk: list[dict[str, Any]], model, given, models, return_errors: bool) -> list:
    """The results of rows decoded together; with `return_errors`, a failing row's error in its place."""
    if not return_errors:
        return _run_together(program, chunk, model, given, models)
    outcomes: list[Any] = [None] * len(chunk)
    for i, row in enumerate(chunk):  # a missing input fails before decoding: leave that row out
        try:
            checker.check_inputs(program, row)
        except LmqlError as e:
            outcomes[i] = e
    ready = [i for i, o in enumerate(outcomes) if o is None]
    if not ready:
        return outcomes
    try:
        for i, result in zip(ready, _run_together(program, [chunk[i] for i in ready], model, given, models)):
            outcomes[i] = result
    except ModelError:
        raise
    except LmqlError as e:
        if len(ready) == 1:
            outcomes[ready[0]] = e
            return outcomes
        for i in ready:  # one of the rows failed: run each alone, so only the failing ones fail
            try:
                (outcomes[i],) = _run_together(program, [chunk[i]], model, given, models)
            except ModelError:
                raise
            except LmqlError as e:
                outcomes[i] = e
    return outcomes


def _run_together(program, chunk: list[dict[str, Any]], model, given, models) -> list:
    options = decoder_options(program, chunk[0], **given)
    if not options.decoder.batches_inputs or options.n > 1:
        return [run_compiled(program, row, model=model, cache=models["cache"], **given, **models["placement"])
                for row in chunk]
    if "model" not in models:
        models["model"] = resolve_model(program, chunk[0], model, models["placement"])
    m = models["model"]
    token = _current_model.set(m)
    try:
        return run_program(program, m, _index(m), options, _starts(program, chunk), cache=models["cache"])
    finally:
        _current_model.reset(token)


# Keywords `@lmql.query(...)` takes besides decoder options.
QUERY_KEYWORDS = frozenset({"model", "is_async", "input_variables"})


class QueryFunction:
    """A query with a Python signature: a function whose docstring is the query, or query text.

    Its parameters are inputs; the other names the query reads come from where it was defined
    (module constants, sibling query functions, the enclosing function's locals). Called, it gives
    the query's return value when it has one, else its Result (a list for several results); an
    `async def` query function (or a query string, as in LMQL) gives a coroutine of the same.
    """

    def __init__(self, source: str, name: str, signature: inspect.Signature, *, is_async: bool = False,
                 scope: Callable[[], dict[str, Any]] | None = None, options: dict[str, Any] | None = None,
                 parameters_only: bool = False):
        self.__name__ = name
        self.source = source
        self.signature = signature
        self.is_async = is_async
        self.options = dict(options or {})
        self._scope = scope or dict
        self._parameters_only = parameters_only
        self.__lmql_program__ = load(source, filename=f"<query {name}>")

    def __get__(self, obj, objtype=None):
        """As a method, `self` is the first input."""
        return self if obj is None else _BoundQuery(self, obj)

    def _arguments(self, args, kwargs) -> tuple[dict[str, Any], dict[str, Any]]:
        program = self.__lmql_program__
        params = self.signature.parameters
        if not params and not self._parameters_only:
            return _bind(program, args, kwargs, self.__name__)
        own = {k: v for k, v in kwargs.items() if k in params}
        rest = {k: v for k, v in kwargs.items() if k not in params}
        try:
            bound = self.signature.bind(*args, **own)
        except TypeError as e:
            raise QueryArgumentError(f"{self.__name__}: {e}") from None
        bound.apply_defaults()
        inputs = dict(bound.arguments)
        extra, options = _bind(program, (), rest, self.__name__, inputs=list(params))
        return {**inputs, **extra}, options

    def __lmql_start__(self, *args, **kwargs):
        """A generator running this query inline (a nested query), and its program."""
        program = self.__lmql_program__
        inputs, _ = self._arguments(args, kwargs)
        ((start, _),) = _starts(program, [inputs], self._scope())
        return start(), program

    def run(self, *args, **kwargs) -> Result | Results:
        """The query's Result(s), whatever it returns."""
        inputs, options = self._arguments(args, kwargs)
        return _run(self.__lmql_program__, inputs, self._options(options), scope=self._scope())

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The decorator's options, then the call's."""
        base = self.options
        if options.get("decoder") is not None:
            # A decoder named at the call replaces the decorator's, with the options that were its own.
            base = {k: v for k, v in base.items() if k not in DECODER_KEYWORDS or k in _SHARED}
        return {**base, **options}

    def stream(self, *args, alternatives: int = 5, **kwargs) -> Iterator[events_.Event]:
        """The query's events as it runs (see `lmql_lite.stream`)."""
        def prepare():
            inputs, options = self._arguments(args, kwargs)
            return self.__lmql_program__, inputs, self._options(options), self._scope()
        return _stream(prepare, _alternatives(alternatives))

    def __call__(self, *args, **kwargs):
        if self.is_async:
            return self._acall(*args, **kwargs)
        return _outcome(self.run(*args, **kwargs))

    async def _acall(self, *args, **kwargs):
        return _outcome(self.run(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<lmql_lite query {self.__name__}{self.signature}>"


class _BoundQuery:
    """A query function read from an instance: `self` given, usable as a call or a nested query."""

    def __init__(self, query: QueryFunction, obj: Any):
        self.__func__, self.__self__ = query, obj
        self.__lmql_program__ = query.__lmql_program__
        self.__name__ = query.__name__

    def __call__(self, *args, **kwargs):
        return self.__func__(self.__self__, *args, **kwargs)

    def run(self, *args, **kwargs):
        return self.__func__.run(self.__self__, *args, **kwargs)

    def stream(self, *args, **kwargs):
        return self.__func__.stream(self.__self__, *args, **kwargs)

    def __lmql_start__(self, *args, **kwargs):
        return self.__func__.__lmql_start__(self.__self__, *args, **kwargs)


_STRING_LITERAL = re.compile(r"""[rRuU]?('''|\"\"\"|'|")(.*)\1""", re.S)


def _raw_docstring(fn: Callable) -> str | None:
    """The docstring as written in the source, escapes untouched.

    A query's own string literals need their backslash escapes (`"Q\\n"`) as written, so query
    functions are read from their source, as LMQL does; None when the source is unavailable.
    """
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        node = ast.parse(source).body[0].body[0]
    except (OSError, TypeError, SyntaxError, IndexError, AttributeError):
        return None
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
        return None
    match = _STRING_LITERAL.fullmatch(ast.get_source_segment(source, node.value) or "")
    return match.group(2) if match else None


def _defining_scope(fn: Callable | None, frame) -> Callable[[], dict[str, Any]]:
    """The names visible where a query was defined, read when it runs (so later definitions count)."""
    def scope() -> dict[str, Any]:
        names = dict(fn.__globals__) if fn is not None else {}
        if frame is not None:
            if fn is None:
                names.update(frame.f_globals)
            if frame.f_locals is not frame.f_globals:
                names.update(frame.f_locals)
        return names
    return scope


def _query_options(options: dict[str, Any], what: str) -> dict[str, Any]:
    for key in options:
        if key not in DECODER_KEYWORDS | IGNORED_KEYWORDS | RUN_KEYWORDS | QUERY_KEYWORDS | MODEL_KEYWORDS:
            known = sorted(DECODER_KEYWORDS | QUERY_KEYWORDS | MODEL_KEYWORDS)
            hint = difflib.get_close_matches(key, known, 1)
            raise QueryArgumentError(f"{what}: unknown keyword {key}" + (f"; did you mean {hint[0]}?" if hint
                                     else f" (known: {', '.join(known)})"))
    return {k: v for k, v in options.items() if k not in ("is_async", "input_variables")}


def query(fn: Callable | str | None = None, *, is_async: bool | None = None, input_variables=None, **options: Any):
    """`@lmql_lite.query` (or `@lmql.query(decoder="sample", temperature=0.8, model=...)`) on a function
    whose docstring is the query; `lmql.query("query text", input_variables=[...])` for query text.

    A query string gives an async query function unless `is_async=False`, as in LMQL.
    """
    frame = inspect.currentframe().f_back
    _query_options(options, "query")
    if fn is None:
        def decorate(f: Callable) -> QueryFunction:
            return _query_function(f, inspect.currentframe().f_back, options)
        return decorate
    if isinstance(fn, str):
        if input_variables is not None:
            signature = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                           for n in input_variables])
        else:
            signature = inspect.Signature()
        return QueryFunction(query_text(fn), "query", signature, is_async=True if is_async is None else is_async,
                             scope=_defining_scope(None, frame), options=options)
    if input_variables is not None:
        raise QueryArgumentError("query: input_variables is for query text; a function's parameters are its inputs")
    return _query_function(fn, frame, options)


def _query_function(fn: Callable, frame, options: dict[str, Any]) -> QueryFunction:
    if isinstance(fn, QueryFunction):
        return fn
    doc = _raw_docstring(fn) or inspect.getdoc(fn)
    if not doc:
        raise QueryArgumentError(f"@lmql_lite.query: {fn.__name__} needs a docstring holding the query")
    qf = QueryFunction(query_text(inspect.cleandoc(doc)), fn.__name__, inspect.signature(fn),
                       is_async=inspect.iscoroutinefunction(fn), scope=_defining_scope(fn, frame),
                       options=options, parameters_only=True)
    functools.update_wrapper(qf, fn)
    return qf


def F(template: str, constraints: str | None = None, *, model: Any = None, is_async: bool = False,
      **options: Any) -> Callable[..., Any]:
    """A one-hole function: F("Summarize: {text}\\nSummary:[S]", "len(TOKENS(S)) < 30")(text) → S's value."""
    _query_options(options, "F")
    source = repr(template) + (f" where {constraints}" if constraints else "") + "\n"
    program = load(source, filename="<F>")
    if len(program.holes) != 1:
        raise QueryArgumentError(f"F(...) needs a template with exactly one hole, found {len(program.holes)}")
    hole = program.holes[0]

    def call(*args: Any, **kwargs: Any) -> Any:
        inputs, given = _bind(program, args, kwargs, "F")
        result = _run(program, inputs, {**options, **given}, model=model)
        return [r.variables[hole] for r in result] if isinstance(result, list) else result.variables[hole]

    async def acall(*args: Any, **kwargs: Any) -> Any:
        return call(*args, **kwargs)
    out = acall if is_async else call
    out.__doc__ = f"Fills [{hole}] in {template!r}."
    return out


def generate_sync(prompt: str, max_tokens: int | None = None, model: Any = None, **options: Any):
    """LMQL's `lmql.generate_sync`: the model's continuation of `prompt` (the default model unless named)."""
    return _handle(model).generate_sync(prompt, max_tokens, **options)


async def generate(prompt: str, max_tokens: int | None = None, model: Any = None, **options: Any):
    return generate_sync(prompt, max_tokens, model, **options)


def score_sync(prompt: str, values, model: Any = None, **options: Any) -> ScoringResult:
    """LMQL's `lmql.score_sync`: each value's log-probability as a continuation of `prompt`."""
    return _handle(model).score_sync(prompt, values, **options)


async def score(prompt: str, values, model: Any = None, **options: Any) -> ScoringResult:
    return score_sync(prompt, values, model, **options)


def _handle(m: Any) -> LLM:
    """A model handle for `m`: a name, a handle, a loaded model, or None for the default model."""
    m = m if m is not None else _default_model[0]
    if isinstance(m, LLM):
        return m
    if m is None or isinstance(m, str):
        return model(m)
    handle = LLM(getattr(m, "name", None))
    handle.load = lambda: m
    return handle
