"""The interpreter's event stream: what a run did, as plain frozen dataclasses with `to_json()`.

A consumer (`lmql_lite.stream`, the CLI's streaming output and `--trace`, the playground)
sees, for each result being decoded (its `row`): prompt `Text`, a `Hole` starting, each
`Token` of it with its probabilities and the mask's size, the `HoleEnd` with its reason, a
`Distribution` where the query scores values, the `ResultEvent`, and last `Done`. A user's
mistake ends the stream with an `ErrorEvent` (then `Done`). docs/events.md is the reference.

`to_json()` gives a JSON-safe dict whose first key is `"type"`; non-finite floats become null.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .result import Result, _jsonable

__all__ = ["Event", "Text", "Hole", "Alternative", "Token", "HoleEnd", "Distribution", "ResultEvent",
           "ErrorEvent", "Done", "TYPES", "HOWS", "REASONS"]

HOWS = ("chosen", "forced", "healed")
# Why a hole's value ended (result.HoleEnd.reason; docs/language.md, "Where a value ends").
REASONS = ("end", "following text", "not a continuation", "stop", "complete", "budget", "default bound",
           "max_len", "max_tokens")


def _safe(x: Any) -> Any:
    """`x` with every non-finite float made None (JSON has no NaN or infinity)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_safe(v) for v in x]
    return x


@dataclass(frozen=True)
class Event:
    """Base of every event: `type` names it in JSON."""
    type: ClassVar[str] = ""

    def to_json(self) -> dict:
        out = {"type": self.type}
        for f in dataclasses.fields(self):
            out[f.name] = _safe(self._json_field(f.name, getattr(self, f.name)))
        return out

    def _json_field(self, name: str, value: Any) -> Any:
        if isinstance(value, tuple):
            return [v.to_json() if isinstance(v, Alternative) else v for v in value]
        return value


@dataclass(frozen=True)
class Text(Event):
    """Prompt text appended to `row` (not chosen by the model).

    `role` is the chat message the text belongs to (None outside chat); `kind` says what the
    text is: "prompt" (the query's own text), "role" (a chat template's markers), "value" (a
    value the model did not spell, e.g. a nested query's return value).
    """
    type: ClassVar[str] = "text"
    row: int
    text: str
    role: str | None = None
    kind: str = "prompt"


@dataclass(frozen=True)
class Hole(Event):
    """A hole of `row` starts; `constraint` is the where-clause text about it, as written (None: unconstrained)."""
    type: ClassVar[str] = "hole"
    row: int
    name: str
    constraint: str | None
    line: int | None
    column: int | None


@dataclass(frozen=True)
class Alternative:
    """One of a token event's top candidates under the unmasked distribution; `allowed` False: the mask removed it."""
    id: int
    text: str
    p_raw: float
    allowed: bool

    def to_json(self) -> dict:
        return _safe(dataclasses.asdict(self))


@dataclass(frozen=True)
class Token(Event):
    """One token appended to a hole of `row`.

    `how`: "chosen" by the decoder, "forced" (the constraint allowed nothing else; no choice was
    made) or "healed" (token healing's re-spelling of the prompt's last token). `p`: its
    probability under the masked distribution the decoder chose from (None when forced);
    `p_raw`: before the mask (None when not computed: forced, or no consumer asked for it).
    `allowed`: tokens the mask allowed (1 for forced); `vocab`: the vocabulary's size. `top`:
    the k most likely tokens of the unmasked distribution plus the chosen one (empty when not
    computed). `ms`: milliseconds since the previous token event of this hole, or its start
    (forward pass, mask and choice). `shown`: the text the token adds to the value as it will
    stand, for streaming it (whole UTF-8 characters; "" for an end of sequence, for the hole's
    last token, whose text may be cut by a stop phrase, and for a value a decorator rewrites:
    the `HoleEnd` text completes it). `heal`: for a healed token, the prompt text it re-spells.
    """
    type: ClassVar[str] = "token"
    row: int
    hole: str
    id: int
    text: str
    how: str
    p: float | None
    p_raw: float | None
    allowed: int
    vocab: int
    top: tuple[Alternative, ...] = ()
    ms: float = 0.0
    shown: str = ""
    heal: str = ""


@dataclass(frozen=True)
class HoleEnd(Event):
    """A hole of `row` has its value: `text` as it stands in the prompt, `value` after conversion.

    `reason` is one of REASONS; `tokens` is how many tokens the hole took, `passes` how many
    forward passes its row took part in while it was filled.
    """
    type: ClassVar[str] = "hole_end"
    row: int
    name: str
    value: Any
    text: str
    reason: str
    tokens: int
    passes: int

    def _json_field(self, name: str, value: Any) -> Any:
        return _jsonable(value) if name == "value" else super()._json_field(name, value)


@dataclass(frozen=True)
class Distribution(Event):
    """`distribution X in [...]` was scored for `row`: each value's text → its normalised probability."""
    type: ClassVar[str] = "distribution"
    row: int
    name: str
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultEvent(Event):
    """`row`'s result is complete; `result` is the `Result` itself (JSON: `Result.to_json()`)."""
    type: ClassVar[str] = "result"
    row: int
    result: Result

    def _json_field(self, name: str, value: Any) -> Any:
        return value.to_json() if name == "result" else super()._json_field(name, value)


@dataclass(frozen=True)
class ErrorEvent(Event):
    """A user's error (an `LmqlError`) ended the run; positioned at the query's file, line and column when known.

    `kind` is the error's class name (`ConstraintError`, ...); `source_line` the query line's text.
    """
    type: ClassVar[str] = "error"
    message: str
    file: str | None
    line: int | None
    column: int | None
    kind: str
    source_line: str | None = None

    @classmethod
    def of(cls, error) -> "ErrorEvent":
        """The event for an `LmqlError`."""
        return cls(error.message, error.file, error.line, error.column, type(error).__name__, error.source_line)


@dataclass(frozen=True)
class Done(Event):
    """The last event of a stream."""
    type: ClassVar[str] = "done"


TYPES = {cls.type: cls for cls in (Text, Hole, Token, HoleEnd, Distribution, ResultEvent, ErrorEvent, Done)}
