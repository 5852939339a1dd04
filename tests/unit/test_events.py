"""The event stream (lmql_lite/events.py): the schema's JSON form, then the events a run emits on the fake model."""
import json
import math

import pytest

from lmql_lite import events
from lmql_lite.errors import ConstraintError
from lmql_lite.result import Result


# ---- the schema ------------------------------------------------------------------------

SAMPLES = [
    (events.Text(0, "Q: ", role="user"), {"type": "text", "row": 0, "text": "Q: ", "role": "user", "kind": "prompt"}),
    (events.Hole(1, "X", 'X in ["a", "b"]', 3, 7),
     {"type": "hole", "row": 1, "name": "X", "constraint": 'X in ["a", "b"]', "line": 3, "column": 7}),
    (events.Token(0, "X", 5, "ab", "chosen", 0.5, 0.25, 3, 10,
                  (events.Alternative(5, "ab", 0.25, True), events.Alternative(2, "zz", 0.5, False)), 1.5),
     {"type": "token", "row": 0, "hole": "X", "id": 5, "text": "ab", "how": "chosen", "p": 0.5, "p_raw": 0.25,
      "allowed": 3, "vocab": 10,
      "top": [{"id": 5, "text": "ab", "p_raw": 0.25, "allowed": True}, {"id": 2, "text": "zz", "p_raw": 0.5, "allowed": False}],
      "ms": 1.5, "shown": "", "heal": ""}),
    (events.Token(0, "X", 5, "ab", "forced", None, None, 1, 10),
     {"type": "token", "row": 0, "hole": "X", "id": 5, "text": "ab", "how": "forced", "p": None, "p_raw": None,
      "allowed": 1, "vocab": 10, "top": [], "ms": 0.0, "shown": "", "heal": ""}),
    (events.HoleEnd(0, "N", 42, "42", "stop", 3, 2),
     {"type": "hole_end", "row": 0, "name": "N", "value": 42, "text": "42", "reason": "stop", "tokens": 3, "passes": 2}),
    (events.Distribution(0, "L", {"yes": 0.75, "no": 0.25}),
     {"type": "distribution", "row": 0, "name": "L", "scores": {"yes": 0.75, "no": 0.25}}),
    (events.Done(), {"type": "done"}),
]


@pytest.mark.parametrize("event, expected", SAMPLES, ids=lambda x: getattr(x, "type", ""))
def test_to_json_is_the_schema_with_type_first(event, expected):
    out = event.to_json()
    assert out == expected
    assert next(iter(out)) == "type"
    assert json.loads(json.dumps(out, allow_nan=False)) == expected
    assert events.TYPES[out["type"]] is type(event)


def test_non_finite_floats_become_null():
    out = events.Token(0, "X", 1, "a", "chosen", math.nan, -math.inf, 2, 3,
                       (events.Alternative(1, "a", math.inf, True),)).to_json()
    assert out["p"] is None and out["p_raw"] is None and out["top"][0]["p_raw"] is None
    json.dumps(out, allow_nan=False)


def test_hole_end_value_of_any_type_is_json_safe():
    class Odd:
        def __repr__(self):
            return "Odd()"
    out = events.HoleEnd(0, "X", {"a": (1, 2), 3: Odd()}, "t", "end", 1, 1).to_json()
    assert out["value"] == {"a": [1, 2], "3": "Odd()"}


def test_result_event_carries_the_result_and_its_json():
    r = Result(prompt="Q: A", variables={"X": "A"}, value={"x": "A"})
    e = events.ResultEvent(0, r)
    assert e.result is r
    assert e.to_json() == {"type": "result", "row": 0, "result": r.to_json()}


def test_error_event_keeps_the_position():
    err = ConstraintError("no value", file="q.lmq", line=3, column=9, source_line='"[X]" where X in []')
    out = events.ErrorEvent.of(err).to_json()
    assert out == {"type": "error", "message": "no value", "file": "q.lmq", "line": 3, "column": 9,
                   "kind": "ConstraintError", "source_line": '"[X]" where X in []'}


def test_events_are_frozen():
    with pytest.raises(AttributeError):
        events.Text(0, "a").text = "b"
