"""The event stream on the real default model: tokens spell the values, probabilities are probabilities, closing stops."""
import threading

import pytest

import lmql_lite

pytestmark = pytest.mark.model

QUERY = ('"Q: What is the capital of France?\\nA:[CITY]" where STOPS_AT(CITY, "\\n") and len(TOKENS(CITY)) < 12\n'
         '"Is it on the coast? [COAST]" where COAST in [" yes", " no"]\n')


def test_stream_on_the_default_model(default_model):
    out = list(lmql_lite.stream(QUERY, model=default_model))
    assert out[-1].type == "done" and out[-2].type == "result"
    result = out[-2].result
    ends = {e.name: e for e in out if e.type == "hole_end"}
    assert ends["CITY"].text == result.variables["CITY"] and ends["COAST"].reason == "complete"
    tokens = [e for e in out if e.type == "token"]
    vocab = len(default_model.vocabulary.tokens)
    for t in tokens:
        assert t.vocab == vocab and 1 <= t.allowed <= vocab
        if t.how != "forced":
            assert 0 < t.p <= 1 and 0 <= t.p_raw <= 1 and sum(a.p_raw for a in t.top[:5]) <= 1 + 1e-6
            assert t.p >= t.p_raw - 1e-6  # the mask only takes probability away from others
    coast = [t for t in tokens if t.hole == "COAST" and t.how != "forced"]
    assert coast and all(t.allowed < 10 for t in coast)
    shown = "".join(t.shown for t in tokens if t.hole == "CITY")
    assert ends["CITY"].text.startswith(shown)
    page = result._repr_html_()
    assert page.count("lt-tok") >= len(tokens)


def test_closing_a_real_stream_stops_it(default_model):
    stream = lmql_lite.stream('"Once upon a time[S]" where len(TOKENS(S)) < 200\n', model=default_model)
    n = 0
    for e in stream:
        n += e.type == "token"
        if n == 3:
            break
    stream.close()
    assert n == 3 and not [t for t in threading.enumerate() if t.name == "lmql_lite.stream"]
