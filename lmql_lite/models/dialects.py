"""What each serving engine is asked to enforce of a hole's constraint: the request fields per server dialect, in one table.

A hole's constraint is already compiled into its guide (constraints/), so the translation starts
from the guide, not from the `where` text: an automaton guide's byte automaton (choice, INT,
FLOAT, REGEX, JSON, regular GRAMMAR, stop phrases, their conjunctions) becomes one right-linear
grammar over Unicode characters in GBNF, which llama.cpp's server, vLLM's xgrammar and SGLang's
`ebnf` all read; token budgets become `max_tokens`; a recursive GRAMMAR is sent as llguidance
Lark where the server takes it. What has no translation is refused here with a ConstraintError
naming the constraint and the server. Whatever the server sends back is still taken through the
guide on the client (filling.py), so a server that ignores a field cannot pass a wrong value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..constraints import terms
from ..constraints.holes import HoleAutomaton
from ..errors import ConstraintError


@dataclass(frozen=True)
class Dialect:
    """How one kind of server takes a prompt, a constraint and the decoder."""
    name: str                                      # as messages and the docs call the server
    grammar: Callable[[str], dict]                 # a GBNF grammar -> request fields
    lark: Callable[[str], dict] | None             # llguidance Lark (a recursive GRAMMAR) -> fields; None: refused
    stop: Callable[[list[str]], dict] | None       # stop phrases kept in the text -> fields; None: the grammar carries them
    token_prompt: bool                             # the prompt goes as token ids (else as text, tokenized there)
    echo_scores: bool                              # echo + logprobs score a prompt's own tokens (else: a forced completion)
    plain: dict                                    # fields that turn off the server's own sampling filters and penalties


DIALECTS = {
    # llama-cpp-python's server takes the prompt as text only; it cuts a stop string from the text
    # it returns, so the text could not tell a stop phrase from the model's end (phrases go into the
    # grammar, which keeps them); its echoed prompt log-probabilities are off by one position.
    "llama.cpp": Dialect("llama.cpp's server", lambda g: {"grammar": g}, None, None, token_prompt=False,
                         echo_scores=False, plain={"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}),
    "vllm": Dialect("vLLM", lambda g: {"structured_outputs": {"grammar": g}},
                    lambda lark: {"structured_outputs": {"grammar": lark}},
                    lambda s: {"stop": s, "include_stop_str_in_output": True}, token_prompt=True, echo_scores=True,
                    plain={"top_k": -1, "top_p": 1.0, "min_p": 0.0}),
    "sglang": Dialect("SGLang", lambda g: {"ebnf": g}, lambda lark: {"ebnf": "%llguidance {}\n" + lark},
                      lambda s: {"stop": s, "no_stop_trim": True}, token_prompt=True, echo_scores=True,
                      plain={"top_k": -1, "top_p": 1.0, "min_p": 0.0}),
}
# What `/v1/models` says in `owned_by`, per dialect (llama-cpp-python's server says "me").
OWNERS = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp", "llama.cpp": "llama.cpp", "me": "llama.cpp"}


@dataclass(frozen=True)
class Request:
    """The constraint's part of one completion request."""
    fields: dict[str, Any]
    max_tokens: int
    how: str            # "grammar", "lark", "stop" or "none": what the server enforces (for the trace)


def translate(guide: Any, dialect: Dialect, room: int) -> Request:
    """The request fields that make `dialect`'s server enforce `guide`'s constraint, with at most `room` tokens.

    ConstraintError when the server cannot be made to enforce it.
    """
    plan = getattr(guide, "plan", None)
    if plan is None:  # a recursive grammar (llguidance)
        if dialect.lark is None:
            raise ConstraintError(f"{guide.term}: {dialect.name} takes no grammar with nested rules (GBNF from Lark "
                                  "is not translated); run this hole on a local model or on vLLM/SGLang")
        return Request(dialect.lark(guide.grammar), _tokens(guide.budget, room), "lark")
    counts, term = plan.counts, plan.term
    if counts.lo > 0 or len(counts.intervals) > 1:
        raise ConstraintError(f"{term}: {dialect.name} cannot enforce a least number of tokens or a gap in the "
                              f"token count of {plan.var} (it only takes a most, max_tokens)")
    max_tokens = _tokens(counts.hi, room)
    phrases = stop_phrases(term)
    if phrases == []:
        return Request({}, max_tokens, "none")
    if phrases and dialect.stop is not None:
        return Request(dialect.stop(phrases), max_tokens, "stop")
    return Request(dialect.grammar(gbnf(plan.automaton)), max_tokens, "grammar")


def literal(text: str) -> str:
    """A GBNF grammar whose only text is `text` (a value forced to be scored)."""
    return "root ::= " + "".join(f"[{_char(ord(c))}]" for c in text) + "\n"


def _tokens(hi: float, room: int) -> int:
    return max(1, int(min(hi, room))) if hi != math.inf else max(1, room)


def stop_phrases(term: Any) -> list[str] | None:
    """The stop phrases when the rest of `term` only bounds the token count or is a post-check (the text is free); else None."""
    if term is None:
        return []
    phrases = []
    for part in term.parts if isinstance(term, terms.And) else (term,):
        if isinstance(part, (terms.StopsAt, terms.StopsBefore)):
            phrases.append(part.phrase)
        elif isinstance(part, terms.Compare) and isinstance(part.left, terms.Length) \
                and isinstance(part.left.of, terms.Tokens) and part.op in ("<", "<="):
            continue
        elif not isinstance(part, terms.Predicate):
            return None
    return phrases


# ---- byte automaton -> GBNF over characters --------------------------------------------

# UTF-8 lead bytes: (first, last, bits of the code point in the lead byte, continuation bytes)
_LEADS = ((0xC2, 0xDF, 0x1F, 1), (0xE0, 0xEF, 0x0F, 2), (0xF0, 0xF4, 0x07, 3))


def gbnf(a: HoleAutomaton) -> str:
    """A GBNF grammar whose language is the hole's: one rule per automaton state, `root` the start.

    A state where a stop phrase completes ends the text. Where the value is complete but could go
    on (the digits of an INT), the text may also end with one character that cannot continue it,
    which the client cuts (`value_text`): a grammar-constrained server otherwise keeps writing
    digits to max_tokens, since end-of-sequence is just one more token the model rarely picks there.
    """
    names = {0: "root"}
    order, rules, memo = [0], [], {}
    for s in order:  # grows while we iterate
        alternatives = []
        if a.stop[s] < 0:
            by_target: dict[int, list[tuple[int, int]]] = {}
            for lo, hi, t in _edges(a.table, s, memo):
                by_target.setdefault(t, []).append((lo, hi))
            for t, ranges in by_target.items():
                if t not in names:
                    names[t] = f"s{len(order)}"
                    order.append(t)
                alternatives.append(f"{_char_class(ranges)} {names[t]}")
            if a.accepting[s] and a.has_next[s]:
                leave = _runs_of(np.flatnonzero(a.table[s, 1:0x80] < 0) + 1)
                if leave:
                    alternatives.append(_char_class(leave))
        if a.accepting[s] or a.stop[s] >= 0 or not alternatives:
            alternatives.append('""')
        rules.append(f"{names[s]} ::= {' | '.join(alternatives)}")
    return "\n".join(rules) + "\n"


def value_text(a: HoleAutomaton, text: str) -> tuple[str, str]:
    """(`text` without the one character that ended it where the value could have gone on (see `gbnf`), that character or "")."""
    data, s = text.encode(), 0
    for i, b in enumerate(data):
        t = int(a.table[s, b])
        if t < 0:
            if i == len(data) - 1 and a.accepting[s] and b < 0x80:
                return data[:i].decode(), chr(b)
            return text, ""  # not the grammar's text: the guide will say so
        if a.stop[t] >= 0:
            return text, ""
        s = t
    return text, ""


def _edges(table: np.ndarray, s: int, memo: dict) -> list[tuple[int, int, int]]:
    """(first code point, last code point, next state) of every character but NUL `s` may read, in code point order."""
    out: list[tuple[int, int, int]] = []
    for b in range(1, 0x80):  # never NUL: llama.cpp's grammar reads it as the end of a token's text
        if table[s, b] >= 0:
            _push(out, b, b, int(table[s, b]))
    for first, last, bits, n in _LEADS:
        for b in range(first, last + 1):
            t = int(table[s, b])
            if t < 0:
                continue
            base = (b & bits) << (6 * n)
            for lo, hi, target in _tails(table, t, n, memo):
                _push(out, base + lo, base + hi, target)
    return out


def _tails(table: np.ndarray, s: int, n: int, memo: dict) -> list[tuple[int, int, int]]:
    """Runs (lo, hi, next state) over the values of `n` continuation bytes read from `s`."""
    key = (s, n)
    if key not in memo:
        out: list[tuple[int, int, int]] = []
        if n == 0:
            out.append((0, 0, s))
        else:
            span = 64 ** (n - 1)
            for c in range(64):
                t = int(table[s, 0x80 + c])
                if t >= 0:
                    for lo, hi, target in _tails(table, t, n - 1, memo):
                        _push(out, c * span + lo, c * span + hi, target)
        memo[key] = out
    return memo[key]


def _push(out: list, lo: int, hi: int, target: int) -> None:
    if out and out[-1][2] == target and out[-1][1] + 1 == lo:
        out[-1] = (out[-1][0], hi, target)
    else:
        out.append((lo, hi, target))


def _runs_of(values: np.ndarray) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in values.tolist():
        if runs and runs[-1][1] + 1 == v:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    return runs


def _char_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in ranges) + "]"


def _char(cp: int) -> str:
    if cp < 0x80 and chr(cp).isalnum():
        return chr(cp)
    return f"\\u{cp:04X}" if cp < 0x10000 else f"\\U{cp:08X}"
