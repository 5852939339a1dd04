"""Malformed and hostile queries: each raises LmqlSyntaxError at the right line and column; check and run agree."""
import pytest

import lmql_lite
from lmql_lite.errors import LmqlError, LmqlSyntaxError
from lmql_lite.models.fake import FakeModel
from lmql_lite.parser import parse

# (source, line, column, a fragment of the message)
CASES = [
    ('"a [X"', 1, 4, "unbalanced '[': it is never closed in this string"),
    ('"a [1X]"', 1, 5, "a hole needs a variable name, not '1X' (write '[[' for a literal '[')"),
    ('"[X:]"', 1, 5, "missing type after ':'"),
    ('"[]"', 1, 2, "missing variable name in '[]' (write '[[' for a literal '[')"),
    ('"[ ]"', 1, 2, "missing variable name in '[]' (write '[[' for a literal '[')"),
    ('"[X Y]"', 1, 5, "unexpected 'Y' after the hole's name (expected ':' or ']')"),
    ('"[if]"', 1, 3, "'if' is a Python keyword, not a variable name"),
    ('"[@ ]"', 1, 4, "expected a function name after '@'"),
    ('"[@f(]"', 1, 6, "']' does not match the bracket opened before it"),
    ('"[X: int(]"', 1, 10, "']' does not match the bracket opened before it"),
    ('"]"', 1, 2, "unbalanced ']' (write ']]' for a literal ']')"),
    ('"}"', 1, 2, "unbalanced '}' (write '}}' for a literal '}')"),
    ('"{"', 1, 2, "unbalanced '{': it is never closed in this string"),
    ('"{}"', 1, 2, "empty expression in '{}' (write '{{' for a literal '{')"),
    ('"{x!z}"', 1, 4, 'conversion must be !r, !s or !a'),
    ('"{1 +}"', 1, 3, 'invalid syntax'),
    ('"{:bot}"', 1, 4, "unknown chat role 'bot' (use system, user or assistant)"),
    ('"{x"', 1, 2, "unbalanced '{': it is never closed in this string"),
    ('"[X: r\'abc]"', 1, 7, "unterminated string inside the prompt's brackets"),
    ('"a\n', 1, 1, 'unterminated string'),
    ("'''never closed\n", 1, 1, 'unterminated string'),
    ('x = "a\n', 1, 5, 'unterminated string'),
    ('b"bytes"', 1, 1, 'a byte string cannot be a prompt'),
    ('"\\x4"', 1, 2, "invalid escape sequence '\\\\x4'"),
    ('"\\N{NOT A NAME}"', 1, 2, "invalid escape sequence '\\\\N{NOT A NAME}'"),
    ('x = (1,\n', 1, 5, "unbalanced '(': it is never closed"),
    ('x = )', 1, 5, "unexpected ')'"),
    ('x = [1, 2)', 1, 10, "unexpected ')'"),
    ('f(a]', 1, 4, "unexpected ']'"),
    ('"a" where', 1, 10, 'unexpected end of the query'),
    ('"a" where x y', 1, 13, "unexpected 'y'"),
    ('"a" where )', 1, 11, "unexpected ')'"),
    ('x = "a" where b', 1, 9, "unexpected 'where'"),
    ('if x:\ny = 1\n', 2, 1, "unexpected 'y'"),
    ('if x:\n    y\n  z\n', 3, 3, 'unindent does not match any outer indentation level'),
    ('  x = 1\ny = 2\n', 2, 1, "this line is indented less than the query's first line"),
    ('x = 1\n    y = 2\n', 2, 5, 'unexpected indent'),
    ('def f(:\n    pass\n', 1, 7, "unexpected ':'"),
    ('for in x:\n    pass\n', 1, 8, "unexpected 'x'"),
    ('x = 1 <> 2', 1, 7, 'invalid syntax'),
    ('x = 1 $ 2', 1, 7, "unexpected character '$'"),
    ('x ? y', 1, 3, "unexpected character '?'"),
    ('x = 1\n\x00', 2, 1, 'NUL character in the query'),
    ('x = "\udcff"', 1, 6, 'invalid character (not UTF-8 text) in the query'),
    ('sample(n=2, 3)\n"x"', 1, 13, 'positional argument follows keyword argument'),
    ('sample(\n"x"', 1, 7, "unbalanced '(': it is never closed"),
    ('argmax\n    "a"\nfrom\n', 3, 5, 'unexpected end of the query'),
    ('argmax\n    "a"\nwhere\n', 3, 6, 'unexpected end of the query'),
    ('argmax\n    "a"\ndistribution X\n', 3, 15, 'unexpected end of the query'),
    ('argmax\n    "a"\ndistribution X in\n', 3, 18, 'unexpected end of the query'),
    ('argmax\n    "a"\nwhere x\nfrom "m"\n', 4, 1, "unexpected 'from'"),
    ('argmax "a"\n"b"\n', 2, 1, 'unexpected \'"b"\''),
    ('argmax\n    "a"\n  "b"\n', 3, 3, 'unindent does not match any outer indentation level'),
    ('(' * 150 + ')' * 150, 1, 101, 'nesting too deep'),
    ('"{' + '(' * 150 + ')' * 150 + '}"', 1, 102, 'nesting too deep'),
    ('x = ' + '[' * 120 + ']' * 120, 1, 105, 'nesting too deep'),
    ('"x"\n"x"\n"x"\n"[X" where X', 4, 2, "unbalanced '[': it is never closed in this string"),
    ('f"{x"', 1, 3, "unbalanced '{': it is never closed in this string"),
    ('"a" where (x\n', 1, 11, "unbalanced '(': it is never closed"),
    ('x = 1\n)\n', 2, 1, "unexpected ')'"),
    ('return (\n  1,\n  2\n', 1, 8, "unbalanced '(': it is never closed"),
    ('"{x!r:}" [', 1, 10, "unbalanced '[': it is never closed"),
    ('def f():\n', 1, 9, 'unexpected end of the query'),
    ('class:\n  pass\n', 1, 6, "unexpected ':'"),
    ('x = 3 +\n', 1, 8, 'unexpected end of the query'),
    ('x.1', 1, 3, "unexpected '1'"),
    ('sample(n=2)) \n"x"', 1, 12, "unexpected ')'"),
    ('@\ndef f(): pass\n', 1, 2, 'unexpected end of line'),
    ('\\ ', 1, 2, 'unexpected character after line continuation character'),
    ('lambda x', 1, 9, 'unexpected end of the query'),
    ('import', 1, 7, 'unexpected end of the query'),
    ('from "m"\n"x"', 1, 6, 'unexpected \'"m"\''),
]


@pytest.mark.parametrize("source, line, column, message", CASES, ids=[repr(c[0])[:40] for c in CASES])
def test_syntax_error_position(source, line, column, message):
    with pytest.raises(LmqlSyntaxError) as info:
        parse(source, "bad.lmq")
    error = info.value
    assert (error.line, error.column) == (line, column), str(error)
    assert message in error.message
    assert error.file == "bad.lmq"
    assert error.source_line == source.replace("\r\n", "\n").split("\n")[line - 1]
    assert str(error).startswith(f"bad.lmq:{line}:{column}: ")


def test_error_shows_the_line_with_a_caret():
    with pytest.raises(LmqlSyntaxError) as info:
        parse('x = 1\n"Answer: [1X]"\n', "q.lmq")
    assert str(info.value) == ("q.lmq:2:11: a hole needs a variable name, not '1X' (write '[[' for a literal '[')\n"
                               '    "Answer: [1X]"\n'
                               "              ^")


def test_bytes_that_are_not_utf8():
    with pytest.raises(LmqlSyntaxError) as info:
        parse(b'"ok"\n"\xff"')
    assert (info.value.line, info.value.column) == (2, 1)


def test_deep_nesting_is_an_error_not_a_crash():
    for source in ["x = " + "(" * 5000, "x = " + "-" * 5000 + "1", '" + "[" * 3000 + "', "not " * 3000 + "x"]:
        try:
            parse(source)
        except LmqlSyntaxError:
            pass


# Queries `run` rejects before calling the model: `check` rejects each with the same message at the
# same position, and `run` does so before loading a model (the fake model is never asked).
# (source, line, column, a fragment of the message)
REJECTED = [
    ('"[X]" where X in ["a", "b"] and X in ["c"]\n', 1, 2, "X can never satisfy its constraint"),
    ('"[X]" where REGEX(X, r"(\\d+")\n', 1, 2, "invalid regular expression '(\\\\d+'"),
    ('"[N: int]" where N in ["ab"]\n', 1, 2, "N can never satisfy its constraint"),
    ('"[X]" where len(TOKENS(X)) < 0\n', 1, 2, "no token count fits"),
    ('"A: [CITY]" where len(TOKENS(CITY)) < 3\nreturn CITYY\n', 2, 8, "CITYY is used but never defined; did you mean CITY?"),
    ('"A: [CITY]"\n"{CITYS}"\n', 2, 3, "CITYS is used but never defined; did you mean CITY?"),
    ('sampel(n=2)\n    "[X]"\n', 1, 1, "unknown decoder 'sampel'; did you mean 'sample'?"),
    ('sampel(n=2)\n"[X]"\n', 1, 1, "unknown decoder 'sampel'; did you mean 'sample'?"),
    ('x = 1\nsampel(n=2)\n"[X]"\n', 2, 1, "unknown decoder 'sampel'; did you mean 'sample'?"),
    ('bogus "[X]"\n', 1, 1, "unknown decoder 'bogus'"),
    ('argmax(temperature=0.5)\n"[X]"\n', 1, 20, "unknown option 'temperature' for argmax"),
    ('sample(repetition_penalty=1.1)\n"[X]"\n', 1, 27, "LMQL's option 'repetition_penalty' is not supported"),
    ('"[X]" where STOP_AT(X, ".")\n', 1, 13, "unknown constraint function STOP_AT; did you mean STOPS_AT?"),
    ('"[X]" where stop_at(X, ".")\n', 1, 13, "unknown constraint function stop_at; did you mean stops_at?"),
    ('"[X]" where Regex(X, "a")\n', 1, 13, "unknown constraint function Regex; did you mean regex?"),
    ('"[X]" where len(TOKENS(X)) < 3 and len(TOKENS(Y)) < 3\n', 1, 47, "constraint on Y, but the query has no hole [Y]"),
    ('"[X]" where X in ["a"] and Y in ["b"]\n', 1, 28, "constraint on Y, but the query has no hole [Y]"),
    ('"[X]" where STOPS_AT(Z, ".")\n', 1, 22, "constraint on Z, but the query has no hole [Z]"),
    ('argmax\n    "[X]"\nWHERE\n    X in ["a"] and\n    X in ["b"]\n', 2, 6, "X can never satisfy its constraint"),
    ('import re\nargmax\n    "[X]" where regex(X, "[")\n', 3, 6, "invalid regular expression '['"),
    ('    "[X]" where X in []\n    return X\n', 1, 6, "X can never satisfy its constraint"),
    ('"[X]" where len(TOKENS(X)) << 5\n', 1, 13, "this constraint cannot be evaluated: TypeError"),
]


@pytest.mark.parametrize("source, line, column, message", REJECTED, ids=[repr(c[0])[:40] for c in REJECTED])
def test_check_and_run_reject_alike(source, line, column, message):
    from lmql_lite import checker, compiler

    class NoModel(FakeModel):
        def batch(self, rows):
            raise AssertionError("the model was asked")

    problems = checker.check(compiler.compile_query(parse(source, "bad.lmq")))
    assert problems, "check passed"
    first = problems[0]
    with pytest.raises(LmqlError) as info:
        lmql_lite.run(source, model=NoModel())
    ran = info.value
    assert message in first.message, str(first)
    assert (first.line, first.column) == (line, column), str(first)
    assert (ran.message, ran.line, ran.column, type(ran)) == (first.message, first.line, first.column, type(first))


def test_errors_come_before_torch_loads(tmp_path):
    """`lmql-lite run` and `check` report a static error without importing torch (so in well under a second)."""
    import subprocess
    import sys
    import time
    path = tmp_path / "q.lmq"
    path.write_text('"A: [CITY]" where REGEX(CITY, r"(\\d+")\n')
    code = ("import sys; from lmql_lite import cli; "
            f"codes = [cli.main(['run', {str(path)!r}]), cli.main(['check', {str(path)!r}])]; "
            "print(codes, 'torch' in sys.modules)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert out.stdout.split() == ["[3,", "3]", "False"], out.stdout + out.stderr
    assert "invalid regular expression" in out.stderr
    assert elapsed < 10  # a process start; the measured figure on an idle machine is in the report


def test_a_decoder_after_python_is_the_decoder_not_an_input():
    """Once the bogus "'sample' is not a decoder; did you mean 'sample'?"."""
    results = lmql_lite.run('x = 1\nsample(n=2, seed=1)\n"Pick[X]" where X in [" ab", " cd"]\n', model=FakeModel())
    assert len(results) == 2
    with pytest.raises(lmql_lite.QueryArgumentError, match="the query needs input sample:"):
        lmql_lite.run('"{sample}[X]" where X in ["a"]\n', model=FakeModel())
