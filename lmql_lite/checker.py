"""Static checks of a compiled query that need no model, shared by `lmql-lite check` and `run` (which checks first).

Decoders and their options, constraint functions, constraints on names that are no hole, names
used but never defined, and each hole's constraint where it depends on nothing but the hole
(contradictions, bad regexes). `run` raises the first problem before loading a model, so both
report the same message at the same position.
"""
from __future__ import annotations

import ast
import builtins
import copy
import difflib
import traceback
from typing import Any, Iterable

from . import compiler, nodes, options
from .constraints import terms
from .errors import ConstraintError, LmqlError, QueryArgumentError

_PYTHON = frozenset(dir(builtins))


def check(program: compiler.Program, inputs: Iterable[str] = ()) -> list[LmqlError]:
    """Every problem found, in source order; an empty list means the query looks runnable.

    `inputs` are the names a run is given: such a name is an input, never an undefined name.
    """
    query = program.query
    given = frozenset(inputs)
    problems: list[LmqlError] = []
    if query.decoder is not None:
        problems += check_decoder(program, query.decoder)
    wheres = [p.where for p in query.prompts if p.where is not None]
    if query.where is not None:
        wheres.append(query.where)
    for where in wheres:
        problems += _check_where(program, where, given)
    problems += _check_holes(program)
    reported = {p.name for p in problems if isinstance(p, _NameProblem)}
    problems += _check_names(program, given, reported)
    unique = {(e.line or 0, e.column or 0, e.message): e for e in problems}
    return [unique[k] for k in sorted(unique, key=lambda k: k[:2])]


def first_problem(program: compiler.Program, inputs: Iterable[str] = ()) -> None:
    """Raise the first problem `check` finds (what `run` does before it loads a model).

    A query found runnable with these input names is not checked again: `run` calls this every
    time, and a short query's check costs as much as several of its tokens."""
    given = frozenset(inputs)
    if given in program._runnable:
        return
    problems = check(program, given)
    if problems:
        raise problems[0]
    program._runnable.add(given)


def _error(cls, program: compiler.Program, message: str, line: int, column: int) -> LmqlError:
    return cls(message, file=program.filename, line=line, column=column, source_line=program.source_line(line))


class _NameProblem(ConstraintError):
    """A name a constraint uses that is no hole nor defined (kept apart so it is reported once)."""

    def __init__(self, name: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = name


def check_decoder(program: compiler.Program, decoder: nodes.Decoder) -> list[LmqlError]:
    row = options.decoder(decoder.name)
    if row is None:
        hint = difflib.get_close_matches(decoder.name.lower(), sorted(options.NAMES), 1)
        message = f"unknown decoder '{decoder.name}'" + (f"; did you mean '{hint[0]}'?" if hint else
                                                        f" (known: {', '.join(d.name for d in options.DECODERS)})")
        return [_error(QueryArgumentError, program, message, decoder.pos.line, decoder.pos.column)]
    known = row.options | options.SHARED_OPTIONS
    problems = []
    if decoder.args and not row.positional_n:
        problems.append(_error(QueryArgumentError, program, f"{row.name} takes no positional argument",
                               decoder.pos.line, decoder.pos.column))
    for key, expr in decoder.kwargs:
        if key in options.UNSUPPORTED_OPTIONS:
            problems.append(_error(QueryArgumentError, program, f"LMQL's option '{key}' is not supported by lmql_lite",
                                   expr.pos.line, expr.pos.column))
        elif key not in known:
            problems.append(_error(QueryArgumentError, program,
                                   f"unknown option '{key}' for {decoder.name} (known: {', '.join(sorted(known))})",
                                   expr.pos.line, expr.pos.column))
    return problems


def _is_builtin(program: compiler.Program, fn: str) -> bool:
    """`fn` in a where clause is one of our constraint functions (any spelling), not the query's own."""
    return terms.builder(fn) is not None and fn not in program.bound


def _check_where(program: compiler.Program, where: nodes.Expr, given: frozenset[str]) -> list[LmqlError]:
    try:
        tree = compiler.parse_expr(program.query, where)
    except LmqlError as e:
        return [e]
    holes = set(program.holes)
    defined = set(program.bound) | given
    problems: list[LmqlError] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        fn = node.func.id
        if not _is_builtin(program, fn):
            if fn in defined or fn in _PYTHON:
                continue
            names = terms.BUILTINS if fn.isupper() else tuple(terms.ALIASES)
            hint = difflib.get_close_matches(fn, names, 1, cutoff=0.75)
            if fn.isupper() or hint:
                shown = f"; did you mean {hint[0]}?" if hint else f" (known: {', '.join(terms.BUILTINS)})"
                problems.append(_NameProblem(fn, f"unknown constraint function {fn}{shown}", file=program.filename,
                                             line=node.lineno, column=node.col_offset + 1,
                                             source_line=program.source_line(node.lineno)))
            continue
        if fn in ("int", "float"):
            continue  # Python's on a value that is no hole
        var = node.args[0] if node.args else None
        if isinstance(var, ast.Name) and var.id not in holes and var.id not in given:
            problems.append(_unknown_hole(program, var, holes))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len" \
                and len(node.args) == 1 and isinstance(node.args[0], ast.Name):
            var = node.args[0]
            if var.id not in holes and var.id not in defined:
                problems.append(_unknown_hole(program, var, holes))
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Name) and side.id not in holes and side.id not in defined \
                        and side.id not in _PYTHON and side.id.isupper():
                    problems.append(_unknown_hole(program, side, holes))
    return problems


def _unknown_hole(program: compiler.Program, var: ast.Name, holes: set[str]) -> LmqlError:
    listed = ", ".join(sorted(holes)) or "none"
    return _NameProblem(var.id, f"constraint on {var.id}, but the query has no hole [{var.id}] (holes: {listed})",
                        file=program.filename, line=var.lineno, column=var.col_offset + 1,
                        source_line=program.source_line(var.lineno))


def _check_names(program: compiler.Program, given: frozenset[str], reported: set[str]) -> list[LmqlError]:
    """A name read but never defined that looks like a misspelt hole or variable (`return CITYY`)."""
    known = sorted(set(program.holes) | set(program.bound))
    problems = []
    for name in program.inputs:
        if name in given or name in reported:
            continue
        hint = difflib.get_close_matches(name, known, 1, cutoff=0.8)
        if not hint or hint[0] == name:  # bound in an inner scope only: an input read at the top
            continue
        use = next((n for n in ast.walk(program.module) if isinstance(n, ast.Name) and n.id == name), None)
        line, column = (use.lineno, use.col_offset + 1) if use is not None else (1, 1)
        problems.append(_error(QueryArgumentError, program,
                               f"{name} is used but never defined; did you mean {hint[0]}?", line, column))
    return problems


# --- each hole's own constraint, where it depends on nothing but the hole ------------------

def _check_holes(program: compiler.Program) -> list[LmqlError]:
    query = program.query
    problems = []
    for prompt in query.prompts:
        for part in prompt.parts:
            if not isinstance(part, nodes.Hole):
                continue
            try:
                problem = _check_hole(program, prompt, part)
            except LmqlError as e:
                problem = e
            if problem is not None:
                problems.append(problem.locate(file=program.filename, line=part.pos.line, column=part.pos.column,
                                               source_line=program.source_line(part.pos.line)))
    return problems


_TYPES = {"int": int, "float": float, "str": str}


def _check_hole(program: compiler.Program, prompt: nodes.Prompt, hole: nodes.Hole) -> LmqlError | None:
    """The error `run` would raise when this hole starts, for what can be known without running the query."""
    hole_type: Any = None
    if hole.type is not None:
        expr = compiler.parse_expr(program.query, hole.type)
        if isinstance(expr, ast.Name) and expr.id in _TYPES and expr.id not in program.bound:
            hole_type = _TYPES[expr.id]
        elif isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            hole_type = expr.value
        else:
            return None  # a dataclass, a nested query...: known only when the query runs
    conjuncts = []
    for where in (prompt.where, program.query.where):
        if where is not None:
            conjuncts += [c for c in _conjuncts(compiler.parse_expr(program.query, where))
                          if _only_about(program, c, hole.name)]
    if not conjuncts and hole_type is None:
        return None
    rewriter = compiler.where_rewriter({hole.name}, program.bound)
    body = [rewriter.visit(copy.deepcopy(c)) for c in conjuncts]
    term = None
    if body:
        lam = compiler.where_function(body)
        try:
            term = eval(compile(lam, program.filename, "eval"), {"__builtins__": builtins, **compiler.where_names()})(
                lambda name: terms.Var(name))
        except LmqlError as e:
            return e
        except Exception as e:  # an operation no constraint has: `len(TOKENS(X)) << 5`
            return _where_error(program, e)
    from .constraints import holes  # numpy and the automata: loaded only for queries with constraints
    try:
        holes.plan_hole(None if term is True else term, hole.name, hole_type)
    except ConstraintError as e:
        return e
    return None


def _where_error(program: compiler.Program, e: Exception) -> ConstraintError:
    """`e`, raised by a where clause evaluated over the hole's terms, as a user's error at its place."""
    line = column = None
    for frame in traceback.extract_tb(e.__traceback__):
        if frame.filename == program.filename:
            line = frame.lineno
            column = frame.colno + 1 if getattr(frame, "colno", None) is not None else None
    return ConstraintError(f"this constraint cannot be evaluated: {type(e).__name__}: {e}", file=program.filename,
                           line=line, column=column, source_line=program.source_line(line) if line else None)


def _conjuncts(expr: ast.expr) -> list[ast.expr]:
    if isinstance(expr, ast.BoolOp) and isinstance(expr.op, ast.And):
        return [c for v in expr.values for c in _conjuncts(v)]
    return [expr]


def _only_about(program: compiler.Program, expr: ast.expr, hole: str) -> bool:
    """`expr` reads the hole, constants and our constraint functions only (no GRAMMAR: its engine needs the vocabulary)."""
    mentions = False
    for node in ast.walk(expr):
        if isinstance(node, ast.Name):
            if node.id == hole:
                mentions = True
            elif node.id == "len" and "len" not in program.bound:
                continue
            elif not _is_builtin(program, node.id) or terms.builder(node.id) in ("GRAMMAR", "grammar"):
                return False
        elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Lambda, ast.NamedExpr, ast.Starred)) \
                or isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return False
    return mentions


def check_inputs(program: compiler.Program, inputs: dict) -> None:
    """Every input the query reads is given; a QueryArgumentError names the missing ones.

    (A misspelt decoder line such as `sampel(n=2)` is found by the parser and reported by
    check_decoder, so a missing input here is always an input.)
    """
    missing = [n for n in program.inputs if n not in inputs]
    if missing:
        names = ", ".join(missing)
        raise QueryArgumentError(f"the query needs input{'s' if len(missing) > 1 else ''} {names}: "
                                 f"pass {' '.join(f'--arg {m}=...' for m in missing)} on the command line "
                                 f"or {', '.join(f'{m}=...' for m in missing)} in Python",
                                 file=program.filename)
