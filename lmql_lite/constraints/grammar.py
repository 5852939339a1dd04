"""GRAMMAR holes: a context-free grammar in Lark syntax constrains the text; the value must parse with `lark.Lark(text)`.

Two engines, chosen per grammar:
- a grammar without recursion (a CSV line, a small SQL SELECT, a date...) is a regular language:
  its rules are inlined into one regex (terminals by their own regexes, direct left or right
  recursion such as Lark's `x*` helpers as repetition, at most one `%ignore`d token between two
  terminals, none at the ends) and it becomes a byte DFA like any other constraint — exact
  masks, exact token budgets, and any combination with other constraints;
- a recursive grammar (nested parentheses) is matched by llguidance, whose Earley parser reads
  Lark natively, in a `GrammarGuide`. It combines with `len(TOKENS(X)) <`/`<=` budgets (the
  last token must complete a sentence, and a sentence left open when the budget is spent is a
  ConstraintError) and with Python post-checks; other constraints on the same hole are refused.
"""
from __future__ import annotations

import copy
import functools
import math
import weakref
from typing import Any

import numpy as np

from ..errors import ConstraintError
from ..index import TokenIndex
from . import automata
from .automata import Dfa
from .base import Mask
from .regex import regex_dfa


@functools.lru_cache(maxsize=64)
def lark_parser(text: str):
    import lark
    try:
        return lark.Lark(text)
    except lark.exceptions.LarkError as e:
        raise ConstraintError(f"invalid Lark grammar: {e}") from None


def check_parses(text: str, value: str) -> None:
    """ConstraintError unless `value` parses with the grammar."""
    import lark
    try:
        lark_parser(text).parse(value)
    except lark.exceptions.LarkError as e:
        raise ConstraintError(f"{value!r} does not parse with the grammar: {str(e).splitlines()[0]}") from None


@functools.lru_cache(maxsize=64)
def regular_language(text: str) -> Dfa | None:
    """The grammar's sentences as a byte DFA, or None when the grammar is not regular in the sense above."""
    pattern = regular_pattern(text)
    if pattern is None:
        return None
    try:
        return regex_dfa(pattern)
    except ConstraintError:  # a terminal our regexes cannot say (lookaround...): llguidance reads it
        return None


def converter(text: str):
    """text → the value, unchanged, once it parses with the grammar."""
    def convert(value: str) -> str:
        check_parses(text, value)
        return value
    return convert


def regular_pattern(text: str) -> str | None:
    """A Python regex for the grammar's sentences, or None when its rules recurse beyond direct left/right recursion."""
    parser = lark_parser(text)
    rules: dict[str, list[list]] = {}
    for rule in parser.rules:
        rules.setdefault(rule.origin.name, []).append(list(rule.expansion))
    terminals = {t.name: t.pattern.to_regexp() for t in parser.terminals}
    ignore = "|".join(f"(?:{terminals[name]})" for name in parser.ignore_tokens)
    gap = f"(?:{ignore})?" if ignore else ""
    done: dict[str, str] = {}

    def expansion(symbols: list, stack: tuple) -> str | None:
        parts = []
        for s in symbols:
            p = f"(?:{terminals[s.name]})" if s.is_term else rule_regex(s.name, stack)
            if p is None:
                return None
            parts.append(p)
        return gap.join(parts)

    def rule_regex(name: str, stack: tuple) -> str | None:
        if name in done:
            return done[name]
        if name in stack:
            return None
        stack += (name,)
        left, right, base = [], [], []
        for symbols in rules[name]:
            if symbols and not symbols[0].is_term and symbols[0].name == name:
                left.append(symbols[1:])
            elif symbols and not symbols[-1].is_term and symbols[-1].name == name:
                right.append(symbols[:-1])
            else:
                base.append(symbols)
        if left and right:
            return None
        alts = [expansion(s, stack) for s in base]
        loops = [expansion(s, stack) for s in left + right]
        if None in alts or None in loops:
            return None
        body = "|".join(f"(?:{a})" for a in alts)
        if loops:
            loop = "|".join(f"(?:{a})" for a in loops)
            body = f"(?:{gap}(?:{loop}))*" if not base else \
                (f"(?:{body})(?:{gap}(?:{loop}))*" if left else f"(?:(?:{loop}){gap})*(?:{body})")
        done[name] = f"(?:{body})"
        return done[name]

    return rule_regex(parser.options.start[0], ())


# ---- recursive grammars: llguidance -----------------------------------------------------------

_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenizer(index: TokenIndex):
    """llguidance's view of the index's vocabulary (built once per index, about 0.3 s on 49k tokens)."""
    hit = _TOKENIZERS.get(index)
    if hit is None:
        try:
            import llguidance
        except ImportError:
            raise ConstraintError("recursive GRAMMAR constraints need the llguidance package "
                                  "(pip install llguidance)") from None
        vocabulary = index.vocabulary

        class Tokens:  # what llguidance.TokenizerWrapper reads
            eos_token_id = min(vocabulary.eos_ids)
            bos_token_id = None
            tokens = [t if t or i not in vocabulary.special_ids else f"<|special {i}|>".encode()
                      for i, t in enumerate(vocabulary.tokens)]
            special_token_ids = sorted(vocabulary.special_ids)

            def __call__(self, data):  # greedy longest match: only used for llguidance's own fast-forward
                return _greedy(index, data if isinstance(data, bytes) else data.encode())

        hit = _TOKENIZERS[index] = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Tokens()))
    return hit


def _greedy(index: TokenIndex, data: bytes) -> list[int]:
    """Tokens for `data`, longest match first (used for the rest of a healed token and llguidance's fast-forward)."""
    by_bytes, longest = _token_ids(index)
    out, i = [], 0
    while i < len(data):
        n = next(n for n in range(min(longest, len(data) - i), 0, -1) if data[i:i + n] in by_bytes)
        out.append(by_bytes[data[i:i + n]])
        i += n
    return out


_TOKEN_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_ids(index: TokenIndex) -> tuple[dict[bytes, int], int]:
    hit = _TOKEN_IDS.get(index)
    if hit is None:
        by_bytes: dict[bytes, int] = {}
        for i, t in enumerate(index.vocabulary.tokens):
            if t and i not in index.vocabulary.special_ids:
                by_bytes.setdefault(t, i)
        hit = _TOKEN_IDS[index] = (by_bytes, max(map(len, by_bytes)))
    return hit


class GrammarGuide:
    """The Guide contract for a recursive grammar, matched by llguidance."""

    def __init__(self, var: str, grammar: str, index: TokenIndex, term: Any, budget: float, check):
        import llguidance
        import llguidance.numpy as llnp
        self.var, self.grammar, self.index, self.term = var, grammar, index, term
        self.budget, self._check = budget, check  # budget: most tokens; check(value) -> bool for post-checks
        lark_parser(grammar)  # Lark itself must accept it: the value is checked with it
        tokenizer = _tokenizer(index)
        self._matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        if self._matcher.is_error():
            raise ConstraintError(f"GRAMMAR({var}, ...): {self._matcher.get_error()}")
        self._bits = llnp.allocate_token_bitmask(1, tokenizer.vocab_size)
        self._text = bytearray()
        self.tokens_used = 0
        self._finished = False
        self._prefix = b""
        self._mask = None  # the mask of the current state, once computed

    def copy(self) -> "GrammarGuide":
        twin = copy.copy(self)
        twin._matcher = self._matcher.deep_copy()
        twin._text = bytearray(self._text)
        twin._bits = self._bits.copy()
        return twin

    def heal(self, prefix: bytes) -> None:
        self._prefix, self._mask = bytes(prefix), None

    def allowed(self) -> Mask:
        n = len(self.index)
        if self._finished:
            return Mask.none(n)
        if self._mask is not None:
            return self._mask
        import llguidance.numpy as llnp
        llnp.fill_next_token_bitmask(self._matcher, self._bits, 0)
        mask = np.unpackbits(self._bits[0].view(np.uint8), bitorder="little")[:n].astype(bool)
        vocabulary = self.index.vocabulary
        mask[sorted(vocabulary.special_ids - vocabulary.eos_ids)] = False
        accepting = self._matcher.is_accepting()
        mask[self.index.eos_ids] = accepting
        if self._prefix:
            mask = self._healed(mask)
        elif self.tokens_used + 1 >= self.budget:  # the last token must complete a sentence
            mask = self._closing(mask)
        self._mask = mask = Mask(mask)
        if not mask.count:
            raise ConstraintError(f"no token can continue {self.var} under {self.term} after {bytes(self._text)!r}"
                                  + (f" within {int(self.budget)} tokens" if self.budget != math.inf else ""))
        return mask

    def _closing(self, mask: np.ndarray) -> np.ndarray:
        out = np.zeros_like(mask)
        eos = self.index.eos_ids
        out[eos] = mask[eos]
        for t in np.flatnonzero(mask & ~np.isin(np.arange(len(mask)), eos)).tolist():
            if self._matcher.try_consume_tokens([t]) == 1:
                out[t] = self._matcher.is_accepting()
                self._matcher.rollback(1)
        return out

    def _healed(self, mask: np.ndarray) -> np.ndarray:
        """Tokens that start with the healed prefix and whose rest the grammar allows (checked one by one)."""
        out = np.zeros_like(mask)
        for i, t in enumerate(self.index.vocabulary.tokens):
            if t.startswith(self._prefix) and i not in self.index.vocabulary.special_ids:
                rest = t[len(self._prefix):]
                if not rest:
                    out[i] = True
                    continue
                ids = _greedy(self.index, rest)
                consumed = self._matcher.try_consume_tokens(ids)
                out[i] = consumed == len(ids)
                self._matcher.rollback(consumed)
        return out

    def advance(self, token_id: int) -> None:
        if self._finished:
            raise ConstraintError(f"{self.var} has already ended")
        self._mask = None
        if token_id in self.index.vocabulary.eos_ids:
            if self._prefix or not self._matcher.is_accepting():
                raise ConstraintError(f"{self.var} cannot end after {bytes(self._text)!r}")
            self._finished = True
            return
        data = self.index.vocabulary.tokens[token_id]
        if self._prefix:
            if not data.startswith(self._prefix):
                raise ConstraintError(f"token {data!r} does not start with the healed prefix {self._prefix!r}")
            data, self._prefix = data[len(self._prefix):], b""
            ids = _greedy(self.index, data) if data else []
        else:
            ids = [token_id]
        if self._matcher.try_consume_tokens(ids) != len(ids):
            raise ConstraintError(f"token {data!r} cannot continue {self.var} under {self.term}")
        self._text += data
        self.tokens_used += 1
        if self._matcher.is_stopped() or self.tokens_used >= self.budget:
            if not self._matcher.is_accepting():
                raise ConstraintError(f"{self.var} = {bytes(self._text)!r} is cut by its token budget before the "
                                      "grammar's sentence is complete")
            self._finished = True

    def is_finished(self) -> bool:
        return self._finished

    def forced(self) -> bytes:
        if self._finished or self._prefix:
            return b""
        out = bytes(self._matcher.compute_ff_bytes())
        while out and automata.ends_mid_character(out):
            out = out[:-1]
        if self.budget != math.inf and len(out) > self.budget - self.tokens_used - 1:
            return b""
        return out

    def text(self) -> str:
        return bytes(self._text).decode("utf-8", errors="replace")

    def value(self) -> Any:
        text = self.text()
        check_parses(self.grammar, text)
        if self._check is not None and not self._check(text):
            raise ConstraintError(f"{self.var} = {text!r} does not satisfy {self.term}")
        return text

