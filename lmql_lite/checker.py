"""Static checks of a compiled query that need no model: decoder and options, constraint functions, constrained names."""
from __future__ import annotations

import ast
import difflib

from . import compiler, nodes, options
from .constraints import terms
from .errors import ConstraintError, LmqlError, QueryArgumentError


def check(program: compiler.Program) -> list[LmqlError]:
    """Every problem found, in source order; an empty list means the query looks runnable."""
    query = program.query
    problems: list[LmqlError] = []
    if query.decoder is not None:
        problems += check_decoder(program, query.decoder)
    wheres = [p.where for p in query.prompts if p.where is not None]
    if query.where is not None:
        wheres.append(query.where)
    for where in wheres:
        problems += _check_where(program, where)
    return sorted(problems, key=lambda e: (e.line or 0, e.column or 0))


def _error(cls, program: compiler.Program, message: str, line: int, column: int) -> LmqlError:
    return cls(message, file=program.filename, line=line, column=column, source_line=program.source_line(line))


def check_decoder(program: compiler.Program, decoder: nodes.Decoder) -> list[LmqlError]:
    row = options.decoder(decoder.name)
    if row is None:
        hint = difflib.get_close_matches(decoder.name, sorted(options.NAMES), 1)
        message = f"unknown decoder '{decoder.name}'" + (f"; did you mean '{hint[0]}'?" if hint else
                                                        f" (known: {', '.join(d.name for d in options.DECODERS)})")
        return [_error(QueryArgumentError, program, message, decoder.pos.line, decoder.pos.column)]
    known = row.options | options.SHARED_OPTIONS
    problems = []
    if decoder.args and not row.positional_n:
        problems.append(_error(QueryArgumentError, program, f"{row.name} takes no positional argument",
                               decoder.pos.line, decoder.pos.column))
    for key, expr in decoder.kwargs:
        if key not in known:
            problems.append(_error(QueryArgumentError, program,
                                   f"unknown option '{key}' for {decoder.name} (known: {', '.join(sorted(known))})",
                                   expr.pos.line, expr.pos.column))
    return problems


def _check_where(program: compiler.Program, where: nodes.Expr) -> list[LmqlError]:
    try:
        tree = compiler.parse_expr(program.query, where)
    except LmqlError as e:
        return [e]
    holes = set(program.holes)
    defined = set(program.defined) | set(program.inputs)
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        fn = node.func.id
        if fn.isupper() and fn not in terms.BUILTINS and fn not in program.defined:
            hint = difflib.get_close_matches(fn, terms.BUILTINS, 1)
            problems.append(_error(ConstraintError, program,
                                   f"unknown constraint function {fn}" + (f"; did you mean {hint[0]}?" if hint else
                                                                          f" (known: {', '.join(terms.BUILTINS)})"),
                                   node.lineno, node.col_offset + 1))
            continue
        if (fn in terms.BUILTINS or fn == "len") and node.args and isinstance(node.args[0], ast.Name):
            var = node.args[0]
            if var.id not in holes:
                problems.append(_unknown_hole(program, var, holes))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                if isinstance(side, ast.Name) and side.id not in holes and side.id not in defined \
                        and side.id.isupper():
                    problems.append(_unknown_hole(program, side, holes))
    return problems


def _unknown_hole(program: compiler.Program, var: ast.Name, holes: set[str]) -> LmqlError:
    listed = ", ".join(sorted(holes)) or "none"
    return _error(ConstraintError, program, f"constraint on {var.id}, but the query has no hole [{var.id}] "
                  f"(holes: {listed})", var.lineno, var.col_offset + 1)


def check_inputs(program: compiler.Program, inputs: dict) -> None:
    """Every input the query reads is given; a QueryArgumentError names the missing ones."""
    missing = [n for n in program.inputs if n not in inputs]
    decoder = program.query.decoder is None and _misspelt_decoder(missing)
    if decoder:
        raise QueryArgumentError(f"'{decoder[0]}' is not a decoder; did you mean '{decoder[1]}'?",
                                 file=program.filename, line=1, column=1, source_line=program.source_line(1))
    if missing:
        names = ", ".join(missing)
        raise QueryArgumentError(f"the query needs input{'s' if len(missing) > 1 else ''} {names}: "
                                 f"pass {' '.join(f'--arg {m}=...' for m in missing)} on the command line "
                                 f"or {', '.join(f'{m}=...' for m in missing)} in Python",
                                 file=program.filename)


def _misspelt_decoder(names: list[str]) -> tuple[str, str] | None:
    """(name, decoder) when a would-be input is a misspelt decoder line such as `sampel(n=2)`."""
    for name in names:
        close = difflib.get_close_matches(name, [d.name for d in options.DECODERS], 1, cutoff=0.75)
        if close:
            return name, close[0]
    return None
