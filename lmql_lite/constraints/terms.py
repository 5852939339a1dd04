"""Constraint terms, and the builders that compiled `where` clauses call to turn Python expressions into them.

A `where` clause is ordinary Python in the query's scope, rewritten by the compiler so that
`and`, `or`, `not`, comparisons, `in`, `len(...)` and calls go through the builders below.
With concrete values they compute what Python would; when a hole's symbolic `Var` takes part
they build a term instead. `UNKNOWN` stands for a hole of the same statement that is decoded
later: a constraint on it cannot restrict the current hole, so it reads as true here.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConstraintError


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


class Term:
    """A constraint on the text of holes."""


@dataclass(frozen=True)
class Var:
    """The hole being decoded, as a symbol."""
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Tokens:
    """TOKENS(X): the hole's tokens."""
    var: str

    def __str__(self) -> str:
        return f"TOKENS({self.var})"


@dataclass(frozen=True)
class Length:
    """len(X) in characters, or len(TOKENS(X)) in tokens."""
    of: Var | Tokens

    def __str__(self) -> str:
        return f"len({self.of})"


@dataclass(frozen=True)
class StopsAt(Term):
    var: str
    phrase: str

    def __str__(self) -> str:
        return f"STOPS_AT({self.var}, {self.phrase!r})"


@dataclass(frozen=True)
class StopsBefore(Term):
    var: str
    phrase: str

    def __str__(self) -> str:
        return f"STOPS_BEFORE({self.var}, {self.phrase!r})"


@dataclass(frozen=True)
class Regex(Term):
    var: str
    pattern: str

    def __str__(self) -> str:
        return f"REGEX({self.var}, {self.pattern!r})"


@dataclass(frozen=True)
class Int(Term):
    var: str

    def __str__(self) -> str:
        return f"INT({self.var})"


@dataclass(frozen=True)
class Float(Term):
    var: str

    def __str__(self) -> str:
        return f"FLOAT({self.var})"


@dataclass(frozen=True)
class Json(Term):
    var: str
    schema: Any = field(hash=False, compare=False)

    def __str__(self) -> str:
        return f"JSON({self.var}, ...)"


@dataclass(frozen=True)
class Grammar(Term):
    var: str
    text: str

    def __str__(self) -> str:
        return f"GRAMMAR({self.var}, ...)"


@dataclass(frozen=True)
class Compare(Term):
    """`left op right` where left is the hole or a length of it and right is a concrete value."""
    left: Var | Length
    op: str  # one of < <= == != >= >
    right: Any

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right!r}"


@dataclass(frozen=True)
class In(Term):
    """X in [options]: the whole text is one of the options."""
    var: str
    options: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.var} in {list(self.options)!r}"


@dataclass(frozen=True)
class Contains(Term):
    """"s" in X: the text contains the substring."""
    var: str
    substring: str

    def __str__(self) -> str:
        return f"{self.substring!r} in {self.var}"


@dataclass(frozen=True)
class And(Term):
    parts: tuple[Term, ...]

    def __str__(self) -> str:
        return " and ".join(_paren(p) for p in self.parts)


@dataclass(frozen=True)
class Or(Term):
    parts: tuple[Term, ...]

    def __str__(self) -> str:
        return " or ".join(_paren(p) for p in self.parts)


@dataclass(frozen=True)
class Not(Term):
    part: Term

    def __str__(self) -> str:
        return f"not {_paren(self.part)}"


@dataclass(frozen=True)
class Predicate(Term):
    """A Python call on the hole's value that cannot be masked: checked when the hole ends."""
    fn: Callable = field(hash=False, compare=False)
    args: tuple = field(hash=False, compare=False)
    kwargs: tuple = field(hash=False, compare=False)
    source: str = ""

    def __str__(self) -> str:
        return self.source or f"{getattr(self.fn, '__name__', 'predicate')}(...)"

    def check(self, var: str, value: Any) -> bool:
        """Call the predicate with `value` in place of the hole."""
        def sub(a):
            if isinstance(a, Var) and a.name == var:
                return value
            if isinstance(a, Tokens) and a.var == var:
                raise ConstraintError(f"TOKENS({var}) cannot be passed to a Python function")
            return a
        return bool(self.fn(*[sub(a) for a in self.args], **{k: sub(v) for k, v in self.kwargs}))


def _paren(t: Term) -> str:
    return f"({t})" if isinstance(t, (And, Or)) else str(t)


def _symbolic(x: Any) -> bool:
    return isinstance(x, (Var, Tokens, Length, Term))


def _var_name(x: Any, what: str) -> str:
    if isinstance(x, Var):
        return x.name
    raise ConstraintError(f"{what} expects a hole variable as its first argument, got {x!r}")


# ---- builders called by compiled where clauses -------------------------------------------

def and_(*thunks: Callable[[], Any]) -> Any:
    """`a and b and ...`; each operand is a thunk so concrete operands short-circuit as in Python."""
    parts: list[Term] = []
    for thunk in thunks:
        x = thunk()
        if x is UNKNOWN:
            continue
        if isinstance(x, Term):
            parts.extend(x.parts if isinstance(x, And) else (x,))
        elif not x:
            return x
    if not parts:
        return True
    parts = _stopped(parts)
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _stopped(parts: list[Term]) -> list[Term]:
    """Choices and `==` texts of a hole, as its stop phrases leave them (LMQL: the stop ends the value first).

    `STOPS_BEFORE(G, '"') and G == 'abc",'`: text written as `abc",` ends at `"`, so the value the
    constraint admits is `abc`. Every value still satisfies the term, which now says so.
    """
    stops: dict[str, list[tuple[str, bool]]] = {}
    for p in parts:
        if isinstance(p, (StopsAt, StopsBefore)):
            stops.setdefault(p.var, []).append((p.phrase, isinstance(p, StopsBefore)))
    if not stops:
        return parts

    def cut(var: str, text: str) -> str:
        ends = []
        for phrase, before in stops.get(var, ()):
            i = text.find(phrase)
            if i >= 0:
                ends.append((i + len(phrase), i if before else i + len(phrase)))
        return text[:min(ends)[1]] if ends else text

    out = []
    for p in parts:
        if isinstance(p, In) and p.var in stops:
            p = In(p.var, tuple(dict.fromkeys(cut(p.var, o) for o in p.options)))
        elif isinstance(p, Compare) and isinstance(p.left, Var) and p.op == "==" and isinstance(p.right, str) \
                and p.left.name in stops:
            p = Compare(p.left, "==", cut(p.left.name, p.right))
        out.append(p)
    return out


def or_(*thunks: Callable[[], Any]) -> Any:
    """`a or b or ...`: an UNKNOWN operand makes the whole alternative unknown (it cannot restrict)."""
    parts: list[Term] = []
    unknown = False
    for thunk in thunks:
        x = thunk()
        if x is UNKNOWN:
            unknown = True
        elif isinstance(x, Term):
            parts.extend(x.parts if isinstance(x, Or) else (x,))
        elif x:
            return x
    if unknown:
        return UNKNOWN
    if not parts:
        return False
    return parts[0] if len(parts) == 1 else Or(tuple(parts))


def not_(x: Any) -> Any:
    if x is UNKNOWN:
        return UNKNOWN
    if isinstance(x, Term):
        return x.part if isinstance(x, Not) else Not(x)
    return not x


_OPS = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">=": operator.ge, ">": operator.gt}
_FLIP = {"<": ">", "<=": ">=", "==": "==", "!=": "!=", ">=": "<=", ">": "<"}


def compare(left: Any, op: str, right: Any) -> Any:
    """One comparison `left op right` (chains are split into an and_ by the compiler).

    The operands come as thunks, so that a comparison about a later hole (`B in [A.upper()]`
    while A is decoded) is UNKNOWN before its other side is evaluated.
    """
    left = left()
    if left is UNKNOWN:
        return UNKNOWN
    right = right()
    if right is UNKNOWN:
        return UNKNOWN
    if op in ("in", "not in"):
        term = _membership(left, right)
        return not_(term) if op == "not in" else term
    if op in ("is", "is not"):
        if _symbolic(left) or _symbolic(right):
            raise ConstraintError(f"'{op}' cannot constrain a hole; use == or !=")
        return (left is right) if op == "is" else (left is not right)
    if not (_symbolic(left) or _symbolic(right)):
        return _OPS[op](left, right)
    if _symbolic(right) and not _symbolic(left):
        left, op, right = right, _FLIP[op], left
    if _symbolic(right):
        raise ConstraintError(f"cannot compare two holes: {left} {op} {right}")
    if isinstance(left, Tokens):
        raise ConstraintError(f"compare len(TOKENS({left.var})), not TOKENS({left.var}) itself")
    if isinstance(left, Length):
        _check_bound(left, op, right)
    return Compare(left, op, right)


def _check_bound(left: Length, op: str, right: Any) -> None:
    """A length compares with a number that is not NaN (an int of any size, or a float, inf included)."""
    if isinstance(right, bool) or not isinstance(right, (int, float)):
        raise ConstraintError(f"{left} {op} {right!r}: a length compares with a number")
    if right != right:
        raise ConstraintError(f"{left} {op} {right!r}: a length cannot be compared with NaN")


def _membership(item: Any, container: Any) -> Any:
    if isinstance(container, Var):
        if not isinstance(item, str):
            raise ConstraintError(f"'in {container.name}' needs a string on its left, got {item!r}")
        return Contains(container.name, item)
    if isinstance(item, Var):
        if isinstance(container, (str, bytes)) or not hasattr(container, "__iter__"):
            raise ConstraintError(f"'{item.name} in ...' needs a list of strings, got {container!r}")
        options = tuple(container)
        bad = [o for o in options if not isinstance(o, str)]
        if bad:
            raise ConstraintError(f"'{item.name} in [...]' options must be strings, got {bad[0]!r}")
        return In(item.name, options)
    if _symbolic(item) or _symbolic(container):
        raise ConstraintError(f"unsupported membership test: {item} in {container}")
    return item in container


def len_(x: Any) -> Any:
    if x is UNKNOWN:
        return UNKNOWN
    if isinstance(x, (Var, Tokens)):
        return Length(x)
    return len(x)


def call(fn: Callable, source: str, *args: Any, **kwargs: Any) -> Any:
    """A call that is not a constraint builtin: run it, or defer it to a post-check when it sees a hole."""
    values = list(args) + list(kwargs.values())
    if any(v is UNKNOWN for v in values):
        return UNKNOWN
    if any(_symbolic(v) for v in values):
        return Predicate(fn, tuple(args), tuple(kwargs.items()), source)
    return fn(*args, **kwargs)


def _phrase(name: str, var: Any, phrase: Any) -> tuple[str, str] | None:
    if var is UNKNOWN:
        return None
    v = _var_name(var, name)
    if not isinstance(phrase, str) or not phrase:
        raise ConstraintError(f"{name}({v}, ...) needs a non-empty string, got {phrase!r}")
    return v, phrase


def STOPS_AT(var: Any, phrase: Any) -> Any:
    if not isinstance(var, Var) and var is not UNKNOWN:
        return True  # a variable decoded earlier: its stop already happened
    p = _phrase("STOPS_AT", var, phrase)
    return UNKNOWN if p is None else StopsAt(*p)


def STOPS_BEFORE(var: Any, phrase: Any) -> Any:
    if not isinstance(var, Var) and var is not UNKNOWN:
        return True
    p = _phrase("STOPS_BEFORE", var, phrase)
    return UNKNOWN if p is None else StopsBefore(*p)


def TOKENS(var: Any) -> Any:
    if isinstance(var, Var):
        return Tokens(var.name)
    # A hole decoded earlier: its token budget was enforced then, so it cannot restrict this one.
    return UNKNOWN


def REGEX(var: Any, pattern: Any) -> Any:
    if var is UNKNOWN:
        return UNKNOWN
    if not isinstance(pattern, str):
        raise ConstraintError(f"REGEX needs a pattern string, got {pattern!r}")
    if not isinstance(var, Var):
        import re
        return re.fullmatch(pattern, str(var)) is not None
    return Regex(var.name, pattern)


def INT(var: Any) -> Any:
    if var is UNKNOWN:
        return UNKNOWN
    if not isinstance(var, Var):
        return isinstance(var, int) or str(var).strip().lstrip("-").isdigit()
    return Int(var.name)


def FLOAT(var: Any) -> Any:
    if var is UNKNOWN:
        return UNKNOWN
    if not isinstance(var, Var):
        try:
            float(var)
            return True
        except (TypeError, ValueError):
            return False
    return Float(var.name)


def JSON(var: Any, schema: Any = None) -> Any:
    if var is UNKNOWN:
        return UNKNOWN
    return Json(_var_name(var, "JSON"), schema)


def GRAMMAR(var: Any, text: Any) -> Any:
    if var is UNKNOWN:
        return UNKNOWN
    if not isinstance(text, str):
        raise ConstraintError(f"GRAMMAR needs Lark grammar text, got {text!r}")
    return Grammar(_var_name(var, "GRAMMAR"), text)


BUILTINS = ("STOPS_AT", "STOPS_BEFORE", "TOKENS", "REGEX", "INT", "FLOAT", "JSON", "GRAMMAR")


def int_(x: Any, *rest: Any) -> Any:
    """`int(...)` in a where clause: INT on the hole, Python's int on anything else."""
    return INT(x) if (isinstance(x, Var) or x is UNKNOWN) and not rest else int(x, *rest)


def float_(x: Any) -> Any:
    """`float(...)` in a where clause: FLOAT on the hole, Python's float on anything else."""
    return FLOAT(x) if isinstance(x, Var) or x is UNKNOWN else float(x)


# Lowercase spellings: LMQL's `stops_at`/`stops_before`, and the same for every other builtin.
# A name the query itself defines (`def regex(...)`, `import json`) is the query's, not ours.
ALIASES = {name.lower(): name for name in BUILTINS}
_BUILDERS = {**{name: name for name in BUILTINS}, **ALIASES, "int": "int_", "float": "float_"}


def builder(name: str) -> str | None:
    """The attribute of this module that a where clause's call of `name` goes to, or None."""
    return _BUILDERS.get(name)
