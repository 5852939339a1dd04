"""Queries on the real default model: every constraint kind holds on what the model really writes."""
import re

import pytest

import lmql_lite
from lmql_lite.interpreter import Runner
from lmql_lite.decoders import DecoderOptions
from lmql_lite.api import _index, _starts, load
from lmql_lite.models.transformers import default_tokenizer

pytestmark = pytest.mark.model

QA = "Q: What is the capital of France?\nA:"
QA_SRC = QA.replace("\n", "\\n")  # as written inside a query's string literal


def run(source, model, **inputs):
    return lmql_lite.run(source, model=model, trace=True, **inputs)


def hole_tokens(result, name):
    return [t for t in result.trace.tokens if t.variable == name]


def test_stops_at_keeps_the_phrase_and_ends_there(default_model):
    r = run(f'"{QA_SRC}[X]" where STOPS_AT(X, ".") and len(TOKENS(X)) < 30\n', default_model)
    x = r.variables["X"]
    assert x.count(".") <= 1 and (x.endswith(".") or len(hole_tokens(r, "X")) == 29 or "." not in x)


def test_stops_before_drops_the_phrase(default_model):
    r = run(f'"{QA_SRC}[X]" where STOPS_BEFORE(X, "\\n") and len(TOKENS(X)) < 30\n"|"\n', default_model)
    assert "\n" not in r.variables["X"]
    assert r.prompt == QA + r.variables["X"] + "|"


def test_several_stop_phrases_whichever_comes_first(default_model):
    r = run(f'"{QA_SRC}[X]" where STOPS_BEFORE(X, ".") and STOPS_BEFORE(X, "\\n") and len(TOKENS(X)) < 30\n',
            default_model)
    assert "." not in r.variables["X"] and "\n" not in r.variables["X"]


@pytest.mark.parametrize("op, n, ok", [("<", 5, lambda k: k < 5), ("<=", 3, lambda k: k <= 3),
                                       ("==", 4, lambda k: k == 4)])
def test_token_budget(default_model, op, n, ok):
    r = run(f'"Tell me a story.\\n[X]" where len(TOKENS(X)) {op} {n}\n', default_model)
    assert ok(len(hole_tokens(r, "X")))


def test_character_length(default_model):
    r = run(f'"{QA_SRC}[X]" where len(X) < 12 and STOPS_BEFORE(X, "\\n")\n', default_model)
    assert len(r.variables["X"]) < 12


def test_choice_and_equality(default_model):
    r = run(f'"{QA_SRC}[X] Sure? [Y]" where X in [" Paris", " Lyon", " Nice"] and Y == "yes"\n', default_model)
    assert r.variables["X"] in (" Paris", " Lyon", " Nice") and r.variables["Y"] == "yes"


def test_choice_from_a_python_value(default_model):
    r = run(f'cities = [" Berlin", " Rome"]\n"{QA_SRC}[X]" where X in cities\n', default_model)
    assert r.variables["X"] in (" Berlin", " Rome")


def test_not_in_and_not_contains(default_model):
    r = run('"Name a colour:[X]" where not "e" in X and STOPS_BEFORE(X, "\\n") and len(TOKENS(X)) < 8\n',
            default_model)
    assert "e" not in r.variables["X"]
    r = run('"Pick one:[X]" where X in [" red", " blue", " green"] and X not in [" red"]\n', default_model)
    assert r.variables["X"] in (" blue", " green")


def test_int_and_float(default_model):
    r = run('"Q: How many legs does a spider have?\\nA: [N]" where INT(N) and len(TOKENS(N)) < 4\n', default_model)
    assert isinstance(r.variables["N"], int)
    r = run('"Q: What is pi?\\nA: [P]" where FLOAT(P) and len(TOKENS(P)) < 8\n', default_model)
    assert isinstance(r.variables["P"], float)


def test_typed_holes(default_model):
    r = run('"Year of the moon landing: [Y: int]\\nPrice: [P: float]\\nCode: [C: r\'[A-Z]{3}-[0-9]{2}\']"'
            ' where len(TOKENS(Y)) < 4 and len(TOKENS(P)) < 8\n', default_model)
    assert isinstance(r.variables["Y"], int) and isinstance(r.variables["P"], float)
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", r.variables["C"])


def test_regex_date(default_model):
    r = run('"The first moon landing was on the date (YYYY-MM-DD): [D]" where REGEX(D, r"\\d{4}-\\d{2}-\\d{2}")\n',
            default_model)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.variables["D"])


def test_or_and_not_combinations(default_model):
    r = run('"Answer with a number or a word:[X]" where (INT(X) or X in [" maybe", " never"]) and len(TOKENS(X)) < 4\n',
            default_model)
    x = r.variables["X"]
    assert x in (" maybe", " never") or re.fullmatch(r" ?-?\d+", str(x))
    r = run('"Pick:[X]" where X in [" a", " b", " c"] and not (X == " a" or X == " b")\n', default_model)
    assert r.variables["X"] == " c"


def test_constraint_on_an_earlier_variable(default_model):
    r = run('"First:[A] Again:[B]" where A in [" one", " two"] and B in [A, A.upper()]\n', default_model)
    assert r.variables["B"] in (r.variables["A"], r.variables["A"].upper())


def test_python_predicate_is_checked_at_the_end(default_model):
    src = ('def short(s):\n    return len(s) < 3\n'
           '"Say:[X]" where X in [" hello", " hi"] and short(X)\n')
    with pytest.raises(lmql_lite.ConstraintError) as info:
        run(src.replace('" hi"', '" hey there"'), default_model)
    assert "short" in str(info.value)


def test_token_healing_gives_sensible_text_with_and_without_a_trailing_space(default_model):
    for prompt in ("A: ", "A:"):
        r = run(f'"Q: What is the capital of France?\\n{prompt}[X]" where STOPS_BEFORE(X, "\\n") '
                'and len(TOKENS(X)) < 12\n', default_model)
        assert "Paris" in r.variables["X"], (prompt, r.variables["X"])
        assert "  " not in r.prompt  # the healed space is not written twice


def test_healing_can_be_turned_off(default_model):
    body = '"Q: What is the capital of France?\\nA: [X]" where len(TOKENS(X)) < 3\n'
    on = run(body, default_model)
    off = run("argmax(healing=False)\n    " + body, default_model)
    prompt = len(default_model.bos_ids) + len(default_model.encode("Q: What is the capital of France?\nA: "))
    assert off.trace.prompt_tokens == prompt      # the trailing space stays a prompt token
    assert on.trace.prompt_tokens == prompt - 1   # healed: the hole's first token re-spells it
    assert on.prompt.startswith("Q: What is the capital of France?\nA: ")


def test_chat_tags_render_with_the_template(default_model):
    r = run('"{:system}You answer in one word.{:user}What is the capital of France?{:assistant}[X]"'
            ' where STOPS_BEFORE(X, ".") and len(TOKENS(X)) < 8\n', default_model)
    assert "<|im_start|>system\nYou answer in one word.<|im_end|>\n" in r.prompt
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in r.prompt
    assert "Paris" in r.variables["X"]


def test_every_token_goes_through_the_model_once(default_model, monkeypatch):
    src = ('"Q: Name a fruit.\\nA:[A]\\n" where STOPS_BEFORE(A, "\\n") and len(TOKENS(A)) < 6\n'
           '"Q: Name a colour.\\nA:[B]\\n" where B in [" red", " green", " blue"]\n'
           '"Q: Name a number.\\nA: [C]" where INT(C) and len(TOKENS(C)) < 3\n')
    program = load(src)
    made = []  # the run lets go of its batch at the end: keep it here to look at
    monkeypatch.setattr(default_model, "batch", lambda rows, batch=default_model.batch: made.append(batch(rows)) or made[-1])
    # no drafts: a rejected draft's tokens are fed and then forgotten
    runner = Runner(default_model, _index(default_model), DecoderOptions(speculate=False))
    (result,) = runner.run(_starts(program, [{}]))
    t = result.trace
    (batch,) = made
    sequence = batch.tokens(0)
    assert batch.tokens_fed == t.tokens_fed
    # Each token of the final sequence went through the model exactly once: nothing re-encoded.
    assert t.tokens_fed == len(sequence)
    assert result.prompt.startswith(default_model.decode(sequence[len(default_model.bos_ids):]))
    # One forward pass per token the decoder chose; forced tokens ride along for free.
    assert t.forward_passes == t.generated_tokens


def test_a_chat_without_system_message_gets_the_template_default(default_model):
    r = run('"{:user}Say hi.{:assistant}[X]" where len(TOKENS(X)) < 4\n', default_model)
    messages = [{"role": "user", "content": "Say hi."}]
    expected = default_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert r.prompt.startswith(expected)
