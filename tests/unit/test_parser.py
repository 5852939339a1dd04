"""The parser's specification: query source → facts about the `nodes.Query` it produces."""
import ast

import pytest

from lmql_lite import nodes
from lmql_lite.parser import parse


def show(part) -> str:
    """A prompt part written back in (normalised) query syntax."""
    if isinstance(part, nodes.Text):
        return part.text
    if isinstance(part, nodes.Role):
        return "{:" + part.role + "}"
    if isinstance(part, nodes.Interp):
        conversion = "!" + part.conversion if part.conversion else ""
        spec = ":" + part.format_spec if part.format_spec is not None else ""
        return "{" + part.expr.source + conversion + spec + "}"
    decorators = "".join("@" + d.source + " " for d in part.decorators)
    typed = ": " + part.type.source if part.type else ""
    return "[" + decorators + part.name + typed + "]"


def facts(q: nodes.Query) -> dict:
    decoder = None
    if q.decoder:
        args = [a.source for a in q.decoder.args] + [f"{k}={v.source}" for k, v in q.decoder.kwargs]
        decoder = q.decoder.name + (f"({', '.join(args)})" if args else "")
    return {
        "prompts": [[show(p) for p in prompt.parts] for prompt in q.prompts],
        "scoped": [prompt.where.source if prompt.where else None for prompt in q.prompts],
        "decoder": decoder,
        "indented": q.body_indented,
        "model": q.model.source if q.model else None,
        "where": q.where.source if q.where else None,
        "distribution": (q.distribution.var, q.distribution.values.source) if q.distribution else None,
    }


STANDALONE = '''argmax
    "Review: {review}\\n"
    "A:[ANALYSIS]\\n" where not "\\n" in ANALYSIS
    "Sentiment:[CLS]"
from
    "local:model"
where
    len(TOKENS(ANALYSIS)) < 40
distribution
    CLS in [" positive", " neutral", " negative"]
'''

NESTED = '''@lmql.query
def chain_of_thought(question):
    \'\'\'lmql
    "Q: {question}\\nA: Let's think step by step.[REASONING]"
    return REASONING
    \'\'\'

"Q: {q}\\n[ANSWER: chain_of_thought(q)]"
'''

CASES = [
    # prompt text, holes and interpolation
    ('"Hello [WHO]"', {"prompts": [["Hello ", "[WHO]"]]}),
    ('"Q: {question}\\nA: [ANSWER]"', {"prompts": [["Q: ", "{question}", "\nA: ", "[ANSWER]"]]}),
    ('"[X: int] [Y:float] [Z : MyRecord]"', {"prompts": [["[X: int]", " ", "[Y: float]", " ", "[Z: MyRecord]"]]}),
    ('"Date: [D: r\'\\d{4}-\\d{2}\']"', {"prompts": [["Date: ", "[D: r'\\d{4}-\\d{2}']"]]}),
    ("'Date: [D: r\"[0-9]+\"]'", {"prompts": [["Date: ", '[D: r"[0-9]+"]']]}),
    ('"[A: subquery] [B: subquery(a, [1, 2])]"', {"prompts": [["[A: subquery]", " ", "[B: subquery(a, [1, 2])]"]]}),
    ('"[@strip X] [@fn @g(1) Y: int]"', {"prompts": [["[@strip X]", " ", "[@fn @g(1) Y: int]"]]}),
    ('"[@lmql_lite.tools.clean X]"', {"prompts": [["[@lmql_lite.tools.clean X]"]]}),
    ('"{{literal}} [[also]] {x}"', {"prompts": [["{literal} [also] ", "{x}"]]}),
    ('"{x!r} {y:>10} {z!s:^{w}} {a != b}"', {"prompts": [["{x!r}", " ", "{y:>10}", " ", "{z!s:^{w}}", " ", "{a != b}"]]}),
    ('"{d[\'k\']} {f(a, [1, {2: 3}])} { {\'a\': 1}[\'a\'] }"',
     {"prompts": [["{d['k']}", " ", "{f(a, [1, {2: 3}])}", " ", "{{'a': 1}['a']}"]]}),
    ('"{:system}Be brief.{:user}Hi{:assistant}[A]"',
     {"prompts": [["{:system}", "Be brief.", "{:user}", "Hi", "{:assistant}", "[A]"]]}),
    ('"\\t\\x41\\u00e9\\N{BULLET}\\\\"', {"prompts": [["\tAé•\\"]]}),
    ('r"a\\n[X]"', {"prompts": [["a\\n", "[X]"]]}),
    ('f"f-strings are prompts too: {x} [Y]"', {"prompts": [["f-strings are prompts too: ", "{x}", " ", "[Y]"]]}),
    ('"a" \'b\' "[C]"', {"prompts": [["ab", "[C]"]]}),
    ('"""line one\nline [TWO]\n"""', {"prompts": [["line one\nline ", "[TWO]", "\n"]]}),
    ('""', {"prompts": [[]]}),
    # scoped where
    ('"A: [X]" where STOPS_AT(X, "\\n") and len(TOKENS(X)) < 20',
     {"scoped": ['STOPS_AT(X, "\\n") and len(TOKENS(X)) < 20']}),
    ('"[X]" where X in ["yes", "no"]', {"scoped": ['X in ["yes", "no"]']}),
    ('"[N]" where INT(N)\n"[D]" where REGEX(D, r"\\d{4}-\\d{2}-\\d{2}")',
     {"scoped": ["INT(N)", 'REGEX(D, r"\\d{4}-\\d{2}-\\d{2}")']}),
    ('"[S]" where not "s" in S or len(S) >= 3', {"scoped": ['not "s" in S or len(S) >= 3']}),
    ('"[S]" where (STOPS_AT(S, ".")\n    and len(S) < 9)', {"scoped": ['(STOPS_AT(S, ".")\n    and len(S) < 9)']}),
    # Python between prompts
    ('for i in range(3):\n    "item {i}: [ITEM]\\n" where STOPS_AT(ITEM, "\\n")\n    items.append(ITEM)\n',
     {"prompts": [["item ", "{i}", ": ", "[ITEM]", "\n"]], "scoped": ['STOPS_AT(ITEM, "\\n")']}),
    ('if a:\n    "A"\nelif b:\n    "B"\nelse:\n    "C"\n', {"prompts": [["A"], ["B"], ["C"]]}),
    ('while True:\n    "[X]"\n    if X == "stop": break\n    else: continue\n', {"prompts": [["[X]"]]}),
    ('try:\n    "a"\nexcept ValueError as e:\n    "b"\nfinally:\n    pass\n', {"prompts": [["a"], ["b"]]}),
    ('with open(p) as f:\n    "{f.read()}"\n', {"prompts": [["{f.read()}"]]}),
    ('import random\nfrom math import sqrt\nx = await tool(1)\n"{x}"\nreturn x\n', {"prompts": [["{x}"]]}),
    ('match x:\n    case 1:\n        "one"\n    case _:\n        "other"\n', {"prompts": [["one"], ["other"]]}),
    ('"a"; "b"\nif x: "c" where len(C) < 2\n', {"prompts": [["a"], ["b"], ["c"]], "scoped": [None, None, "len(C) < 2"]}),
    ('# a comment\n"a" # another\n', {"prompts": [["a"]]}),
    # docstrings stay Python; strings elsewhere in a def are prompts
    ('def f(x):\n    "the docstring"\n    "a prompt [X]"\n    return X\n', {"prompts": [["a prompt ", "[X]"]]}),
    ('def f(): "doc"; "p"\n', {"prompts": [["p"]]}),
    ('class C:\n    "doc"\n    x = 1\n', {"prompts": []}),
    ('async def f():\n    """doc"""\n    "p"\n', {"prompts": [["p"]]}),
    ('def f():\n    "not a docstring [X]" where X in ["a"]\n', {"prompts": [["not a docstring ", "[X]"]]}),
    (NESTED, {"prompts": [["Q: ", "{q}", "\n", "[ANSWER: chain_of_thought(q)]"]], "decoder": None}),
    ('x = lambda: "s"\ny = "t"\nprint("u")\n', {"prompts": []}),
    # the decoder clause (modern syntax)
    ('argmax\n"a"', {"decoder": "argmax", "indented": False}),
    ('sample(n=2, temperature=0.8, seed=1)\n"[X]"', {"decoder": "sample(n=2, temperature=0.8, seed=1)"}),
    ('beam(n=3, max_len=40)\n"[X]"', {"decoder": "beam(n=3, max_len=40)"}),
    ('sample(2)\n"[X]"', {"decoder": "sample(2)"}),
    ('beam_var(n=2)\n"x"', {"decoder": "beam_var(n=2)"}),
    ('best_k(n=2)\n"x"', {"decoder": "best_k(n=2)"}),
    ('beam_sample(n=2)\n"x"', {"decoder": "beam_sample(n=2)"}),
    ('var(n=2)\n"x"', {"decoder": "var(n=2)"}),
    ('# comment first\n\nargmax # why\n"x"', {"decoder": "argmax"}),
    ('sample(n=2,\n       temperature=0.5)\n"x"', {"decoder": "sample(n=2, temperature=0.5)"}),
    ('argmax\n"a [X]"\nfrom "openai/gpt"\nwhere len(X) < 3\ndistribution X in ["a", "b"]\n',
     {"decoder": "argmax", "model": '"openai/gpt"', "where": "len(X) < 3", "distribution": ("X", '["a", "b"]')}),
    ('argmax\nfrom os import path\n"{path.sep}"', {"decoder": "argmax", "model": None, "prompts": [["{path.sep}"]]}),
    # Python first lines are not decoders
    ('sample = 3\n"[X]"', {"decoder": None}),
    ('import random\n"x"', {"decoder": None}),
    ('sample(items, 2)\n', {"decoder": "sample(items, 2)"}),
    ('sampled = sample(items, 2)\n', {"decoder": None}),
    ('argmax.x = 1\n', {"decoder": None}),
    ('"x"\nargmax\n', {"decoder": None}),
    # standalone syntax
    (STANDALONE, {"decoder": "argmax", "indented": True, "model": '"local:model"',
                  "where": "len(TOKENS(ANALYSIS)) < 40",
                  "distribution": ("CLS", '[" positive", " neutral", " negative"]'),
                  "scoped": [None, 'not "\\n" in ANALYSIS', None]}),
    ('argmax "Say hi: [X]" from "m" where len(TOKENS(X)) < 5 distribution X in ["a", "b"]',
     {"decoder": "argmax", "indented": True, "model": '"m"', "where": "len(TOKENS(X)) < 5",
      "distribution": ("X", '["a", "b"]'), "prompts": [["Say hi: ", "[X]"]], "scoped": [None]}),
    ('argmax "Say: [X]"\nfrom "m"\nwhere len(X) < 5\n', {"indented": True, "model": '"m"', "where": "len(X) < 5"}),
    ('sample(n=2) "[X]" where X in ["a"] from "m"', {"decoder": "sample(n=2)", "scoped": ['X in ["a"]'], "model": '"m"'}),
    ('argmax\n    "[X]"\nfrom lmql.model("local:gpt2", cuda=True)\n',
     {"indented": True, "model": 'lmql.model("local:gpt2", cuda=True)'}),
    ('argmax\n    for i in range(2):\n        "[X]"\nwhere\n    STOPS_AT(X, ".")\n', {"indented": True, "where": 'STOPS_AT(X, ".")'}),
]


@pytest.mark.parametrize("source, expected", CASES, ids=[c[0][:40] for c in CASES])
def test_parse(source, expected):
    got = facts(parse(source))
    assert {k: got[k] for k in expected} == expected


@pytest.mark.parametrize("source", [c[0] for c in CASES], ids=[c[0][:40] for c in CASES])
def test_body_keeps_lines_and_is_python(source):
    q = parse(source)
    assert q.body.count("\n") == source.count("\n")
    ast.parse("if 1:\n" + q.body if q.body_indented else q.body)
    assert q.body.count("__lmql_prompt__(") == len(q.prompts)


def test_body_replaces_prompts_in_place_and_blanks_clauses():
    q = parse(STANDALONE)
    lines = q.body.split("\n")
    assert lines[0].strip() == ""  # the decoder clause
    assert lines[1] == "    __lmql_prompt__(0)" + " " * (len(lines[1]) - 22)
    assert lines[2].startswith("    __lmql_prompt__(1)")
    assert all(not line.strip() for line in lines[4:])  # from / where / distribution
    # a shorter call is padded, so code after it (`; x = 1`) keeps its column
    assert len(lines[2]) == len(STANDALONE.split("\n")[2])


def test_multiline_prompt_pads_newlines_inside_the_call():
    q = parse('x = 1\nif x:\n    """a\n[X]\n"""\n    y = 2\n')
    assert q.body == 'x = 1\nif x:\n    __lmql_prompt__(0\n\n)  \n    y = 2\n'


def test_docstring_of_query_function_is_kept_verbatim():
    q = parse(NESTED)
    assert "'''lmql\n    \"Q: {question}" in q.body


def test_positions_are_one_based_in_the_original_source():
    q = parse('x = 1\n  \nif x:\n    "Q: {a.b}\\n[ANS: int]" where len(ANS) < 3\n')
    prompt = q.prompts[0]
    assert prompt.pos == nodes.Pos(4, 5)
    _, interp, _, hole = prompt.parts
    assert interp.expr.pos == nodes.Pos(4, 10)   # after the `{`
    assert hole.pos == nodes.Pos(4, 16)          # the `[`; `\n` is two source characters
    assert hole.type.pos == nodes.Pos(4, 22)
    assert prompt.where.pos == nodes.Pos(4, 34)


def test_positions_in_triple_quoted_strings_and_clauses():
    q = parse(STANDALONE)
    assert q.decoder.pos == nodes.Pos(1, 1)
    assert q.prompts[1].parts[1].pos == nodes.Pos(3, 8)
    assert q.model.pos == nodes.Pos(6, 5)
    assert q.where.pos == nodes.Pos(8, 5)
    assert q.distribution.pos == nodes.Pos(10, 5)
    assert q.distribution.values.pos == nodes.Pos(10, 12)
    q = parse('"""first\n  second [X]"""')
    assert q.prompts[0].parts[1].pos == nodes.Pos(2, 10)


def test_query_keeps_filename_and_source():
    q = parse('"a"', "q.lmq")
    assert (q.filename, q.source, q.body) == ("q.lmq", '"a"', "__lmql_prompt__(0)")


def test_windows_line_endings():
    q = parse('argmax\r\n"a [X]"\r\nx = 1\r\n')
    assert q.body == '      \n__lmql_prompt__(0)\nx = 1\n'
    assert q.prompts[0].parts[1].pos == nodes.Pos(2, 4)


# ---- query files parsed once, across processes ------------------------------------------------

CACHED_SOURCE = 'argmax\n    "Q: {q}\\nA: [ANSWER]" where STOPS_AT(ANSWER, "\\n")\n    return ANSWER\n'


def test_a_query_file_is_parsed_once_and_read_back_from_the_cache(tmp_path, monkeypatch):
    from lmql_lite import parser
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path))
    first = parser.parse_cached(CACHED_SOURCE, "q.lmq")
    assert first == parse(CACHED_SOURCE, "q.lmq")
    assert len(list((tmp_path / "queries").glob("*.json"))) == 1
    monkeypatch.setattr(parser, "_Builder", lambda *a: pytest.fail("parsed again"))
    assert parser.parse_cached(CACHED_SOURCE, "q.lmq") == first
    monkeypatch.undo()
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path))
    parser.parse_cached(CACHED_SOURCE + "\n", "q.lmq")  # edited text, other file name: other entries
    parser.parse_cached(CACHED_SOURCE, "other.lmq")
    assert len(list((tmp_path / "queries").glob("*.json"))) == 3


def test_cached_parsing_reports_errors_as_parse_does_and_stores_nothing(tmp_path, monkeypatch):
    from lmql_lite import parser
    from lmql_lite.errors import LmqlSyntaxError
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path))
    bad = 'argmax\n    "Q: [ANSWER" where len(ANSWER) < 3\n'
    with pytest.raises(LmqlSyntaxError) as cached:
        parser.parse_cached(bad, "bad.lmq")
    with pytest.raises(LmqlSyntaxError) as plain:
        parse(bad, "bad.lmq")
    assert str(cached.value) == str(plain.value) and cached.value.line == 2
    assert not list((tmp_path / "queries").glob("*"))


@pytest.mark.parametrize("damage", [b"", b"not a pickle", b"\x80\x04K\x01."], ids=["empty", "garbage", "an int"])
def test_a_damaged_cache_entry_is_parsed_again(tmp_path, monkeypatch, damage):
    from lmql_lite import parser
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path))
    parser.parse_cached(CACHED_SOURCE, "q.lmq")
    (entry,) = (tmp_path / "queries").glob("*.json")
    entry.write_bytes(damage)
    assert parser.parse_cached(CACHED_SOURCE, "q.lmq") == parse(CACHED_SOURCE, "q.lmq")


def test_an_unwritable_cache_only_costs_the_parse(tmp_path, monkeypatch):
    from lmql_lite import parser
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path / "file"))
    assert parser.parse_cached(CACHED_SOURCE, "q.lmq") == parse(CACHED_SOURCE, "q.lmq")
