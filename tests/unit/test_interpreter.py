"""The interpreter on the fake model: every construct runs, values obey constraints, the KV accounting is exact."""
import re

import numpy as np
import pytest

import lmql_lite
from lmql_lite import api
from lmql_lite.errors import ConstraintError, LmqlSyntaxError, QueryArgumentError, QueryRuntimeError
from lmql_lite.models.fake import FakeModel


@pytest.fixture
def fake():
    return FakeModel()


def run(source, model, **inputs):
    # A keyword the query does not read is an error, so pass only the inputs each query uses.
    reads = api.load(source).inputs
    return lmql_lite.run(source, model=model, **{k: v for k, v in inputs.items() if k in reads})


def greedy_choice(model, prompt_ids, options):
    """Brute force: greedy decoding where a token is allowed iff the text stays a prefix of some option.

    Once the text is a whole option, ending scores the log-sum-exp of end-of-sequence and every
    token that continues no option (docs/language.md, "Where a value ends").
    """
    vocab = model.vocabulary.tokens
    ids, text = list(prompt_ids), b""
    targets = [o.encode() for o in options]
    while text not in targets or any(t.startswith(text) and t != text for t in targets):
        logits = model.logits_for(ids)
        allowed = [i for i, tok in enumerate(vocab)
                   if tok and any(t.startswith(text + tok) for t in targets)]
        scores = {i: logits[i] for i in allowed}
        if text in targets:
            leave = [i for i in range(len(vocab)) if i == 0 or i not in allowed]
            scores[0] = np.logaddexp.reduce(logits[leave])
        best = max(scores, key=scores.get)
        if best == 0:
            break
        ids.append(best)
        text += vocab[best]
    return text.decode()


def test_choice_is_the_greedy_masked_path(fake):
    r = run('"Answer:[A]" where A in [" yes", " no", " yesterday"]\n', fake)
    assert r.variables["A"] in (" yes", " no", " yesterday")
    prompt_ids = fake.bos_ids + fake.encode("Answer")  # ":" is healed into the hole's first token
    expected = greedy_choice(fake, prompt_ids, [":" + o for o in (" yes", " no", " yesterday")])
    assert ":" + r.variables["A"] == expected
    assert r.prompt == "Answer:" + r.variables["A"]


def test_prompt_text_interpolation_and_escapes(fake):
    src = '"x={x!r} y={y:>4} sum={x + 1} {{braces}} [[brackets]] end"\n'
    r = run(src, fake, x=3, y="ab")
    assert r.prompt == "x=3 y=  ab sum=4 {braces} [brackets] end"


def test_loop_if_def_and_return(fake):
    src = '''
def double(s):
    return s + s
items = []
for i in range(3):
    "{i}:[ITEM]\\n" where ITEM in ["a", "b"]
    items.append(double(ITEM))
if len(items) == 3:
    "done"
else:
    "odd"
return items
'''
    r = run(src, fake)
    assert len(r.value) == 3 and all(v in ("aa", "bb") for v in r.value)
    lines = r.prompt.split("\n")
    assert [l[:2] for l in lines[:3]] == ["0:", "1:", "2:"]
    assert lines[3] == "done"


def test_while_break_continue(fake):
    src = '''
n = 0
while True:
    n += 1
    if n == 2:
        continue
    "[X]" where X in ["a"]
    if n >= 3:
        break
return n
'''
    r = run(src, fake)
    assert r.value == 3 and r.prompt == "aa"


def test_typed_int_hole_gives_an_int(fake):
    r = run('"Number: [N: int]" where len(TOKENS(N)) < 4\n', fake)
    assert isinstance(r.variables["N"], int)
    assert re.fullmatch(r"Number: -?\d+", r.prompt)


def test_regex_hole(fake):
    r = run('"Date: [D]" where REGEX(D, r"20[0-9]{2}-[01][0-9]")\n', fake)
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]", r.variables["D"])


def test_stops_before_drops_the_phrase_from_value_and_prompt(fake):
    r = run('"A:[X]" where STOPS_BEFORE(X, ".") and len(TOKENS(X)) < 30\n"!"\n', fake)
    assert "." not in r.variables["X"]
    assert r.prompt == "A:" + r.variables["X"] + "!"


def test_decorated_hole(fake):
    src = '"[@str.upper X]" where X in ["ab"]\nreturn X\n'
    r = run(src, fake)
    assert r.value == "AB" and r.prompt == "AB"


def test_global_where_applies_to_every_hole(fake):
    src = 'argmax\n    "[A] [B]"\nwhere\n    A in ["ab"] and B in ["cd"]\n'
    r = run(src, fake)
    assert r.variables == {"A": "ab", "B": "cd"}


def test_constraint_mentioning_an_earlier_variable(fake):
    src = 'opts = ["ab", "cd"]\n"[A]" where A in opts\n"[B]" where B in [A + "x"]\nreturn B\n'
    r = run(src, fake)
    assert r.value == r.variables["A"] + "x"


def test_nested_query_is_replaced_by_its_return_value(fake):
    src = '''
@lmql.query
def inner(word):
    """lmql
    "Say {word}:[W]" where W in ["ab", "cd"]
    return W.upper()
    """
"Start [R: inner('x')] end"
return R
'''
    r = run(src, fake)
    assert r.value in ("AB", "CD")
    assert r.prompt == f"Start {r.value} end"


def test_tool_function_and_await(fake):
    src = '''
import asyncio
async def calc(a, b):
    await asyncio.sleep(0)
    return a * b
v = await calc(6, 7)
"{v}[X]" where X in ["!"]
return v
'''
    r = run(src, fake)
    assert r.value == 42 and r.prompt == "42!"


def test_chat_roles_use_the_model_markers(fake):
    r = run('"{:system}Be brief.{:user}Hi{:assistant}[A]" where A in ["ok"]\n', fake)
    assert r.prompt == "System: Be brief.\nUser: Hi\nAssistant: ok\n"


def test_distribution_matches_brute_force(fake):
    values = [" yes", " no", " pos"]
    src = 'argmax\n    "Answer:[A]"\ndistribution\n    A in [" yes", " no", " pos"]\n'
    r = run(src, fake)
    prefix = fake.bos_ids + fake.encode("Answer:")
    logps = {}
    for v in values:
        ids, total = list(prefix), 0.0
        for t in fake.encode(v):
            logits = fake.logits_for(ids).astype(np.float64)
            total += logits[t] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            ids.append(t)
        logps[v] = total
    z = np.logaddexp.reduce(list(logps.values()))
    for v in values:
        assert r.distribution[v] == pytest.approx(np.exp(logps[v] - z), rel=1e-4)
        assert r.distribution_logprobs[v] == pytest.approx(logps[v], abs=1e-4)
    assert r.variables["A"] == max(values, key=logps.get)
    assert sum(r.distribution.values()) == pytest.approx(1.0)


def test_every_token_goes_through_the_model_once(fake):
    src = '"Q: one\\nA:[A]\\nQ: two\\nB:[B]" where A in ["ab", "cd"] and B in ["12", "2024"]\n"tail"\n'
    r = run(src, fake)
    t = r.trace
    # Every token of the sequence is fed once, except the last chosen one (nothing follows it that
    # needs logits); the text after the last hole is never tokenized at all.
    assert t.tokens_fed == t.prompt_tokens + t.generated_tokens + t.forced_tokens - 1
    assert t.forward_passes <= t.generated_tokens + 2


def test_missing_input_is_a_query_argument_error(fake):
    with pytest.raises(QueryArgumentError, match="country"):
        run('"Capital of {country}: [X]" where X in ["a"]\n', fake)


def test_query_python_error_points_at_the_query_line(fake):
    with pytest.raises(QueryRuntimeError) as info:
        run('x = 1\n"[A]" where A in ["a"]\ny = 1 / 0\n', fake)
    assert info.value.line == 3 and "ZeroDivisionError" in str(info.value)


def test_unsatisfiable_constraint_is_reported_with_the_hole_position(fake):
    with pytest.raises(ConstraintError) as info:
        run('"ok"\n"Answer: [A]" where A in []\n', fake)
    assert info.value.line == 2


def test_syntax_error_has_a_position():
    with pytest.raises(LmqlSyntaxError) as info:
        api.load('"ok"\n"[A" where A in ["x"]\n')
    assert info.value.line == 2


def test_query_function_and_F(fake):
    @lmql_lite.query(model=fake)
    def pick(prefix):
        '''lmql
        "{prefix}[X]" where X in ["ab", "cd"]
        return X
        '''
    assert pick("go:") in ("ab", "cd")
    f = lmql_lite.F("Say {what}:[Y]", 'Y in ["12", "2024"]', model=fake)
    assert f(what="a number") in ("12", "2024")


def test_sample_is_reproducible_with_a_seed(fake):
    src = 'sample(n=4, temperature=1.5)\n"Pick:[A][B]" where A in ["ab", "cd", "12"] and B in ["x", "y"]\n'
    a = lmql_lite.run(src, model=fake, seed=7)
    b = lmql_lite.run(src, model=fake, seed=7)
    assert len(a) == 4
    assert [r.prompt for r in a] == [r.prompt for r in b]
    for r in a:
        assert r.variables["A"] in ("ab", "cd", "12") and r.variables["B"] in ("x", "y")


def test_beam_results_are_ranked_and_valid(fake):
    src = 'beam(n=3)\n"Pick:[A]" where A in ["ab", "cd", "12", "2024"]\n'
    results = lmql_lite.run(src, model=fake)
    assert 1 <= len(results) <= 3
    assert all(r.variables["A"] in ("ab", "cd", "12", "2024") for r in results)
    assert [r.logprob for r in results] == sorted((r.logprob for r in results), reverse=True)
    assert len({r.variables["A"] for r in results}) == 3


@pytest.mark.parametrize("source, check", [
    # one-line standalone syntax
    ('argmax "Hi[X]" where X in ["ab", "cd"]\n', lambda r: r.prompt in ("Hiab", "Hicd")),
    # modern syntax: a decoder line, then the body at the top level
    ('argmax\n"Hi[X]" where X in ["ab"]\nreturn X\n', lambda r: r.value == "ab"),
    # triple-quoted, multi-line prompt strings and comments
    ('# a comment\n"""Line one\nline two [X]"""  where X in ["ab"]  # trailing comment\n',
     lambda r: r.prompt == "Line one\nline two ab"),
    # adjacent string literals form one statement
    ('"a" "b" "[X]" where X in ["cd"]\n', lambda r: r.prompt == "abcd"),
    # typed holes: regex and float
    ('"[D: r\'[0-9]{2}-[0-9]{2}\']"\n', lambda r: re.fullmatch(r"[0-9]{2}-[0-9]{2}", r.variables["D"])),
    ('"[F: float]" where len(TOKENS(F)) < 5\n', lambda r: isinstance(r.variables["F"], float)),
    # nested format spec fields, as in f-strings
    ('w = 5\n"[[{x:>{w}}]]"\n', lambda r: r.prompt == "[   ab]"),
    # a query with no holes still runs and returns
    ('"just text"\nreturn 1\n', lambda r: r.value == 1 and r.prompt == "just text"),
    # with, try and comprehensions are plain Python
    ('try:\n    v = [i * 2 for i in range(3)]\nexcept Exception:\n    v = None\n"{v}"\nreturn v\n',
     lambda r: r.value == [0, 2, 4]),
])
def test_constructs(fake, source, check):
    assert check(run(source, fake, x="ab"))


def test_model_choice_precedence(monkeypatch):
    fake = FakeModel()
    asked = []
    monkeypatch.setattr(api, "model", lambda name=None: asked.append(name) or fake)
    src = 'argmax\n    "[X]" where X in ["ab"]\nfrom\n    "some/model-dir"\n'
    lmql_lite.run(src)
    lmql_lite.run(src, model="other-dir")
    monkeypatch.setenv("LMQL_LITE_MODEL", "env-dir")
    lmql_lite.run('"[X]" where X in ["ab"]\n')
    lmql_lite.run(src)
    assert asked == ["some/model-dir", "other-dir", "env-dir", "some/model-dir"]


def test_max_len_ends_a_valid_hole_and_says_so():
    chatty = FakeModel(bias={"<eos>": -100.0})
    r = lmql_lite.run('argmax(max_len=12)\n    "Hi[X]"\n', model=chatty)
    assert r.trace.notes == ["X: ended at max_len=12"]
    assert [(e.variable, e.reason) for e in r.trace.ends] == [("X", "max_len")]
    assert len(chatty.encode(r.prompt)) <= 12


def test_max_tokens_bounds_each_hole():
    chatty = FakeModel(bias={"<eos>": -100.0})
    r = lmql_lite.run('argmax(max_tokens=3)\n    "A[X]B[Y]"\n', model=chatty, trace=True)
    assert sum(t.variable == "X" for t in r.trace.tokens) <= 3
    assert sum(t.variable == "Y" for t in r.trace.tokens) <= 3


def test_budget_spent_on_an_invalid_value_is_a_constraint_error():
    with pytest.raises(ConstraintError, match="token budget") as info:
        lmql_lite.run('argmax(max_len=8)\n    "Hi[X]" where REGEX(X, r"[a-z]{30}")\n', model=FakeModel())
    assert info.value.line == 2
