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


# ---- the events of a run, on the fake model ---------------------------------------------

import threading
import time

import numpy as np

import lmql_lite
from lmql_lite.models.fake import FakeBatch, FakeModel

OPTIONS = [" yes", " no", " yesterday"]
CHOICE = '"Answer:[A]" where A in [" yes", " no", " yesterday"]\n'


def softmax(x):
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


def collect(source, model, **kwargs):
    out = list(lmql_lite.stream(source, model=model, **kwargs))
    assert out[-1] == events.Done() and all(e.type != "done" for e in out[:-1])
    return out


def of(stream, kind):
    return [e for e in stream if e.type == kind]


def test_choice_tokens_carry_the_mask_size_and_exact_probabilities():
    fake = FakeModel()
    out = collect(CHOICE, fake, healing=False)
    vocab = fake.vocabulary.tokens
    ids, text = fake.bos_ids + fake.encode("Answer:"), b""
    tokens = of(out, "token")
    assert tokens and tokens[0].how == "chosen"
    for t in tokens:
        assert t.vocab == len(vocab)
        if t.how == "forced":
            assert t.allowed == 1 and t.p is None and t.p_raw is None and t.top == ()
        else:
            allowed = np.array([bool(tok) and any(o.encode().startswith(text + tok) for o in OPTIONS) for tok in vocab])
            raw = fake.logits_for(ids)
            assert t.allowed == allowed.sum()
            assert t.p_raw == pytest.approx(softmax(raw)[t.id], rel=1e-5)
            if not any(o.encode() == text for o in OPTIONS):  # no end competes here: p is the plain masked softmax
                assert t.p == pytest.approx(softmax(np.where(allowed, raw, -np.inf))[t.id], rel=1e-5)
            ranked = np.argsort(-softmax(raw), kind="stable")[:5]
            assert [a.id for a in t.top if a.id != t.id or t.id in ranked] == list(ranked)
            for a in t.top:
                assert a.allowed == bool(allowed[a.id])
                assert a.p_raw == pytest.approx(softmax(raw)[a.id], rel=1e-5)
        ids.append(t.id)
        text += vocab[t.id]
    (end,) = of(out, "hole_end")
    assert end.name == "A" and end.text == text.decode() and end.text in OPTIONS and end.tokens == len(tokens)
    assert of(out, "result")[0].result.variables["A"] == end.text


def test_the_first_choice_step_allows_one_token_per_distinct_first_token():
    fake = FakeModel()
    first = of(collect(CHOICE, fake, healing=False), "token")[0]
    starts = {tok for tok in fake.vocabulary.tokens if tok and any(o.encode().startswith(tok) for o in OPTIONS)}
    assert first.allowed == len(starts)


def test_forced_text_is_marked_forced():
    out = collect('"Date: [D]" where REGEX(D, r"2024-[0-9]{2}")\n', FakeModel(), healing=False)
    tokens = of(out, "token")
    forced = [t for t in tokens if t.how == "forced"]
    assert forced and all(t.allowed == 1 and t.p is None for t in forced)
    assert "-" in "".join(t.text for t in forced)
    assert of(out, "hole_end")[0].text.startswith("2024-")


def test_healed_token_names_the_prompt_text_it_respells():
    out = collect(CHOICE, FakeModel())
    first = of(out, "token")[0]
    assert first.how == "healed" and first.heal == ":" and first.text.startswith(":")


def test_event_order_and_prompt_text():
    out = collect('"Q: {x}\\n" "A:[A]" where A in ["ab", "cd"]\n"done"\n', FakeModel(), x="hi", healing=False)
    kinds = [e.type for e in out]
    assert kinds[0] == "text" and kinds[-2:] == ["result", "done"]
    assert kinds.index("hole") < kinds.index("token") < kinds.index("hole_end")
    hole = of(out, "hole")[0]
    assert (hole.name, hole.constraint, hole.line) == ("A", 'A in ["ab", "cd"]', 1)
    text = "".join(e.text if e.type == "text" else e.text if e.type == "hole_end" else "" for e in out)
    assert text == of(out, "result")[0].result.prompt


@pytest.mark.parametrize("source, reason", [
    ('"[X]" where STOPS_AT(X, "e")\n', "stop"),
    ('"[X]" where len(TOKENS(X)) < 3\n', "budget"),
    (CHOICE, "complete"),
])
def test_hole_end_reasons(source, reason):
    (end,) = of(collect(source, FakeModel(), healing=False), "hole_end")
    assert end.reason == reason and end.passes >= 1


def test_hole_end_when_the_model_ends_the_value():
    (end,) = of(collect('"[X]"\n', FakeModel(bias={"<eos>": 6.0}), healing=False), "hole_end")
    assert end.reason == "end"


def test_distribution_event_is_the_results_distribution():
    out = collect('argmax "Is it:[L]" distribution L in [" yes", " no"]\n', FakeModel())
    (d,) = of(out, "distribution")
    result = of(out, "result")[0].result
    assert d.name == "L" and d.scores == result.distribution and sum(d.scores.values()) == pytest.approx(1)
    assert events.Text(0, max(d.scores, key=d.scores.get), None, "value") in out


def test_user_error_is_a_positioned_error_event_then_done():
    out = collect('"a [X]" where len(TOKENS(X)) < 3\n"b {1 / 0}"\n', FakeModel())
    error = out[-2]
    assert error.type == "error" and error.kind == "QueryRuntimeError" and error.line == 2 and error.column
    assert "division by zero" in error.message
    syntax = collect('"unclosed [X"\n', FakeModel())
    assert syntax[0].type == "error" and syntax[0].kind == "LmqlSyntaxError" and syntax[0].line == 1


def test_internal_errors_still_raise():
    class Broken(FakeModel):
        def batch(self, rows=1):
            raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        list(lmql_lite.stream('"[X]"\n', model=Broken()))


class Counting(FakeModel):
    """The fake model, counting forward passes (each a little slow, as a real one is)."""
    def __init__(self):
        super().__init__()
        self.passes = 0

    def batch(self, rows=1):
        model = self

        class Batch(FakeBatch):
            def step(self, feeds, only=None):
                model.passes += 1
                time.sleep(0.002)
                return super().step(feeds, only)
        return Batch(self, rows)


def test_closing_the_stream_stops_decoding():
    model = Counting()
    stream = lmql_lite.stream('"[X]" where len(TOKENS(X)) < 200\n', model=model)
    taken = 0
    for e in stream:
        taken += e.type == "token"
        if taken == 5:
            break
    stream.close()
    stopped = model.passes
    time.sleep(0.2)
    assert model.passes == stopped < 20
    assert not [t for t in threading.enumerate() if t.name == "lmql_lite.stream"]


def test_query_function_stream_and_async_stream():
    fake = FakeModel()

    @lmql_lite.query(model=fake)
    def pick(q):
        '''"{q}:[A]" where A in ["ab", "cd"]
        return A'''
    out = list(pick.stream("Q"))
    assert out[-2].type == "result" and out[-2].result.value in ("ab", "cd")
    assert of(out, "text")[0].text == "Q:"

    import asyncio

    async def gather():
        return [e async for e in lmql_lite.astream(CHOICE, model=fake, healing=False)]
    def timeless(stream):  # the events but their timings
        return [{k: v for k, v in e.to_json().items() if k != "ms"} for e in stream if e.type != "result"]
    assert timeless(asyncio.run(gather())) == timeless(collect(CHOICE, fake, healing=False))


def test_no_alternatives_leaves_out_the_unmasked_distribution():
    tokens = of(collect(CHOICE, FakeModel(), alternatives=0, healing=False), "token")
    assert all(t.p_raw is None and t.top == () for t in tokens if t.how == "chosen")
    with pytest.raises(lmql_lite.QueryArgumentError):
        lmql_lite.stream(CHOICE, alternatives=-1)


def test_top_k_is_still_the_sampling_option():
    out = collect('"[X]" where len(TOKENS(X)) < 4\n', FakeModel(), top_k=1, seed=3, healing=False)
    assert all(t.p == pytest.approx(1.0) for t in of(out, "token") if t.how == "chosen")


def test_a_plain_run_keeps_no_events():
    r = lmql_lite.run(CHOICE, model=FakeModel())
    assert r.trace.events is None and r.trace.tokens is None


# ---- Jupyter's view ---------------------------------------------------------------------

def test_repr_html_of_a_streamed_result_colours_its_tokens():
    out = collect(CHOICE, FakeModel(), healing=False)
    page = of(out, "result")[0].result._repr_html_()
    chosen = [t for t in of(out, "token") if t.how == "chosen"]
    assert page.count('class="lt-tok lt-chosen"') == len(chosen)
    assert "hsl(" in page and f"allowed {chosen[0].allowed} of {chosen[0].vocab}" in page
    assert "(masked out)" in page and "Answer:" in page


def test_repr_html_of_a_plain_run_marks_the_values():
    r = lmql_lite.run('"<b>[A]</b>" where A in ["ab", "cd"]\n', model=FakeModel(), healing=False)
    page = r._repr_html_()
    assert "&lt;b&gt;" in page and "<b>" not in page.split("</style>")[1]
    assert f'<span class="lt-value" title="A">{r.variables["A"]}</span>' in page
    assert r.spans == [(3, 5, "A")]
