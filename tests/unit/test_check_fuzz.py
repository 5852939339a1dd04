"""Fuzzing `lmql-lite check` (parse, compile, static checks) with mutations of the shipped examples: only LmqlErrors escape."""
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmql_lite import checker, compiler, parser
from lmql_lite.errors import LmqlError

EXAMPLES = sorted(p.read_text() for p in (Path(__file__).parents[2] / "examples").glob("*.lmq"))
CHUNKS = ["[", "]", "{", "}", "(", ")", '"', "'", "\\", "\n", "    ", ":", "@", "where ", " and ", " or ",
          "not ", "STOPS_AT(", "TOKENS(", "len(", "INT(", "REGEX(", "distribution ", "from ", "return ",
          "await ", "yield ", "lambda: ", "[X: ", "{:user}", "sample(n=", "beam(", "argmax(", "=", "<", ",",
          "\x00", "\udcff", "é", "x" * 200]


def check_source(source: str) -> None:
    """What `lmql-lite check` does with a file's text."""
    try:
        problems = checker.check(compiler.compile_query(parser.parse(source, "fuzz.lmq")))
    except LmqlError as e:
        problems = [e]
    for e in problems:
        assert isinstance(e, LmqlError)
        assert e.line is None or (e.line >= 1 and (e.column or 1) >= 1)
        str(e)  # the message renders, caret and all


@st.composite
def mutated_example(draw):
    source = draw(st.sampled_from(EXAMPLES))
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(source)))
        kind = draw(st.sampled_from(["delete", "duplicate", "insert", "cut"]))
        if kind == "delete":
            source = source[:i] + source[i + 1:]
        elif kind == "duplicate":
            source = source[:i] + source[i:i + draw(st.integers(1, 20))] * 2 + source[i + 20:]
        elif kind == "cut":
            source = source[:i]
        else:
            source = source[:i] + draw(st.sampled_from(CHUNKS)) + source[i:]
    return source


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_example())
def test_check_on_mutated_examples(source):
    check_source(source)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_check_on_random_bytes(data):
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # the CLI reports undecodable files itself (see test_cli)
    check_source(source)


def test_every_example_checks_clean():
    for source in EXAMPLES:
        assert checker.check(compiler.compile_query(parser.parse(source, "example.lmq"))) == []
