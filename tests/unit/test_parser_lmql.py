"""LMQL 0.7's surface syntax, run unchanged on the fake model: each form parses, checks clean and means what LMQL means."""
import re

import pytest

import lmql_lite
from lmql_lite import checker, compiler, parser
from lmql_lite.models.fake import FakeModel


def run(source, **inputs):
    return lmql_lite.run(source, model=FakeModel(), **inputs)


# (query, a check of its result a person would make)
CASES = [
    # a string continued with backslash-newline: the pair is dropped from the text
    ('"Hello \\\nworld[X]" where X in [" a", " b"]\n',
     lambda r: r.prompt in ("Hello world a", "Hello world b")),
    # adjacent strings across lines inside parentheses are one prompt statement
    ('("Hello "\n "world[X]") where X in [" a"]\n', lambda r: r.prompt == "Hello world a"),
    ('argmax\n    "Hello "\n    "world[X]" where X in [" a"]\n', lambda r: r.prompt == "Hello world a"),
    # upper-case keywords and decoder names
    ('ARGMAX\n    "Pick[X]"\nFROM\n    "some/model"\nWHERE\n    X in [" ab", " cd"]\n',
     lambda r: r.variables["X"] in (" ab", " cd")),
    ('Sample(n=2, seed=1)\n    "Pick[X]"\nWHERE X in [" ab", " cd"]\n',
     lambda r: len(r) == 2 and all(x.variables["X"] in (" ab", " cd") for x in r)),
    ('argmax\n    "Pick[X]"\nDISTRIBUTION\n    X in [" ab", " cd"]\n',
     lambda r: set(r.distribution) == {" ab", " cd"} and abs(sum(r.distribution.values()) - 1) < 1e-6),
    # `distribution` right after a prompt statement, with and without a where
    ('"Hello [WHO]" distribution WHO in ["ab", "cd"]\n', lambda r: set(r.distribution) == {"ab", "cd"}),
    ('"Hello [WHO]" where len(WHO) < 5 distribution WHO in ["ab", "cd"]\n',
     lambda r: r.variables["WHO"] == max(r.distribution, key=r.distribution.get)),
    # a query indented as a whole (a docstring's text), in both forms
    ('    "Pick[X]" where X in [" ab"]\n    return X.strip()\n', lambda r: r.value == "ab"),
    ('    argmax\n        "Pick[X]"\n    where\n        X in [" ab"]\n', lambda r: r.variables["X"] == " ab"),
    # a where clause continued on the next line after a trailing `and` / `or`
    ('argmax\n    "Pick[X]"\nwhere\n    len(TOKENS(X)) < 4 and\n    X in [" ab", " cd"]\n',
     lambda r: r.variables["X"] in (" ab", " cd")),
    ('"Pick[X]" where X in [" ab"] or\n    X in [" cd"]\n', lambda r: r.variables["X"] in (" ab", " cd")),
    # Python statements before the decoder line (LMQL's prologue) share the query's scope
    ('import math\nk = 6\ndef shout(s):\n    return s.upper()\nargmax(max_len=200)\n'
     '    "Pick[X]" where len(TOKENS(X)) < k and X in [" ab", " cd"]\n    return shout(X) + str(math.floor(1.5))\n',
     lambda r: r.value in (" AB1", " CD1")),
    ('from random import sample\nsample = sample([1], 1)\n"Pick[X]" where X in [" ab"]\nreturn sample\n',
     lambda r: r.value == [1]),  # `sample` bound by the prologue stays Python
    # top-level await, of a coroutine and of a plain value (LMQL's `await input()`)
    ('async def fetch():\n    return "ab"\nv = await fetch()\nw = await str("cd")\n"{v}{w}[X]" where X in ["!"]\n',
     lambda r: r.prompt == "abcd!"),
    # post-processing chains apply innermost last: [@a @b X] is a(b(X))
    ('def a(s):\n    return s + "!"\ndef b(s):\n    return s.upper()\n"Pick[@a @b X]" where X in [" ab"]\n',
     lambda r: r.variables["X"] == " AB!" and r.prompt == "Pick AB!"),
    # lowercase constraint names: LMQL's stops_at / stops_before, and ours for the rest
    ('"Count:[X]" where stops_at(X, "1") and len(tokens(X)) < 8 and regex(X, r"[ 0-9]+")\n',
     lambda r: re.fullmatch(r"[ 0-9]+", r.variables["X"]) and len(r.variables["X"]) >= 1),
    ('"N:[X]" where int(X) and len(tokens(X)) < 3\n', lambda r: isinstance(r.variables["X"], int)),
    ('k = "2"\n"Pick[X]" where len(X) <= int(k) + 1 and X in [" ab", " abcd"]\n',
     lambda r: r.variables["X"] == " ab"),  # int() of a value that is no hole is Python's
    ('def regex(s, p):\n    return True\n"Pick[X]" where regex(X, "no") and X in [" ab"]\n',
     lambda r: r.variables["X"] == " ab"),  # the query's own function, not REGEX
    # a stop phrase ends the value first, also inside a forced text (LMQL's test_stopping)
    ('\'"songs":[[\\n        "[G]\' where STOPS_BEFORE(G, \',\') and STOPS_BEFORE(G, \'"\') and STOPS_BEFORE(G, \']\') '
     'and len(TOKENS(G)) < 10 and G == \'abc",\'\n"|"\n',
     lambda r: r.variables["G"] == "abc" and r.prompt.endswith('"abc|')),
    ('"[G]" where STOPS_AT(G, ".") and G in ["a.b", "c"]\n', lambda r: r.variables["G"] in ("a.", "c")),
]


@pytest.mark.parametrize("source, holds", CASES, ids=[repr(c[0])[:50] for c in CASES])
def test_lmql_syntax_runs(source, holds):
    assert checker.check(compiler.compile_query(parser.parse(source, "lmql.lmq"))) == []
    assert holds(run(source))


def test_positions_stay_right_in_an_indented_query():
    with pytest.raises(lmql_lite.ConstraintError) as info:
        run('    x = 1\n    "Pick[X]" where X in []\n')
    assert (info.value.line, info.value.column) == (2, 10)
    assert info.value.source_line == '    "Pick[X]" where X in []'


def test_a_nested_query_without_return_is_a_macro():
    src = '''
@lmql.query
def greet(name):
    """lmql
    "Hello {name}, say[W]" where W in [" hi"]
    """
"Start. [G: greet('Ann')] End."
return G
'''
    r = run(src)
    assert r.prompt == "Start. Hello Ann, say hi End."
    assert r.value == "Hello Ann, say hi" and "None" not in r.prompt


def test_a_nested_query_with_return_none_still_gives_none():
    src = '''
@lmql.query
def quiet():
    """lmql
    "inner[W]" where W in [" x"]
    return None
    """
"Start [G: quiet] end"
'''
    assert run(src).prompt == "Start None end"
