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
    the parentheses when the statement spans several lines. The first `prologue_lines` lines are
    Python written before the decoder line (LMQL's prologue), a block of their own; `body_indented`
    says the rest is an indented block (standalone syntax, or a query indented as a whole).
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
    prologue_lines: int = 0

    def blocks(self) -> list[tuple[str, int, bool]]:
        """The body as Python modules to parse: (text, lines to subtract from its line numbers, wrapped).

        An indented block is parsed inside `if True:`, written on a line of the block that is blank
        (the decoder's) when there is one, else on a line of its own (shift 1).
        """
        lines = self.body.split("\n")
        p = self.prologue_lines
        texts = ["\n".join(lines[:p]), "\n" * p + "\n".join(lines[p:])] if p else [self.body]
        out = []
        for text in texts:
            code = [line for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]
            if not code or not code[0][0].isspace():
                out.append((text, 0, False))
                continue
            first, _, rest = text.partition("\n")
            if not first.strip() and rest:
                out.append(("if True:\n" + rest, 0, True))
            else:
                out.append(("if True:\n" + text, 1, True))
        return out
