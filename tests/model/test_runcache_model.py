"""The run cache on the real default model: a second run of a query with several kinds of hole replays it exactly, with no forward pass."""
from __future__ import annotations

import pytest

import lmql_lite

pytestmark = pytest.mark.model

QUERY = '''argmax
    "Q: What is the capital of France?\\nA:[CITY]" where STOPS_AT(CITY, "\\n") and len(TOKENS(CITY)) < 12
    "Is it on the coast (yes or no)?[COAST]" where COAST in [" yes", " no"]
    "\\nIts population in millions: [N]" where INT(N) and len(TOKENS(N)) < 4
    return [CITY.strip(), COAST, N]
'''


def test_a_second_run_on_the_default_model_needs_no_forward_pass(default_model, tmp_path):
    first = lmql_lite.run(QUERY, model=default_model, cache=str(tmp_path))
    second = lmql_lite.run(QUERY, model=default_model, cache=str(tmp_path))
    assert first.trace.forward_passes > 0
    assert second.trace.forward_passes == 0 and second.trace.tokens_fed == 0
    assert (second.prompt, second.value, second.logprobs) == (first.prompt, first.value, first.logprobs)
    assert lmql_lite.run(QUERY, model=default_model).value == first.value  # the cache changed nothing
