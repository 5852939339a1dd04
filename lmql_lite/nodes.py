"""The parsed query: plain frozen dataclasses, positions 1-based (line, column) in the query source."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pos:
    line: int
    column: int


@dataclass(frozen=True)
class Expr:
    """A Python expression, kept as its source text; `pos` is where that text starts."""
    source: str
    pos: Pos


@dataclass(frozen=True)
class Text:
    """Literal prompt text, escapes resolved (`{{` → `{`, `[[` → `[`, `\\n` → newline)."""
    text: str


@dataclass(frozen=True)
class Interp:
    """`{expr}`, `{expr!r}`, `{expr:>10}`: Python interpolated into the prompt."""
    expr: Expr
    conversion: str | None = None  # "r", "s" or "a"
    format_spec: str | None = None


@dataclass(frozen=True)
class Hole:
    """`[NAME]`, `[NAME: type]`, `[@fn NAME]`: text the model writes."""
    name: str
    pos: Pos
    type: Expr | None = None          # int, float, r"regex", a dataclass, subquery or subquery(args)
    decorators: tuple[Expr, ...] = ()  # applied innermost last: [@a @b X] is a(b(X))


@dataclass(frozen=True)
class Role:
    """`{:system}`, `{:user}`, `{:assistant}`: starts a chat message of that role."""
    role: str
    pos: Pos


Part = Text | Interp | Hole | Role


@dataclass(frozen=True)
class Prompt:
    """A prompt statement: one or more adjacent strings, optionally `where C` scoped to its holes."""
    parts: tuple[Part, ...]
    pos: Pos
    where: Expr | None = None


@dataclass(frozen=True)
class Decoder:
    """The decoder clause: `argmax`, `sample(n=2, temperature=0.8)`, `beam(n=3)`."""
    name: str
    pos: Pos
    args: tuple[Expr, ...] = ()
    kwargs: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True)
class Distribution:
    """`distribution VAR in [values]`."""
    var: str
    values: Expr
    pos: Pos


@dataclass(frozen=True)
class Query:
    """A whole query.

    `body` is the query's Python code, aligned with the source: the same number of lines, each
    statement on its original line and column. The decoder clause and the `from`/`where`/
    `distribution` clauses are blanked out (replaced by spaces), and each prompt statement is
    replaced by the call `__lmql_prompt__(K)` (K indexes `prompts`), padded with newlines inside
    the parentheses when the statement spans several lines. `body_indented` says the body is an
    indented block (standalone syntax, `argmax` on a line of its own or `argmax "..."` on one
    line), so the compiler parses it inside a block.
    """
    body: str
    prompts: tuple[Prompt, ...]
    body_indented: bool = False
    decoder: Decoder | None = None
    model: Expr | None = None
    where: Expr | None = None
    distribution: Distribution | None = None
    filename: str = "<query>"
    source: str = ""
