"""The Python entry points: run a query, make a query function, choose a model."""
from __future__ import annotations

import ast
import contextvars
import functools
import inspect
import os
import re
import textwrap
from typing import Any, Callable, Iterable, Iterator

from . import checker, compiler, parser
from .errors import LmqlError, QueryArgumentError
from .index import TokenIndex
from .interpreter import run_program
from .options import IGNORED_OPTIONS, DecoderOptions
from .result import Result

_models: dict[str, Any] = {}
_indexes: dict[int, tuple[Any, TokenIndex]] = {}
_programs: dict[tuple[str, str], compiler.Program] = {}
_current_model: contextvars.ContextVar = contextvars.ContextVar("lmql_lite_model", default=None)


def model(name: str | None = None):
    """Load a model once per process: a local directory, a hub id in the local cache, or None for the embedded default."""
    key = name or ""
    if key not in _models:
        from .models import load_model
        _models[key] = load_model(name)
    return _models[key]


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
    """Parse and compile a query (text or a path to a .lmq file); compiled queries are cached."""
    source, filename = _read(source_or_path, filename)
    key = (filename, source)
    program = _programs.get(key)
    if program is None:
        # A query file (not text made in Python: "<query>", "<F>", ...) is also cached on disk.
        parse = parser.parse if filename.startswith("<") else parser.parse_cached
        program = _programs[key] = compiler.compile_query(parse(source, filename))
    return program


def _read(source_or_path: str, filename: str | None) -> tuple[str, str]:
    if not isinstance(source_or_path, str):
        raise QueryArgumentError(f"a query is text or a path to a .lmq file, got {type(source_or_path).__name__}")
    looks_like_path = "\n" not in source_or_path and source_or_path.endswith(".lmq")
    if looks_like_path:
        try:
            with open(source_or_path, encoding="utf-8") as f:
                return f.read(), filename or source_or_path
        except FileNotFoundError:
            raise QueryArgumentError(f"no such query file: {source_or_path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise QueryArgumentError(f"cannot read {source_or_path}: {e}") from None
    return source_or_path, filename or "<query>"


def decoder_options(program: compiler.Program, inputs: dict[str, Any], **overrides: Any) -> DecoderOptions:
    """The decoder clause's options, evaluated with the query's inputs, then `overrides` (None ones ignored)."""
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
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return DecoderOptions(**fields)
    except TypeError as e:
        raise QueryArgumentError(f"bad decoder options: {e}", file=program.filename) from None


def _evaluate(program: compiler.Program, expr, inputs: dict[str, Any]) -> Any:
    import builtins
    try:
        return eval(compile(compiler.as_expression(program.query, expr), program.filename, "eval"),
                    {"__builtins__": builtins}, dict(inputs))
    except LmqlError:
        raise
    except Exception as e:
        raise QueryArgumentError(f"cannot evaluate {expr.source.strip()}: {type(e).__name__}: {e}",
                                 file=program.filename, line=expr.pos.line, column=expr.pos.column,
                                 source_line=program.source_line(expr.pos.line)) from None


def resolve_model(program: compiler.Program, inputs: dict[str, Any], model_arg: Any = None):
    """The model a run uses: `model=` / --model, then the query's `from`, then LMQL_LITE_MODEL, then the default."""
    if model_arg is not None and not isinstance(model_arg, str):
        return model_arg
    name = model_arg
    if name is None and program.query.model is not None:
        name = _evaluate(program, program.query.model, inputs)
    if name is None:
        current = _current_model.get()
        if current is not None:
            return current
        name = os.environ.get("LMQL_LITE_MODEL") or None
    return model(name)


def _starts(program: compiler.Program, rows: list[dict[str, Any]]):
    namespace = _namespace()
    starts = []
    for inputs in rows:
        checker.check_inputs(program, inputs)
        fn = program.function(tuple(sorted(inputs)), namespace)
        starts.append((functools.partial(fn, **inputs), program))
    return starts


def _namespace() -> dict[str, Any]:
    import lmql_lite
    return {"lmql": lmql_lite, "lmql_lite": lmql_lite}


def run(source_or_path: str, *, model: Any = None, decoder: str | None = None, seed: int | None = None,
        on_text: Callable[[int, str, str], None] | None = None, trace: bool = False,
        **inputs: Any) -> Result | list[Result]:
    """Run a query (text or .lmq path) with `inputs`; one Result, or a list for sample(n>1)/beam."""
    program = load(source_or_path)
    return run_compiled(program, inputs, model=model, decoder=decoder, seed=seed, on_text=on_text, trace=trace)


def run_compiled(program: compiler.Program, inputs: dict[str, Any], *, model: Any = None,
                 decoder: str | None = None, seed: int | None = None, on_text=None, trace: bool = False):
    options = decoder_options(program, inputs, name=decoder, seed=seed)
    m = resolve_model(program, inputs, model)
    rows = [inputs] * (options.n if options.decoder.row_per_result else 1)
    token = _current_model.set(m)
    try:
        results = run_program(program, m, _index(m), options, _starts(program, rows), on_text=on_text,
                              record_tokens=trace)
    finally:
        _current_model.reset(token)
    return results if options.several else results[0]


def run_batch(source_or_path: str, inputs: Iterable[dict[str, Any]], *, batch_size: int = 8, model: Any = None,
              seed: int | None = None, filename: str | None = None) -> Iterator[tuple[int, Result | list[Result]]]:
    """Run one query over many inputs, `batch_size` at a time in batched forward passes.

    Yields (input index, result) as each batch finishes, so a caller can save results as they come.
    """
    program = load(source_or_path, filename)
    rows = list(inputs)
    if batch_size < 1:
        raise QueryArgumentError(f"batch_size must be at least 1, got {batch_size}")
    m = None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        options = decoder_options(program, chunk[0], seed=seed)
        if not options.decoder.batches_inputs or options.n > 1:
            for i, row in enumerate(chunk):
                yield start + i, run_compiled(program, row, model=model, seed=seed)
            continue
        if m is None:
            m = resolve_model(program, chunk[0], model)
        token = _current_model.set(m)
        try:
            results = run_program(program, m, _index(m), options, _starts(program, chunk))
        finally:
            _current_model.reset(token)
        for i, result in enumerate(results):
            yield start + i, result


class QueryFunction:
    """A Python function whose docstring is a query; its parameters are the query's inputs."""

    def __init__(self, fn: Callable, model: Any = None):
        functools.update_wrapper(self, fn)
        self.signature = inspect.signature(fn)
        doc = _raw_docstring(fn) or inspect.getdoc(fn)
        if not doc:
            raise QueryArgumentError(f"@lmql_lite.query: {fn.__name__} needs a docstring holding the query")
        lines = inspect.cleandoc(doc).splitlines()
        if lines and lines[0].strip() == "lmql":
            lines = lines[1:]
        self.source = "\n".join(lines) + "\n"
        self.model = model
        self.__lmql_program__ = load(self.source, filename=f"<query {fn.__name__}>")

    def _inputs(self, args, kwargs) -> dict[str, Any]:
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise QueryArgumentError(f"{self.__name__}: {e}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def __lmql_start__(self, *args, **kwargs):
        """A generator running this query inline (a nested query), and its program."""
        program = self.__lmql_program__
        inputs = self._inputs(args, kwargs)
        ((start, _),) = _starts(program, [inputs])
        return start(), program

    def run(self, *args, **kwargs) -> Result | list[Result]:
        return run_compiled(self.__lmql_program__, self._inputs(args, kwargs), model=self.model)

    def __call__(self, *args, **kwargs):
        """The query's return value when it has one, else its Result (a list for several results)."""
        result = self.run(*args, **kwargs)
        if isinstance(result, list):
            return [r.value if r.value is not None else r for r in result]
        return result.value if result.value is not None else result


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


def query(fn: Callable | None = None, *, model: Any = None):
    """Decorator: `@lmql_lite.query` (or `@lmql.query`) on a function whose docstring is the query."""
    if fn is None:
        return lambda f: QueryFunction(f, model=model)
    return QueryFunction(fn, model=model)


def F(template: str, constraints: str | None = None, *, model: Any = None) -> Callable[..., Any]:
    """A one-hole function: F("Summarize: {text}\\nSummary:[S]", "len(TOKENS(S)) < 30")(text=...) → S's value."""
    source = repr(template) + (f" where {constraints}" if constraints else "") + "\n"
    program = load(source, filename="<F>")
    if len(program.holes) != 1:
        raise QueryArgumentError(f"F(...) needs a template with exactly one hole, found {len(program.holes)}")
    hole = program.holes[0]

    def call(**inputs: Any) -> Any:
        return run_compiled(program, inputs, model=model).variables[hole]
    call.__doc__ = f"Fills [{hole}] in {template!r}."
    return call
