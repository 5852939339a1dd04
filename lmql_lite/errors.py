"""The errors a user can cause: one `LmqlError` hierarchy, each able to point at a source position."""
from __future__ import annotations


class LmqlError(Exception):
    """Base of every error lmql_lite reports to a user.

    `file`, `line` (1-based) and `column` (1-based) locate the error in the query source when
    known; `source_line` is that line's text, so the message can show it with a caret.
    """

    exit_code = 1

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, source_line: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.source_line = source_line

    def locate(self, *, file=None, line=None, column=None, source_line=None) -> "LmqlError":
        """Fill in the position where it is still unknown; returns self."""
        self.file = self.file or file
        if self.line is None:
            self.line, self.column = line, column
            self.source_line = source_line
        return self

    def __str__(self) -> str:
        if self.line is None:
            where = f"{self.file}: " if self.file else ""
            return f"{where}{self.message}"
        where = f"{self.file or '<query>'}:{self.line}:{self.column or 1}: {self.message}"
        if self.source_line is None:
            return where
        caret = " " * max((self.column or 1) - 1, 0) + "^"
        return f"{where}\n    {self.source_line.rstrip()}\n    {caret}"


class LmqlSyntaxError(LmqlError):
    """The query text does not parse."""
    exit_code = 2


class ConstraintError(LmqlError):
    """A constraint is malformed, unsatisfiable, or a value fails a post-check."""
    exit_code = 3


class ConstraintBudgetError(ConstraintError):
    """Compiling a constraint would pass its size or time budget (the message names the knob that raises it)."""


class ModelError(LmqlError):
    """A model cannot be found, loaded or run."""
    exit_code = 4


class QueryArgumentError(LmqlError):
    """A query input is missing, unknown or malformed."""
    exit_code = 5


class QueryRuntimeError(LmqlError):
    """The query's own Python code raised; the position is the query's line, not ours."""
    exit_code = 6


class QueryTimeoutError(LmqlError):
    """The query ran past its time limit."""
    exit_code = 7


class WorkerError(LmqlError):
    """A worker process running rows of a batch (a Ray actor) died, and died again when its rows were retried."""
