"""The decoders a query may name — names, aliases, options — in one table, and the options a run decodes with.

The parser (which first lines are decoder clauses), the compiler, the checker and the api all
read `DECODERS`; `decoders.py` holds one class per row. Light on purpose: `lmql-lite check`
imports it, and it must not pull in numpy or torch.
"""
from __future__ import annotations

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
SHARED_OPTIONS = frozenset({"max_len", "max_tokens", "healing"}) | IGNORED_OPTIONS
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

    def __post_init__(self):
        row = decoder(self.name)
        if row is None:
            raise QueryArgumentError(f"unknown decoder '{self.name}' (known: {', '.join(d.name for d in DECODERS)})")
        object.__setattr__(self, "name", row.name)  # an alias decodes as the decoder it names
        if self.n < 1:
            raise QueryArgumentError(f"{self.name}: n must be at least 1, got {self.n}")
        if self.temperature <= 0 and self.name == "sample":
            raise QueryArgumentError(f"sample: temperature must be positive, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise QueryArgumentError(f"sample: top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise QueryArgumentError(f"sample: top_k must be at least 1, got {self.top_k}")
        if self.max_len < 1:
            raise QueryArgumentError(f"max_len must be at least 1, got {self.max_len}")

    @property
    def decoder(self) -> Decoder:
        return _BY_NAME[self.name]

    @property
    def several(self) -> bool:
        """Whether a run gives a list of results (n > 1 of a decoder that takes n)."""
        return "n" in self.decoder.options and self.n > 1
