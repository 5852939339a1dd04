"""GRAMMAR holes: masks equal a brute-force oracle built on Lark's own parser, for regular and recursive grammars."""
from __future__ import annotations

import functools
import itertools

import lark
import numpy as np
import pytest

from lmql_lite.constraints import compile_guide, grammar
from lmql_lite.constraints import terms as T
from lmql_lite.errors import ConstraintError
from lmql_lite.index import TokenIndex, Vocabulary

EOS, SPECIAL = 0, 1
WORDS = ["1", "2", "a", ",", "(", ")", "+", " ", "12", "1,", "a,a", "((", "))", "+(", "\n"]
TOKENS = (b"", b"") + tuple(w.encode() for w in WORDS)
VOCAB = Vocabulary(TOKENS, eos_ids=frozenset({EOS}), special_ids=frozenset({EOS, SPECIAL}))
INDEX = TokenIndex(VOCAB)
TEXT_IDS = list(range(2, len(TOKENS)))

CSV = r"""
start: field ("," field)*
field: /[a-z0-9]+/ | "(" /[0-9]+/ ")"
"""
SUMS = r"""
start: NUMBER (" + " NUMBER)*
%import common.INT -> NUMBER
"""
PARENS = r"""
?start: e
?e: "1" | "2" | "(" e ")" | e "+" e
"""


@functools.lru_cache(maxsize=None)
def parses(text: str, source: str) -> bool:
    try:
        grammar.lark_parser(source).parse(text)
        return True
    except lark.exceptions.LarkError:
        return False


def oracle_next(source: str, budget: int) -> dict[tuple, set[int]]:
    """Every token sequence within the budget whose text parses, as a prefix tree of next tokens (EOS: ends here)."""
    nxt: dict[tuple, set[int]] = {}
    for n in range(budget + 1):
        for seq in itertools.product(TEXT_IDS, repeat=n):
            if parses(b"".join(TOKENS[i] for i in seq).decode(), source):
                nxt.setdefault(seq, set()).add(EOS)
                for k in range(n):
                    nxt.setdefault(seq[:k], set()).add(seq[k])
    return nxt


def walk(term, expected: dict[tuple, set[int]], depth: int | None = None) -> int:
    """Compare the guide's mask with `expected` on every prefix in it (up to `depth` tokens)."""
    stack, visited = [((), compile_guide(term, "X", INDEX))], 0
    while stack:
        prefix, guide = stack.pop()
        if guide.is_finished():
            assert expected.get(prefix, set()) <= {EOS}, prefix
            continue
        allowed = set(np.flatnonzero(guide.allowed()).tolist())
        want = expected[prefix]
        assert allowed == want, (b"".join(TOKENS[i] for i in prefix), sorted(TOKENS[i] for i in allowed ^ want))
        visited += 1
        if depth is not None and len(prefix) >= depth:
            continue
        for tok in allowed - {EOS}:
            child = guide.copy()
            child.advance(tok)
            stack.append((prefix + (tok,), child))
    return visited


@pytest.mark.parametrize("source, budget", [(CSV, 3), (SUMS, 3)], ids=["csv", "sums"])
def test_regular_grammar_masks_equal_the_oracle_within_a_budget(source, budget):
    assert grammar.regular_language(source) is not None  # the DFA engine, with exact budgets
    term = T.And((T.Grammar("X", source), T.Compare(T.Length(T.Tokens("X")), "<=", budget)))
    assert walk(term, oracle_next(source, budget)) > 5


def completable(text: str) -> bool:
    """Can `text` be completed to a PARENS sentence? Then the shortest way parses: an operand if one is due, then closers."""
    return any(parses(text + mid + ")" * k, PARENS) for mid in ("", "1") for k in range(text.count("(") + 1))


def test_recursive_grammar_masks_equal_the_oracle():
    assert grammar.regular_language(PARENS) is None  # llguidance
    expected: dict[tuple, set[int]] = {}

    def explore(prefix: tuple, text: str) -> None:
        expected[prefix] = {i for i in TEXT_IDS if completable(text + WORDS[i - 2])}
        expected[prefix] |= {EOS} if parses(text, PARENS) else set()
        if len(prefix) < 3:
            for i in expected[prefix] - {EOS}:
                explore(prefix + (i,), text + WORDS[i - 2])

    explore((), "")
    assert walk(T.Grammar("X", PARENS), expected, depth=3) > 20


def test_a_recursive_grammar_closes_on_its_last_token_and_fails_clearly_when_it_cannot():
    budget = T.Compare(T.Length(T.Tokens("X")), "<", 4)
    guide = compile_guide(T.And((T.Grammar("X", PARENS), budget)), "X", INDEX)
    for tok in ["((", "1"]:
        guide.advance(TOKENS.index(tok.encode()))
    mask = guide.allowed()  # the third and last token: only "))" completes a sentence
    assert {TOKENS[i] for i in np.flatnonzero(mask)} == {b"))"}
    guide = compile_guide(T.And((T.Grammar("X", PARENS), budget)), "X", INDEX)
    for tok in ["((", "(("]:
        guide.advance(TOKENS.index(tok.encode()))
    with pytest.raises(ConstraintError, match="no token can continue X"):
        guide.allowed()


def test_value_is_the_text_and_parses():
    guide = compile_guide(T.Grammar("X", PARENS), "X", INDEX)
    for tok in ["((", "1", "+", "2", "))"]:
        guide.advance(TOKENS.index(tok.encode()))
    guide.advance(EOS)
    assert guide.value() == "((1+2))"


@pytest.mark.parametrize("other", [T.StopsAt("X", ")"), T.Regex("X", "[0-9]+"), T.Compare(T.Length(T.Tokens("X")), ">", 2)])
def test_a_recursive_grammar_refuses_constraints_it_cannot_combine_with(other):
    with pytest.raises(ConstraintError, match="recursive GRAMMAR combines only"):
        compile_guide(T.And((T.Grammar("X", PARENS), other)), "X", INDEX)


def test_a_regular_grammar_combines_with_any_constraint():
    term = T.And((T.Grammar("X", CSV), T.StopsBefore("X", "\n"), T.Compare(T.Length(T.Tokens("X")), "<", 6)))
    guide = compile_guide(term, "X", INDEX)
    for tok in ["a,a", ",", "12", "\n"]:
        guide.advance(TOKENS.index(tok.encode()))
    assert guide.is_finished() and guide.value() == "a,a,12"


def test_an_invalid_grammar_is_a_constraint_error():
    with pytest.raises(ConstraintError, match="invalid Lark grammar"):
        compile_guide(T.Grammar("X", "start: undefined_rule"), "X", INDEX)
