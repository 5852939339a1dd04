"""Where a value ends (docs/language.md): the rule on the fake model, the default bound, healing that cannot strand a hole."""
import json
import re

import numpy as np
import pytest

import lmql_lite
from lmql_lite import decoders
from lmql_lite.constraints.base import Mask
from lmql_lite.constraints.guide import DEFAULT_HOLE_TOKENS
from lmql_lite.models.fake import FakeModel


def ends(r):
    return [(e.variable, e.reason) for e in r.trace.ends]


@pytest.mark.parametrize("source, pattern", [
    ('"Two plus two equals [N: int]."', r" ?-?[0-9]+"),
    ('"Pi is about [P: float]."', r" ?-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?"),
    ('"Code: [C]." where REGEX(C, r"[0-9]+")', r"[0-9]+"),
])
def test_a_number_ends_when_the_model_writes_the_following_text(source, pattern):
    fake = FakeModel(bias={".": 8.0, "<eos>": -100.0})  # the model wants "." and never ends by itself
    r = lmql_lite.run(source, model=fake, trace=True)
    (name, value), = r.variables.items()
    text = r.prompt[len(source.split("[")[0]) - 1:-1]  # the value's text as the prompt holds it
    assert re.fullmatch(pattern, text) and str(value) in (text, text.strip()) or float(text) == value
    assert ends(r) == [(name, "following text")]
    assert r.trace.ends[0].message == "ended: the model wrote the following text '.'"
    assert len([t for t in r.trace.tokens if t.variable == name]) <= 6  # a handful, not max_len


def test_an_int_value_is_sound_and_ends_without_an_end_of_sequence():
    fake = FakeModel(bias={"<eos>": -100.0, "!": 6.0})
    r = lmql_lite.run('"Count: [N: int]"', model=fake, trace=True)
    assert isinstance(r.variables["N"], int)
    assert ends(r) == [("N", "not a continuation")]
    assert r.trace.ends[0].message == "ended: the model's next token '!' cannot continue the value"


def test_choice_list_that_admits_nothing_longer_is_complete():
    r = lmql_lite.run('"Answer:[A]" where A in [" yes", " no"]', model=FakeModel())
    assert ends(r) == [("A", "complete")]


def test_free_text_keeps_lmql_semantics():
    """Every token continues free text, so only end-of-sequence or a stop phrase ends it, as in LMQL."""
    chatty = FakeModel(bias={"<eos>": -100.0, ".": 3.0})
    r = lmql_lite.run('"Say:[S]" where STOPS_AT(S, "x") and len(TOKENS(S)) < 12', model=chatty)
    assert ends(r) in ([("S", "budget")], [("S", "stop")])
    if ends(r) == [("S", "budget")]:
        assert r.trace.notes == ["S: ended at its token budget (11 tokens)"]


def test_a_hole_with_no_budget_ends_at_the_default_bound_and_says_so():
    chatty = FakeModel(bias={"<eos>": -100.0})
    r = lmql_lite.run('"Hi[X]"', model=chatty, trace=True)
    assert len([t for t in r.trace.tokens if t.variable == "X"]) == DEFAULT_HOLE_TOKENS
    assert ends(r) == [("X", "default bound")]
    assert r.trace.notes == [f"X: ended at the default bound of {DEFAULT_HOLE_TOKENS} tokens per hole"]
    doc = r.to_json()
    json.dumps(doc)
    assert doc["ends"][0]["reason"] == "default bound" and doc["notes"] == r.trace.notes


def test_the_default_bound_steers_a_regex_to_end_in_time():
    chatty = FakeModel(bias={"<eos>": -100.0})
    r = lmql_lite.run('"Hi [X]" where REGEX(X, r"(ab)+c")', model=chatty, trace=True)
    assert re.fullmatch(r"(ab)+c", r.variables["X"])
    assert len([t for t in r.trace.tokens if t.variable == "X"]) <= DEFAULT_HOLE_TOKENS


def test_max_tokens_replaces_the_default_bound():
    chatty = FakeModel(bias={"<eos>": -100.0})
    r = lmql_lite.run('argmax(max_tokens=5)\n    "Hi[X]"\n', model=chatty)
    assert r.trace.notes == ["X: ended at max_tokens=5"]


def test_healing_never_makes_a_satisfiable_hole_impossible():
    """`"age": ` ends in a space token; no token is a space and then digits, so healing is declined."""
    fake = FakeModel()
    r = lmql_lite.run('\'"age": [AGE]\' where INT(AGE) and len(TOKENS(AGE)) < 2', model=fake)
    assert isinstance(r.variables["AGE"], int)
    assert r.prompt == f'"age": {r.variables["AGE"]}'


def test_with_end_merges_every_leaving_token_into_the_end():
    logits = np.array([0.0, 1.0, 2.0, 3.0], np.float32)  # id 0 is end of sequence
    row = logits.copy()
    wish = decoders.with_end(row, Mask(np.array([True, True, False, False])), np.array([0]),
                             np.array([False, True, True, True]))
    assert wish == 3
    assert row[0] == pytest.approx(np.logaddexp.reduce([0.0, 2.0, 3.0])) and (row[1:] == logits[1:]).all()
    row = logits.copy()  # free text: every token allowed, the end is end-of-sequence alone, as in LMQL
    assert decoders.with_end(row, Mask(np.ones(4, bool)), np.array([0]), np.ones(4, bool)) == 0
    assert (row == logits).all()
