"""The Python surface LMQL users call (`import lmql_lite as lmql`): arguments, decoders, query functions, models, results."""
from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lmql_lite as lmql  # noqa: E402
from lmql_lite import api, models  # noqa: E402
from lmql_lite.models.fake import FakeModel  # noqa: E402

CHOICE = '"Pick[A]" where A in ["ab", "cd", "12"]\nreturn A\n'
LIMIT = 3


@pytest.fixture
def fake():
    return FakeModel()


@pytest.mark.parametrize("kwargs, message", [
    ({"temprature": 0.5}, "did you mean temperature?"),
    ({"countri": "x"}, "did you mean country?"),
    ({"zzz": 1}, "inputs: country"),
])
def test_a_keyword_that_is_neither_input_nor_option_is_an_error(fake, kwargs, message):
    with pytest.raises(lmql.QueryArgumentError, match="unknown argument") as e:
        lmql.run('"{country}[A]" where A in ["ab"]\n', model=fake, country="x", **{k: v for k, v in kwargs.items()
                                                                                 if k != "country"})
    assert message in str(e.value)


def test_sampling_keywords_select_sample(fake):
    results = lmql.run(CHOICE, model=fake, temperature=0.5, n=3, seed=1)
    assert len(results) == 3 and all(r.value in ["ab", "cd", "12"] for r in results)


@pytest.mark.parametrize("kwargs, message", [
    ({"decoder": "sampel"}, "did you mean 'sample'?"),
    ({"decoder": "argmax", "temperature": 0.5}, "argmax takes no option temperature"),
])
def test_bad_decoder_keywords(fake, kwargs, message):
    with pytest.raises(lmql.QueryArgumentError, match=message):
        lmql.run(CHOICE, model=fake, **kwargs)


def test_an_input_named_like_an_option_stays_an_input(fake):
    assert lmql.run('return n * 2\n', model=fake, n=4).value == 8


def test_positional_arguments_fill_inputs_in_order_of_appearance(fake):
    src = '"{b}{a}"\nreturn b + a\n'
    assert lmql.run_sync(src, "x", "y", model=fake) == "xy"
    with pytest.raises(lmql.QueryArgumentError, match="takes 2 positional arguments"):
        lmql.run(src, "x", "y", "z", model=fake)


def test_run_sync_and_await_give_the_return_value_run_gives_the_result(fake):
    result = lmql.run(CHOICE, model=fake)
    assert isinstance(result, lmql.Result)
    assert lmql.run_sync(CHOICE, model=fake) == result.value
    assert asyncio.run(_awaited(lmql.run(CHOICE, model=fake))) == result.value
    no_return = '"Pick[A]" where A in ["ab", "cd"]\n'
    assert isinstance(lmql.run_sync(no_return, model=fake), lmql.Result)


async def _awaited(x):
    return await x


@pytest.mark.parametrize("suffix", [".lmq", ".lmql"])
def test_run_and_run_file_take_paths(tmp_path, fake, suffix):
    path = tmp_path / f"q{suffix}"
    path.write_text(CHOICE)
    assert lmql.run(str(path), model=fake).value in ["ab", "cd", "12"]
    other = tmp_path / "query.txt"
    other.write_text(CHOICE)
    assert lmql.run_file(str(other), model=fake).value in ["ab", "cd", "12"]
    with pytest.raises(lmql.QueryArgumentError, match="no such query file"):
        lmql.run(str(tmp_path / f"missing{suffix}"), model=fake)


def test_query_text_with_lmql_first_line_and_indentation(fake):
    assert lmql.run('''lmql
        argmax
            return s
        ''', model=fake, s="hi").value == "hi"


def test_query_string_is_async_unless_told(fake):
    q = lmql.query('"Pick[A]" where A in ["ab", "cd"]\nreturn (s, A)\n', model=fake)
    s, a = asyncio.run(q(s="x"))
    assert s == "x" and a in ["ab", "cd"]
    q_sync = lmql.query('return (s, a)\n', input_variables=["s", "a"], is_async=False, model=fake)
    assert q_sync("x", a=2) == ("x", 2)


def test_decorator_options_and_call_time_override(fake):
    @lmql.query(model=fake, decoder="sample", temperature=1.8, n=2, seed=3)
    def pick():
        '''lmql
        "Pick[A]" where A in ["ab", "cd", "12"]
        return A
        '''
    assert len(pick()) == 2
    assert pick(decoder="argmax") == lmql.run(CHOICE, model=fake).value
    assert len(pick(decoder="beam", n=2)) == 2
    with pytest.raises(lmql.QueryArgumentError, match="unknown keyword temprature"):
        lmql.query(temprature=1.0)


def test_query_functions_see_their_defining_scope(fake):
    limit = 2

    @lmql.query(model=fake)
    def helper(x):
        '''lmql
        return x + 1
        '''

    @lmql.query(model=fake)
    def uses():
        '''lmql
        return helper(LIMIT) + limit
        '''
    assert uses() == LIMIT + 1 + limit


def test_query_functions_as_methods_and_async(fake):
    class Agent:
        name = "A"

        @lmql.query(model=fake)
        async def ask(self, s, k=2):
            '''lmql
            return self.name, s, k
            '''
    assert asyncio.run(Agent().ask("q")) == ("A", "q", 2)


def test_F_with_positional_and_keyword_arguments(fake):
    f = lmql.F("Say {what}:[Y]", 'Y in ["12", "2024"]', model=fake)
    assert f("it") == f(what="it") in ["12", "2024"]


def test_lmql_result_fields(fake):
    r = lmql.run('argmax\n    "Answer:[A]"\ndistribution\n    A in [" yes", " no"]\n', model=fake)
    assert r.distribution_variable == "A" and r.distribution_values == [" yes", " no"]
    assert dict(r.variables["P(A)"]) == r.distribution
    assert r.variables["A"] == max(r.distribution, key=r.distribution.get)


def test_context_prompt_is_the_prompt_so_far(fake):
    r = lmql.run('"Pick[A]" where A in ["ab", "cd"]\nreturn context.prompt\n', model=fake)
    assert r.value == r.prompt == "Pick" + r.variables["A"]


def test_score_matches_the_model(fake):
    scored = lmql.score_sync("ab", ["cd", " yes"], model=fake)
    for value, scores in zip(scored.continuations, scored.token_scores):
        ids = fake.bos_ids + fake.encode("ab") + fake.encode(value)
        expected = []
        for k in range(len(ids) - len(fake.encode(value)), len(ids)):
            logits = fake.logits_for(ids[:k]).astype(np.float64)
            expected.append(logits[ids[k]] - np.logaddexp.reduce(logits))
        assert scores == pytest.approx(expected, abs=1e-4)
    assert scored.argmax() == scored.continuations[int(np.argmax([s.sum() for s in scored.token_scores]))]
    assert scored.probs().sum() == pytest.approx(1.0)


def test_generate_is_bounded_by_max_tokens(fake):
    text = lmql.generate_sync("ab", max_tokens=4, model=fake)
    assert isinstance(text, str) and len(fake.encode(text)) <= 4 + 1  # the text may re-tokenize differently


@pytest.mark.parametrize("name", ["openai/gpt-3.5-turbo-instruct", "chatgpt", "gpt-4", "azure/x"])
def test_remote_models_are_a_clear_error(name):
    with pytest.raises(lmql.ModelError, match="not supported yet") as e:
        models.load_model(name)
    assert "serving-engine" in str(e.value)
    with pytest.raises(lmql.ModelError, match="not supported yet"):
        lmql.run(f'argmax\n    "[X]"\nfrom\n    "{name}"\n')


def test_local_names_resolve_to_the_local_loader(monkeypatch, tmp_path):
    from lmql_lite.models import transformers as backend
    asked = []
    monkeypatch.setenv("LMQL_LITE_ENGINE", "transformers")  # the default model would run on llama.cpp when installed
    monkeypatch.delenv("LMQL_LITE_DEVICE", raising=False)
    monkeypatch.delenv("LMQL_LITE_DTYPE", raising=False)
    monkeypatch.setattr(backend, "load_model", lambda name=None, **placement: asked.append((name, placement)) or "loaded")
    (tmp_path / "config.json").write_text("{}")  # a model folder (check_name looks for its config)
    models.load_model("local:SmolLM2-135M-Instruct")
    models.load_model(f"local:{tmp_path}")
    models.load_model("local:org/model", cuda=True, silent=True)  # LMQL's cuda=True: the device cuda
    auto = {"device": "auto", "dtype": "auto", "threads": None}
    assert asked == [(None, auto), (str(tmp_path), auto), ("org/model", {**auto, "device": "cuda"})]
    with pytest.raises(lmql.ModelError, match="unknown option 'sed'; did you mean 'seed'"):
        models.load_model("random", sed=1)


def test_model_handles_are_lazy_and_shared():
    handle = lmql.model("openai/gpt-4")  # nothing is loaded yet, so no error
    assert handle.model_identifier == "openai/gpt-4"
    with pytest.raises(lmql.ModelError):
        handle.vocabulary


def test_random_model_is_deterministic_by_seed():
    a, b, c = (lmql.model("random", seed=s).load() for s in (123, 123, 7))
    ids = a.encode("Hello there")
    assert np.array_equal(a.logits_for(ids), b.logits_for(ids))
    assert not np.array_equal(a.logits_for(ids), c.logits_for(ids))
    assert len(a.vocabulary) > 10_000  # a real tokenizer's vocabulary
    src = '"Say:[R]" where len(TOKENS(R)) < 6\n'
    assert lmql.run(src, model=lmql.model("random", seed=123)).prompt == lmql.run(src, model=b).prompt


def test_pre_streaming_and_post_decorators(fake):
    seen = {"pre": [], "stream": []}

    @lmql.decorators.pre
    def look(variable):
        seen["pre"].append(variable.name)
        return variable

    @lmql.decorators.streaming
    def stream(text, context):
        seen["stream"].append(text)

    r = lmql.run('"Say:[@len @stream @look R]" where len(TOKENS(R)) < 4\n', model=fake, stream=stream, look=look)
    assert seen["pre"] == ["R"]
    assert seen["stream"] and all(b.startswith(a) for a, b in zip(seen["stream"], seen["stream"][1:]))
    assert r.variables["R"] == len(seen["stream"][-1]) and r.prompt == f"Say:{r.variables['R']}"


def test_a_pre_decorator_can_fix_the_value(fake):
    @lmql.decorators.pre
    def fixed(variable):
        return "Fixed Value"

    r = lmql.run('"Say:[@fixed R] and [S]" where S in ["ab", "cd"]\n', model=fake, fixed=fixed)
    assert r.variables["R"] == "Fixed Value" and r.prompt == f"Say:Fixed Value and {r.variables['S']}"
    assert r.trace.generated_tokens + r.trace.forced_tokens <= 2  # only S was decoded
