"""What a run returns: `Result` (prompt, variables, value, distribution, log-probabilities) and its `Trace`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenRecord:
    """One token of a hole, for `--trace`."""
    variable: str
    token: int
    text: str
    allowed: int          # tokens the mask allowed at this step (0 for forced tokens)
    how: str              # "chosen", "forced" or "cached" (chosen in a run whose work the run cache kept)
    logprob: float        # under the masked distribution the decoder chose from
    seconds: float        # since the previous token of the hole (or its start): forward pass and choice


@dataclass
class HoleEnd:
    """Why a hole's value ended (docs/language.md, "Where a value ends")."""
    variable: str
    reason: str    # end, following text, not a continuation, stop, complete, budget, default bound, max_len, max_tokens
    message: str


CUT = ("budget", "default bound", "max_len", "max_tokens")  # reasons that cut a value the model might have gone on with


@dataclass
class Trace:
    forward_passes: int = 0    # passes this result's row took part in
    tokens_fed: int = 0        # tokens that went through the model for this result
    prompt_tokens: int = 0     # tokens of prompt text (chat markers included)
    generated_tokens: int = 0  # hole tokens chosen by the decoder
    forced_tokens: int = 0     # hole tokens appended without a choice (fast-forward)
    cached_tokens: int = 0     # hole tokens replayed from the run cache (counted above too, with no pass)
    mask_seconds: float = 0.0  # time spent building and applying masks
    drafted_tokens: int = 0    # speculative draft tokens fed to the model
    accepted_tokens: int = 0   # of them, those the result kept (the rest were rejected and truncated)
    notes: list[str] = field(default_factory=list)
    tokens: list[TokenRecord] | None = None
    ends: list[HoleEnd] = field(default_factory=list)
    events: list | None = None  # the result's events (events.py), kept by a run with trace or events

    @property
    def rejected_tokens(self) -> int:
        """Draft tokens fed to the model and then truncated."""
        return self.drafted_tokens - self.accepted_tokens


@dataclass
class Result:
    prompt: str
    variables: dict[str, Any]
    value: Any = None
    distribution: dict[str, float] | None = None            # value → probability
    distribution_logprobs: dict[str, float] | None = None   # value → total log-probability
    logprobs: dict[str, float] = field(default_factory=dict)
    logprob: float = 0.0
    trace: Trace = field(default_factory=Trace)
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, variable) of values in `prompt`

    def _repr_html_(self) -> str:
        """Jupyter's view: the coloured token view when the run kept its events, else the prompt with its values marked."""
        from . import tokenview
        return tokenview.result_html(self)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "variables": _jsonable(self.variables),
                "distribution": self.distribution, "value": _jsonable(self.value),
                "ends": [dataclasses.asdict(e) for e in self.trace.ends], "notes": list(self.trace.notes)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if dataclasses.is_dataclass(x):
        return _jsonable(dataclasses.asdict(x))
    if hasattr(x, "model_dump"):
        return _jsonable(x.model_dump())
    return repr(x)
