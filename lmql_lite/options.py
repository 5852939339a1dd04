"""The decoders a query may name — names, aliases, options — in one table, and the options a run decodes with.

The parser (which first lines are decoder clauses), the compiler, the checker and the api all
read `DECODERS`; `decoders.py` holds one class per row. Light on purpose: `lmql-lite check`
imports it, and it must not pull in numpy or torch.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import QueryArgumentError


@dataclass(frozen=True)
class Decoder:
    """One row of the decoder table."""
    name: str
    aliases: tuple[str, ...] = ()      # LMQL spellings that mean this decoder
    options: frozenset[str] = frozenset()  # options it accepts besides SHARED_OPTIONS
    positional_n: bool = False         # `sample(3)`: the first positional argument is n
    batches_inputs: bool = True        # several inputs may decode together in one batch
    row_per_result: bool = False       # each of the n results starts as its own row (beam forks rows instead)


DECODERS = (
    Decoder("argmax", options=frozenset({"n"}), row_per_result=True),  # as in LMQL, n equal greedy results
    Decoder("sample", aliases=("beam_sample",), options=frozenset({"n", "temperature", "top_k", "top_p", "seed"}),
            positional_n=True, row_per_result=True),
    Decoder("beam", aliases=("beam_var", "var", "best_k"), options=frozenset({"n"}), positional_n=True,
            batches_inputs=False),
)
# LMQL's runtime options for API batching, logging and caching: accepted, nothing to do locally
IGNORED_OPTIONS = frozenset({"chunksize", "openai_chunksize", "openai_nonstop", "chunk_timeout", "verbose", "cache"})
SHARED_OPTIONS = frozenset({"max_len", "max_tokens", "healing", "speculate"}) | IGNORED_OPTIONS
# LMQL's options that change scores, which lmql_lite does not implement: refused, not ignored
UNSUPPORTED_OPTIONS = frozenset({"repetition_penalty", "frequency_penalty", "presence_penalty"})

_BY_NAME = {spelling: d for d in DECODERS for spelling in (d.name, *d.aliases)}
NAMES = frozenset(_BY_NAME)  # every spelling a decoder clause may use


def decoder(name: str) -> Decoder | None:
    """The table row for a decoder name or alias, or None."""
    return _BY_NAME.get(name)


@dataclass(frozen=True)
class DecoderOptions:
    name: str = "argmax"              # a decoder's name (see DECODERS)
    n: int = 1                        # results (argmax: n equal ones, sample, beam)
    temperature: float = 1.0          # sample: logits are divided by it
    top_k: int | None = None          # sample: keep the k most likely allowed tokens
    top_p: float | None = None        # sample: keep the smallest set with this much probability
    seed: int | None = None           # sample: makes runs reproducible
    max_len: int = 2048               # tokens in the whole sequence, prompt included
    max_tokens: int | None = None     # tokens per hole (LMQL's option of that name)
    healing: bool = True              # token healing at the start of each hole
    speculate: bool | None = None     # drafts verified in one pass; None: where it pays (argmax), False: never

    def __post_init__(self):
        row = decoder(self.name)
        if row is None:
            raise QueryArgumentError(f"unknown decoder '{self.name}' (known: {', '.join(d.name for d in DECODERS)})")
        object.__setattr__(self, "name", row.name)  # an alias decodes as the decoder it names
        check_options(self)

    @property
    def decoder(self) -> Decoder:
        return _BY_NAME[self.name]

    @property
    def several(self) -> bool:
        """Whether a run gives a list of results (n > 1 of a decoder that takes n)."""
        return "n" in self.decoder.options and self.n > 1


MAX_N = 1024  # results of one query: each is a row of the model's batch (its logits, its cache)
MAX_SEED = 2 ** 64 - 1  # seeds are 64-bit (numpy.random.Generator would take larger ones too)


def check_options(o: DecoderOptions) -> None:
    """QueryArgumentError for an option of the wrong type or out of range: checked before any model work."""
    def integer(name: str, value, lo: int, hi: float = math.inf, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise QueryArgumentError(f"{o.name}: {name} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            span = f"at least {lo}" if hi == math.inf else f"from {lo} to {hi:,}"
            raise QueryArgumentError(f"{o.name}: {name} must be {span}, got {value!r}")

    def real(name: str, value, ok, what: str, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
            raise QueryArgumentError(f"{o.name}: {name} must be {what}, got {value!r}")

    if not isinstance(o.n, bool) and isinstance(o.n, numbers.Integral) and o.n > MAX_N:
        raise QueryArgumentError(f"{o.name}: n={o.n} is above the limit of {MAX_N} results (each result is a "
                                 "row of the model's batch); run the query several times for more")
    integer("n", o.n, 1)
    real("temperature", o.temperature, lambda t: math.isfinite(t) and (t > 0 or o.name != "sample"),
         "positive and finite" if o.name == "sample" else "a finite number")
    integer("top_k", o.top_k, 1, optional=True)
    real("top_p", o.top_p, lambda p: 0 < p <= 1, "a number in (0, 1]", optional=True)
    integer("seed", o.seed, 0, MAX_SEED, optional=True)
    integer("max_len", o.max_len, 1)
    integer("max_tokens", o.max_tokens, 1, optional=True)
    if not isinstance(o.healing, bool):
        raise QueryArgumentError(f"{o.name}: healing must be True or False, got {o.healing!r}")
    if o.speculate is not None and not isinstance(o.speculate, bool):
        raise QueryArgumentError(f"{o.name}: speculate must be True or False, got {o.speculate!r}")
