"""Turns a parsed query into a Python generator function, using Python's own `ast`, so Python semantics stay Python's.

Each prompt statement becomes a run of `yield`s: text to append, chat roles, and holes whose
decoded value is sent back and bound to the hole's name. `where` clauses become small functions
that build constraint terms (see `constraints.terms`). Everything else in the query body is
compiled unchanged, so scopes, closures, imports and tool functions behave as in any Python
function.
"""
from __future__ import annotations

import ast
import builtins
import copy
import linecache
import symtable
import types
from dataclasses import dataclass, field
from typing import Any

from . import nodes, runtime
from .constraints import terms
from .errors import LmqlSyntaxError

# Names compiled code refers to; a query's own names never start with "__lmql".
_RT, _C, _RESOLVE, _PROMPT, _FN = "__lmql_rt__", "__lmql_c__", "__lmql_v__", "__lmql_prompt__", "__lmql_query__"


@dataclass
class Program:
    """A compiled query; `function(params, namespace)` gives its generator function."""
    query: nodes.Query
    module: ast.Module                # defines __lmql_query__() with no parameters yet
    holes: tuple[str, ...]
    inputs: tuple[str, ...]           # names the query reads but never defines: its inputs
    defined: tuple[str, ...] = ()     # names the query assigns, imports or defines
    bound: frozenset[str] = frozenset()  # every name its code binds, in any scope (see bound_names)
    returns: bool = True              # has a `return`; a nested query without one is a macro (LMQL)
    _code: dict = field(default_factory=dict, repr=False)
    _runnable: set = field(default_factory=set, repr=False)  # input name sets `checker.check` found no problem with
    _input_order: tuple[str, ...] | None = field(default=None, repr=False)  # api.input_order, found once

    @property
    def filename(self) -> str:
        return self.query.filename

    def source_line(self, line: int) -> str | None:
        lines = self.query.source.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None

    def function(self, params: tuple[str, ...], namespace: dict[str, Any]) -> types.FunctionType:
        """The generator function taking `params`, with `namespace` as its globals."""
        code = self._code.get(params)
        if code is None:
            # Let tracebacks and inspect.getsource (query functions' docstrings) see the query's text.
            lines = self.query.source.splitlines(keepends=True)
            linecache.cache[self.filename] = (len(self.query.source), None, lines, self.filename)
            module = _with_params(self.module, params)
            code = compile(module, self.filename, "exec")
            self._code[params] = code
        scope = {**namespace, _RT: runtime, _C: terms, "__builtins__": builtins}
        exec(code, scope)
        return scope[_FN]


def compile_query(query: nodes.Query) -> Program:
    """Compile a parsed query; raises LmqlSyntaxError for Python that does not parse."""
    holes = tuple(dict.fromkeys(
        p.name for prompt in query.prompts for p in prompt.parts if isinstance(p, nodes.Hole)))
    body = _parse_body(query)
    bound = bound_names(body)
    builder = _Builder(query, holes, bound)
    statements = [builder.visit(s) for s in body]
    statements = [s for item in statements for s in (item if isinstance(item, list) else [item])]
    fn = ast.FunctionDef(name=_FN, args=_arguments(()), body=statements or [ast.Pass()],
                         decorator_list=[], returns=None)
    if not any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(fn)):
        # A query without prompt statements is still a generator.
        fn.body.append(ast.If(test=ast.Constant(False), body=[ast.Expr(ast.Yield())], orelse=[]))
    module = ast.Module(body=[fn], type_ignores=[])
    ast.fix_missing_locations(module)
    inputs, defined = _names(module)
    return Program(query=query, module=module, holes=holes, inputs=inputs, defined=defined, bound=bound,
                   returns=_returns(body))


def _returns(body: list[ast.stmt]) -> bool:
    """The query's own code (not a function defined in it) has a `return` statement."""
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def bound_names(body: list[ast.stmt]) -> frozenset[str]:
    """Names the query's own code binds anywhere: assignments, imports, definitions, parameters."""
    names = set()
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return frozenset(names)


def _arguments(params: tuple[str, ...]) -> ast.arguments:
    return ast.arguments(posonlyargs=[], args=[ast.arg(arg=p) for p in params], vararg=None,
                         kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def _with_params(module: ast.Module, params: tuple[str, ...]) -> ast.Module:
    fn = module.body[0]
    new_fn = ast.FunctionDef(name=fn.name, args=_arguments(params), body=fn.body, decorator_list=[],
                             returns=None)
    ast.copy_location(new_fn, fn)
    new = ast.Module(body=[new_fn], type_ignores=[])
    return ast.fix_missing_locations(new)


def _names(module: ast.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(inputs, defined): globals the query's code reads, and names the query function itself binds."""
    table = symtable.symtable(ast.unparse(module), "<query>", "exec")
    names: set[str] = set()
    query_table = table.get_children()[0]
    defined = tuple(sorted(s.get_name() for s in query_table.get_symbols()
                           if s.is_assigned() or s.is_imported() or s.is_namespace()))

    def walk(t: symtable.SymbolTable) -> None:
        if t.get_type() != "module":
            for sym in t.get_symbols():
                if sym.is_global() and sym.is_referenced() and not sym.is_assigned():
                    names.add(sym.get_name())
        for child in t.get_children():
            walk(child)
    walk(table)
    known = set(dir(builtins)) | {"lmql", "lmql_lite"}
    return tuple(sorted(n for n in names if n not in known and not n.startswith("__lmql"))), defined


def _parse_body(query: nodes.Query) -> list[ast.stmt]:
    body: list[ast.stmt] = []
    for source, shift, wrapped in query.blocks():
        try:
            tree = ast.parse(source, query.filename)
        except SyntaxError as e:
            line = (e.lineno or 1) - shift
            raise _syntax_error(query, f"invalid Python: {e.msg}", max(line, 1), e.offset or 1) from None
        ast.increment_lineno(tree, -shift)
        body += tree.body[0].body if wrapped else tree.body
    return body


def _syntax_error(query: nodes.Query, message: str, line: int, column: int) -> LmqlSyntaxError:
    lines = query.source.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else None
    return LmqlSyntaxError(message, file=query.filename, line=line, column=column, source_line=src)


def parse_expr(query: nodes.Query, expr: nodes.Expr) -> ast.expr:
    """Parse an Expr's source and move its positions to where it stands in the query."""
    try:
        tree = ast.parse(expr.source.strip(), query.filename, mode="eval")
    except SyntaxError as e:
        line = expr.pos.line + (e.lineno or 1) - 1
        col = (e.offset or 1) + (expr.pos.column - 1 if (e.lineno or 1) == 1 else 0)
        raise _syntax_error(query, f"invalid expression: {e.msg}", line, col) from None
    for node in ast.walk(tree):
        if hasattr(node, "lineno"):
            if node.lineno == 1:
                node.col_offset += expr.pos.column - 1
                if getattr(node, "end_lineno", None) == 1:
                    node.end_col_offset += expr.pos.column - 1
            node.lineno += expr.pos.line - 1
            if getattr(node, "end_lineno", None) is not None:
                node.end_lineno += expr.pos.line - 1
    return tree.body


def as_expression(query: nodes.Query, expr: nodes.Expr) -> ast.Expression:
    """An Expr as a compilable expression, positioned in the query."""
    return ast.fix_missing_locations(ast.Expression(parse_expr(query, expr)))


def _at(node: ast.AST, pos: nodes.Pos) -> ast.AST:
    node.lineno, node.col_offset = pos.line, pos.column - 1
    node.end_lineno, node.end_col_offset = pos.line, pos.column - 1
    return node


def _name(id: str, ctx=None) -> ast.Name:
    return ast.Name(id=id, ctx=ctx or ast.Load())


def _attr(obj: str, attr: str) -> ast.Attribute:
    return ast.Attribute(value=_name(obj), attr=attr, ctx=ast.Load())


def _call(func: ast.expr, *args: ast.expr, **kwargs: ast.expr) -> ast.Call:
    return ast.Call(func=func, args=list(args), keywords=[ast.keyword(arg=k, value=v) for k, v in kwargs.items()])


def _thunk(body: ast.expr) -> ast.Lambda:
    return ast.Lambda(args=_arguments(()), body=body)


class _Builder(ast.NodeTransformer):
    """Rewrites the query body: prompt placeholders become yields, `await` runs synchronously."""

    def __init__(self, query: nodes.Query, holes: tuple[str, ...], bound: frozenset[str]):
        self.query = query
        self.holes = holes
        self.bound = bound
        self.global_where = parse_expr(query, query.where) if query.where else None
        self.distribution = query.distribution
        if self.distribution and self.distribution.var not in holes:
            d = self.distribution
            raise _syntax_error(query, f"distribution variable {d.var} is not a hole of this query",
                                d.pos.line, d.pos.column)

    # Functions defined in the query keep their own semantics: no prompt statements inside.
    def visit_FunctionDef(self, node):
        for inner in ast.walk(node):
            if _prompt_index(inner) is not None:
                raise _syntax_error(self.query, "prompt statements can only stand in the query body; "
                                    "write a query function with @lmql.query and a docstring",
                                    inner.lineno, inner.col_offset + 1)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        return node

    def visit_Await(self, node):
        self.generic_visit(node)
        return ast.copy_location(_call(_attr(_RT, "await_"), node.value), node)

    def visit_Expr(self, node):
        k = _prompt_index(node)
        if k is None:
            return self.generic_visit(node)
        return self.prompt(self.query.prompts[k])

    def prompt(self, prompt: nodes.Prompt) -> list[ast.stmt]:
        statement_holes = [p.name for p in prompt.parts if isinstance(p, nodes.Hole)]
        remaining = list(statement_holes)
        scoped = parse_expr(self.query, prompt.where) if prompt.where else None
        out: list[ast.stmt] = []
        pending: list[ast.expr] = []  # f-string pieces of the current run of text

        def flush():
            if pending:
                text = ast.JoinedStr(values=list(pending))
                out.append(ast.Expr(ast.Yield(_call(_attr(_RT, "Text"), text))))
                pending.clear()

        for i, part in enumerate(prompt.parts):
            if isinstance(part, nodes.Text):
                pending.append(ast.Constant(part.text))
            elif isinstance(part, nodes.Interp):
                spec = _format_spec(part.format_spec) if part.format_spec else None
                conv = ord(part.conversion) if part.conversion else -1
                pending.append(ast.FormattedValue(parse_expr(self.query, part.expr), conv, spec))
            elif isinstance(part, nodes.Role):
                flush()
                out.append(_at(ast.Expr(ast.Yield(_call(_attr(_RT, "Role"), ast.Constant(part.role)))), part.pos))
            else:
                flush()
                out.append(self.hole(part, scoped, statement_holes, tuple(remaining[1:]),
                                     _literal_after(prompt.parts[i + 1:]), self.written(prompt)))
                remaining.pop(0)
        flush()
        for s in out:
            if not hasattr(s, "lineno"):
                _at(s, prompt.pos)
            for n in ast.walk(s):
                if not hasattr(n, "lineno") and isinstance(n, (ast.expr, ast.stmt)):
                    ast.copy_location(n, s)
        return out

    def hole(self, hole: nodes.Hole, scoped: ast.expr | None, statement_holes, later, following: str,
             written: str | None) -> ast.stmt:
        kwargs: dict[str, ast.expr] = {}
        wheres = []
        if scoped is not None:
            wheres.append(_WhereRewriter(set(statement_holes) | {hole.name}, self.bound).visit(_copy(scoped)))
        if self.global_where is not None:
            wheres.append(_WhereRewriter(set(self.holes), self.bound).visit(_copy(self.global_where)))
        if wheres:
            where = wheres[0] if len(wheres) == 1 else _call(_attr(_C, "and_"), *map(_thunk, wheres))
            kwargs["where"] = ast.Lambda(args=_arguments((_RESOLVE,)), body=where)
        if hole.type is not None:
            kwargs["type"] = self.hole_type(parse_expr(self.query, hole.type))
        if hole.decorators:
            kwargs["decorators"] = ast.Tuple([parse_expr(self.query, d) for d in hole.decorators], ast.Load())
        if later:
            kwargs["later"] = ast.Tuple([ast.Constant(n) for n in later], ast.Load())
        if following:
            kwargs["following"] = ast.Constant(following)
        if written:
            kwargs["constraint"] = ast.Constant(written)
        if self.distribution and self.distribution.var == hole.name:
            kwargs["distribution"] = _thunk(parse_expr(self.query, self.distribution.values))
        event = _call(_attr(_RT, "Hole"), ast.Constant(hole.name), ast.Constant(hole.pos.line),
                      ast.Constant(hole.pos.column), **kwargs)
        stmt = ast.Assign(targets=[_name(hole.name, ast.Store())], value=ast.Yield(event))
        return _at(stmt, hole.pos)

    def written(self, prompt: nodes.Prompt) -> str | None:
        """The where-clause text that applies to the statement's holes, as written (scoped and global joined by `and`)."""
        texts = [w.source.strip() for w in (prompt.where, self.query.where) if w is not None]
        return " and ".join(f"({t})" if len(texts) > 1 else t for t in texts) or None

    @staticmethod
    def hole_type(expr: ast.expr) -> ast.expr:
        if isinstance(expr, ast.Call):  # [X: subquery(args)]
            return ast.Call(func=_attr(_RT, "nested"), args=[expr.func, *expr.args], keywords=expr.keywords)
        return expr


def _literal_after(parts) -> str:
    """The literal text at the start of `parts` (a statement's parts after a hole)."""
    text = ""
    for part in parts:
        if not isinstance(part, nodes.Text):
            break
        text += part.text
    return text


def _format_spec(spec: str) -> ast.JoinedStr:
    """A format spec as f-string parts, so nested fields like `{x:>{width}}` work."""
    return ast.parse("f" + repr("{0:" + spec + "}"), mode="eval").body.values[0].format_spec


def _prompt_index(node: ast.AST) -> int | None:
    if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == _PROMPT):
        return node.value.args[0].value
    return None


def _copy(expr: ast.expr) -> ast.expr:
    return copy.deepcopy(expr)


def where_rewriter(holes: set[str], bound: frozenset[str]) -> "_WhereRewriter":
    """The rewriter of where expressions that the compiled query uses (for the static checks)."""
    return _WhereRewriter(holes, bound)


def where_function(conjuncts: list[ast.expr]) -> ast.Expression:
    """`lambda resolve: c1 and c2 ...` over rewritten conjuncts, as compiled holes hold it; see where_names."""
    body = conjuncts[0] if len(conjuncts) == 1 else _call(_attr(_C, "and_"), *map(_thunk, conjuncts))
    return ast.fix_missing_locations(ast.Expression(ast.Lambda(args=_arguments((_RESOLVE,)), body=body)))


def where_names() -> dict[str, Any]:
    """The globals a where_function needs."""
    return {_C: terms, _RT: runtime}


class _WhereRewriter(ast.NodeTransformer):
    """Rewrites a where expression to build constraint terms (see constraints.terms)."""

    def __init__(self, holes: set[str], bound: frozenset[str] = frozenset()):
        self.holes = holes
        self.bound = bound  # names the query defines: a `def regex(...)` of its own is not REGEX

    def visit_Name(self, node):
        if node.id in self.holes and isinstance(node.ctx, ast.Load):
            return ast.copy_location(_call(_name(_RESOLVE), ast.Constant(node.id)), node)
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        fn = "and_" if isinstance(node.op, ast.And) else "or_"
        return ast.copy_location(_call(_attr(_C, fn), *map(_thunk, node.values)), node)

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            return ast.copy_location(_call(_attr(_C, "not_"), node.operand), node)
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        pairs = []
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            pairs.append(_call(_attr(_C, "compare"), _thunk(left), ast.Constant(_OP_TEXT[type(op)]), _thunk(right)))
            left = right
        out = pairs[0] if len(pairs) == 1 else _call(_attr(_C, "and_"), *map(_thunk, pairs))
        return ast.copy_location(out, node)

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        builder = terms.builder(func.id) if isinstance(func, ast.Name) and func.id not in self.bound else None
        if builder is not None:
            return ast.copy_location(_call(_attr(_C, builder), *node.args), node)
        if isinstance(func, ast.Name) and func.id == "len" and len(node.args) == 1:
            return ast.copy_location(_call(_attr(_C, "len_"), node.args[0]), node)
        source = ast.unparse(node)
        call = ast.Call(func=_attr(_C, "call"), args=[func, ast.Constant(source), *node.args],
                        keywords=node.keywords)
        return ast.copy_location(call, node)

    def visit_Lambda(self, node):
        return node


_OP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!=", ast.Gt: ">", ast.GtE: ">=",
            ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
