"""Speculative drafts on the real default model: argmax writes the same with and without drafts, copying takes fewer passes."""
import pytest

import lmql_lite
from lmql_lite import api

pytestmark = pytest.mark.model


@pytest.fixture(autouse=True)
def every_guess_sent(monkeypatch):
    """Wider passes as cheap as on a GPU, so every guess is sent and verified on real decoding:
    whether a draft is worth its pass on this CPU is the cost model's call
    (tests/unit/test_speculate.py), and on llama.cpp it seldom is."""
    from lmql_lite import speculate
    flat = speculate.Learned(lambda width: 1.0)
    monkeypatch.setattr(speculate, "learned_for", lambda model: flat)

DOC = ("Northwind Labs announced that Dr. Helena Vasquez-Moreau will lead its new research centre in Porto. "
       "The centre opens in September 2025 and will employ 140 engineers. The budget is 48 million euros.")

QUERIES = [
    # copy a name (a stop phrase ends it)
    f'"Article: {DOC}\\nQ: Who will lead the centre? Give the full name.\\nA:[NAME]" '
    'where STOPS_AT(NAME, "\\n") and len(TOKENS(NAME)) < 20\n',
    # quote a sentence, STOPS_BEFORE (the row is reconciled after the hole)
    f'"Article: {DOC}\\nCopy the sentence that gives the budget.\\nSentence: \\"[Q]" '
    'where STOPS_BEFORE(Q, "\\"") and len(TOKENS(Q)) < 30\n',
    # a JSON-like record: forced text between holes, INT, a choice
    f'"Article: {DOC}\\n{{{{\\n  \\"city\\": \\"[CITY]\\",\\n" where STOPS_BEFORE(CITY, \'"\') and len(TOKENS(CITY)) < 8\n'
    '"  \\"engineers\\": [N],\\n" where INT(N) and len(TOKENS(N)) < 5\n'
    '"  \\"month\\": \\"[M]\\"\\n}}}}" where M in ["May", "September", "October"]\n',
    # a budget that ends the hole mid-copy; healing at the hole's start ("Vasq" re-spelt)
    f'argmax(max_tokens=6)\n"Article: {DOC}\\nThe leader is Dr. Helena Vasq[X]"\n',
    # a regex whose literal parts are forced
    f'"Article: {DOC}\\nOpening: [D]" where REGEX(D, r"(January|September|May) 20[0-9][0-9]")\n',
]


@pytest.mark.parametrize("source", QUERIES)
def test_drafts_write_what_one_token_per_pass_writes(default_model, source):
    on = lmql_lite.run(source, model=default_model, trace=True)
    off = lmql_lite.run(source, model=default_model, trace=True, speculate=False)
    assert on.prompt == off.prompt and on.variables == off.variables
    assert on.logprob == pytest.approx(off.logprob, abs=1e-3)
    assert on.trace.forward_passes <= off.trace.forward_passes
    assert off.trace.drafted_tokens == 0


def test_copying_a_name_takes_fewer_passes_than_tokens(default_model):
    r = lmql_lite.run(QUERIES[0], model=default_model, trace=True)
    t = r.trace
    assert "Vasquez-Moreau" in r.variables["NAME"]
    assert t.accepted_tokens >= 3 and t.forward_passes < t.generated_tokens + t.forced_tokens


def test_a_batch_with_drafts_writes_what_each_row_writes_alone(default_model):
    source = (f'"Article: {DOC}\\nQ: {{question}}\\nA:[A]" where STOPS_AT(A, "\\n") and len(TOKENS(A)) < 16\n')
    rows = [{"question": "Who will lead the centre?"}, {"question": "Where is the centre?"},
            {"question": "How many engineers?"}]
    together = dict(api.run_batch(source, rows, model=default_model, batch_size=3))
    alone = dict(api.run_batch(source, rows, model=default_model, batch_size=1, speculate=False))
    assert [together[i].prompt for i in range(3)] == [alone[i].prompt for i in range(3)]


@pytest.fixture(scope="module")
def transformers_model():
    from lmql_lite.models import load_model
    return load_model(None, engine="transformers")


def test_a_healed_token_is_guessed_in_the_prompts_pass(transformers_model):
    # Healing takes the prompt's last token back (`A:` ends in ":"); without drafts the model's
    # choice in its place costs a pass of its own, with them it is guessed in the prompt's pass.
    source = f'"Article: {DOC}\\nQ: Where is the new centre?\\nA:[A]" where len(TOKENS(A)) < 6\n'
    on = lmql_lite.run(source, model=transformers_model, trace=True)
    off = lmql_lite.run(source, model=transformers_model, trace=True, speculate=False)
    assert on.prompt == off.prompt and on.logprob == pytest.approx(off.logprob, abs=1e-3)
    assert on.trace.tokens[0].how == "chosen" and on.trace.tokens[0].text.startswith(":")
    assert on.trace.forward_passes < off.trace.forward_passes and on.trace.accepted_tokens >= 1
    two = lmql_lite.run(source, model=transformers_model, trace=True, max_tokens=2)  # the healed token and one more
    assert two.variables["A"] == on.variables["A"][:len(two.variables["A"])]
    assert (two.trace.forward_passes, two.trace.drafted_tokens, two.trace.accepted_tokens) == (1, 1, 1)


def test_llama_cpp_guesses_no_healed_token(default_model):
    # Its batched passes round otherwise than one-token passes (docs/engines.md, "Numerics"): a guess
    # in the prompt's pass would move the value's first choice off what plain decoding sees.
    from lmql_lite import decoders, speculate
    drafter = speculate.for_options(decoders.DecoderOptions(), default_model, speculate.Spellings(default_model.encode))
    exact = getattr(default_model, "batch_exact", True)
    assert drafter.heal is exact and (drafter.queued_limit is None) is exact
