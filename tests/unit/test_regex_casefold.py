"""Case-insensitive regexes accept exactly what Python's `re.fullmatch` accepts, tricky Unicode case pairs included."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmql_lite.constraints import automata, terms
from lmql_lite.constraints.holes import plan_hole
from lmql_lite.constraints.regex import regex_dfa
from lmql_lite.errors import ConstraintError

# Characters whose case folding differs between str.lower/upper, Python's `re` and naive rules:
# the Kelvin and Ohm signs, long s, dotless and dotted i, micro sign, final sigma, title-case
# digraphs, sharp s, Greek symbols with extra cases, Cherokee, Deseret (outside the BMP).
TRICKY = ("kKK" "sSſ" "iIıİ" "µμΜ" "σςΣ" "Ǆǅǆ" "ßẞ" "ΩωΩ" "θϑΘ" "ﬅﬆ" "ǰJ̌" "Ꭰꭰ" "𐐀𐐨" "aAzZ" "éÉ" "1_ -"
          "\u0345\u0399\u03b9\u1fbe")
chars = st.sampled_from(sorted(set(TRICKY) - {"\u030c"}))


def _atom(c: str) -> str:
    return re.escape(c)


@st.composite
def char_class(draw) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["char", "range", "category"]))
        if kind == "char":
            parts.append(_atom(draw(chars)))
        elif kind == "range":
            a, b = sorted([draw(chars), draw(chars)])
            parts.append(f"{_atom(a)}-{_atom(b)}")
        else:
            parts.append(draw(st.sampled_from([r"\w", r"\W"])))
    return "[" + ("^" if draw(st.booleans()) else "") + "".join(parts) + "]"


item = st.one_of(chars.map(_atom), char_class())
patterns = st.tuples(st.sampled_from(["(?i)", "(?i)(?a)"]), st.lists(item, min_size=1, max_size=2)) \
    .map(lambda t: t[0] + "".join(t[1]))
texts = st.lists(chars, min_size=1, max_size=2).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns, st.lists(texts, min_size=1, max_size=8))
def test_case_insensitive_regex_agrees_with_re(pattern, samples):
    dfa = regex_dfa(pattern)
    for text in samples:
        assert dfa.accepts(text.encode()) == (re.fullmatch(pattern, text) is not None), (pattern, text)


@pytest.mark.parametrize("pattern", [r"(?i)[^a-z]", r"(?i)[a-z]", r"(?i)k", r"(?i)[^k]", r"(?i)s", r"(?i)[^\W]",
                                     r"(?i)\w", r"(?ia)[a-z]", r"(?i)[^a-zA-Z0-9]"])
def test_case_insensitive_sets_over_every_code_point(pattern):
    dfa = regex_dfa(pattern)
    for c in range(0x20000):
        if 0xD800 <= c <= 0xDFFF:
            continue  # surrogates are not text
        text = chr(c)
        assert dfa.accepts(text.encode()) == (re.fullmatch(pattern, text) is not None), (pattern, hex(c))


def test_kelvin_sign_is_not_outside_a_to_z_ignoring_case():
    # re.fullmatch(r"(?i)[^a-z]", x) is None for every option: ſ folds to s, ı to i, the Kelvin sign to k
    term = terms.And((terms.Regex("X", r"(?i)[^a-z]"), terms.In("X", ("ſ", "ı", "\u212a", "b"))))
    with pytest.raises(ConstraintError, match="can never satisfy"):
        plan_hole(term, "X")
    options = ("ſ", "\u212a", "7")
    both = automata.intersect(regex_dfa(r"(?i)[^a-z]"), automata.choices(o.encode() for o in options))
    assert [o for o in options if both.accepts(o.encode())] == ["7"]
