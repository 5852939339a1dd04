"""Byte DFAs: regex → DFA agrees with `re.fullmatch`, and/or/not are exact, UTF-8 is respected, unsupported syntax is named."""
from __future__ import annotations

import re

import pytest

from lmql_lite.constraints import automata
from lmql_lite.constraints.regex import regex_dfa
from lmql_lite.errors import ConstraintError

SAMPLES = ["", "a", "ab", "abb", "aab", "ba", "A", "Ab", "0", "12", "123", "2024-01-31", "-5", " 7", "a b",
           "é", "éé", "日本", "a\n", "\n", "x_1", "Grüße", "hello", "HeLLo", "yes", "no", "🙂", "a.b", "ab1"]

PATTERNS = [
    r"a", r"ab*", r"(a|b)*abb", r"[a-z]+", r"[^a]*", r"\d+", r"\d{4}-\d{2}-\d{2}", r"-?\d+", r" ?\d+",
    r"\w+", r"\W", r"\s*", r"\S+", r".", r".*", r"(?s).*", r"[a-z ]+", r"(?:yes|no)", r"a{2,3}", r"a{2,}",
    r"a{,2}b?", r"[éü]+", r"日本", r"(?i)hello", r"x_\d", r"^ab$", r"\A12\Z", r"[\w.]+", r"a.b", r"(a|)b",
    r"[^\n]*\n", r"🙂|a", r"(?a)\w+", r"[A-Z][a-z]+",
]


def python_fullmatch(pattern: str, text: str) -> bool:
    # \d and \s are ASCII in lmql_lite (see regex.py); \w stays Unicode
    return re.fullmatch(pattern.replace(r"\d", "[0-9]").replace(r"\s", r"[ \t\n\r\f\v]")
                        .replace(r"\S", r"[^ \t\n\r\f\v]"), text) is not None


@pytest.mark.parametrize("pattern", PATTERNS)
def test_regex_dfa_agrees_with_fullmatch(pattern):
    dfa = regex_dfa(pattern)
    for text in SAMPLES:
        assert dfa.accepts(text.encode()) == python_fullmatch(pattern, text), (pattern, text)


@pytest.mark.parametrize("pattern, feature", [
    (r"(a)\1", "backreferences"),
    (r"(?=a)a", "lookaround"),
    (r"(?!a)b", "negative lookaround"),
    (r"(?<=a)b", "lookaround"),
    (r"a\bb", "anchors"),
    (r"a^b", "anchors"),
    (r"(a)(?(1)b|c)", "conditional groups"),
    (r"(?>a)", "atomic groups"),
    (r"a*+", "possessive repeats"),
    (r"a{2000}", "repeat counts"),
    (r"(", "invalid regular expression"),
])
def test_unsupported_regex_features_are_named(pattern, feature):
    with pytest.raises(ConstraintError, match=re.escape(feature)):
        regex_dfa(pattern)


def test_multibyte_characters_are_byte_paths():
    dfa = regex_dfa(r"é+")
    assert dfa.walk(b"\xc3") >= 0          # half of é: still alive
    assert not dfa.accepts(b"\xc3")        # but not a value
    assert dfa.walk(b"\xc3\xc3") < 0       # a broken character dies at once
    assert dfa.accepts("éé".encode())


@pytest.mark.parametrize("text, valid", [
    (b"", True), (b"abc", True), ("é日🙂".encode(), True), (b"\xc3", False), (b"\xc3\x28", False),
    (b"\xe0\x80\x80", False),  # overlong
    (b"\xed\xa0\x80", False),  # a surrogate
    (b"\xf4\x90\x80\x80", False),  # past U+10FFFF
    (b"\x80", False),
])
def test_utf8_accepts_exactly_valid_utf8(text, valid):
    assert automata.utf8().accepts(text) == valid


def test_intersection_is_exact_not_per_part():
    # "ab"|"cd" and "ad" both accept the prefix "a"; their intersection accepts nothing
    both = automata.intersect(automata.choices([b"ab", b"cd"]), automata.choices([b"ad"]))
    assert both.empty
    assert automata.choices([b"ab", b"cd"]).walk(b"a") >= 0


@pytest.mark.parametrize("op, texts", [
    ("and", {"ab"}),
    ("or", {"ab", "cd", "abc"}),
])
def test_and_or_of_languages(op, texts):
    a, b = automata.choices([b"ab", b"cd"]), automata.choices([b"ab", b"abc"])
    combined = automata.intersect(a, b) if op == "and" else automata.union(a, b)
    for text in ["", "a", "ab", "abc", "cd", "abcd"]:
        assert combined.accepts(text.encode()) == (text in texts), text


def test_complement_stays_within_utf8():
    no = automata.complement(automata.choices([b"no"]))
    assert no.accepts(b"yes") and no.accepts(b"") and no.accepts(b"n") and no.accepts(b"noo")
    assert not no.accepts(b"no")
    assert not no.accepts(b"\xff")


@pytest.mark.parametrize("op, n", [("<", 3), ("<=", 2), ("==", 2), ("!=", 1), (">", 1), (">=", 2), ("<", 0)])
def test_char_length_counts_characters_not_bytes(op, n):
    import operator
    check = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
             ">": operator.gt, ">=": operator.ge}[op]
    dfa = automata.char_length(lambda c: check(c, n), n + 1)
    for text in ["", "a", "é", "éé", "日本語", "abcd"]:
        assert dfa.accepts(text.encode()) == check(len(text), n), (op, n, text)


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_ordered_is_python_string_order(op):
    import operator
    check = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    dfa = automata.ordered(op, "mé".encode())
    for text in ["", "m", "ma", "mé", "méa", "mz", "n", "é", "Z", "m日"]:
        assert dfa.accepts(text.encode()) == check(text, "mé"), (op, text)


def test_dfas_are_minimal():
    assert len(regex_dfa(r"(a|b)*abb")) == 4
    assert len(regex_dfa(r"(?s).*")) == len(automata.utf8())
