"""Queries parsed from several threads at once parse as they do alone (the parser's indentation state is per parse)."""
from concurrent.futures import ThreadPoolExecutor

from lmql_lite import parser

# Different whole-query indentation and `and` continuations: the state a parse keeps while it runs.
QUERIES = [
    'argmax\n"Q: [A]" where len(TOKENS(A)) < 5 and\n    STOPS_AT(A, ".")\n',
    '    argmax\n        "Hello [B]"\n        if True:\n            "x [C]" where C in ["a", "b"]\n',
    '"Once [S]" where STOPS_AT(S, "\\n") or\n    len(TOKENS(S)) > 3\nreturn S\n',
    '        sample(temperature=0.5)\n            "Z [D]" where INT(D)\n',
]


def test_parses_from_many_threads_equal_the_parses_alone():
    alone = [parser.parse(q) for q in QUERIES]
    work = QUERIES * 40
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(parser.parse, work))
    assert together == alone * 40
