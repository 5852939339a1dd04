"""Fuzzing the parser: whatever the text, the only exception that may escape is an LmqlError."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmql_lite.errors import LmqlError
from lmql_lite.parser import parse

SEEDS = [
    '"Hello [WHO]"',
    'argmax\n    "Q: {q}\\n"\n    "A: [X]\\n" where not "\\n" in X\nfrom\n    "m"\nwhere\n    len(TOKENS(X)) < 40\n'
    'distribution\n    X in [" a", " b"]\n',
    'argmax "Say hi: [X]" from "m" where len(TOKENS(X)) < 5 distribution X in ["a", "b"]',
    'sample(n=2, temperature=0.8)\nfor i in range(3):\n    "item {i!r:>3}: [ITEM: int]" where INT(ITEM)\n',
    '@lmql.query\ndef f(a):\n    \'\'\'lmql\n    "[X]"\n    return X\n    \'\'\'\n"{f(1)} [@g Y: r"\\d+"]"\n',
    '"{:system}be brief{:user}{{q}} [[x]] {d[\'k\']}{:assistant}[A]"',
    'if a:\n    "x"\nelif b:\n    "y"\nelse:\n    "z"\nreturn X\n',
]

CHUNKS = ["[", "]", "{", "}", "(", ")", '"', "'", '"""', "\\", "\n", "    ", "\t", ":", "@", "!", "where ",
          "from ", "argmax", "sample(", "distribution ", "{:", "[[", "]]", "\x00", "\udcff", "#", "x" * 300]

fast = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_lmql_error(source) -> None:
    try:
        parse(source)
    except LmqlError as e:
        assert "internal error" not in e.message, e.message
        assert e.line is None or e.line >= 1 and e.column >= 1


@st.composite
def mutated(draw):
    source = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(source)))
        kind = draw(st.sampled_from(["delete", "duplicate", "insert"]))
        if kind == "delete":
            source = source[:i] + source[i + 1:]
        elif kind == "duplicate":
            source = source[:i] + source[i:i + 1] * draw(st.integers(2, 5)) + source[i + 1:]
        else:
            source = source[:i] + draw(st.sampled_from(CHUNKS)) + source[i:]
    return source


@fast
@given(st.text(max_size=200))
def test_random_text(source):
    parse_or_lmql_error(source)


@fast
@given(st.lists(st.sampled_from(list("[]{}()\"':@!\\ \n\tx=ab,.#") + ["where ", "argmax", "if ", "    "]),
                max_size=60).map("".join))
def test_random_query_like_text(source):
    parse_or_lmql_error(source)


@fast
@given(st.binary(max_size=200))
def test_random_bytes(data):
    parse_or_lmql_error(data)


@fast
@given(mutated())
def test_mutations_of_valid_queries(source):
    parse_or_lmql_error(source)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["(", "[", "{", '"{', '"[X: f(', "not ", "-", "lambda: "]), st.integers(50, 2000))
def test_deep_nesting(opener, depth):
    closer = {"(": ")", "[": "]", "{": "}", '"{': '}"', '"[X: f(': ')]"'}.get(opener, "")
    parse_or_lmql_error("x = " + opener * depth + "1" + closer * depth)
    parse_or_lmql_error(opener * depth)


@fast
@given(st.integers(1, 20000))
def test_very_long_names(length):
    name = "X" * length
    parse_or_lmql_error(f'"[{name}]" where len({name}) < 3\n{name} = 1\n')
