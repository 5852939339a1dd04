"""Limits: every constraint compiles in bounded time and memory or fails with a ConstraintError naming the knob;
decoder options are checked before any model work; budgets that max_len makes impossible fail before decoding."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import lmql_lite
from lmql_lite.constraints import automata, json_schema, terms
from lmql_lite.constraints.guide import compile_guide
from lmql_lite.constraints.holes import plan_hole
from lmql_lite.errors import ConstraintBudgetError, ConstraintError, QueryArgumentError
from lmql_lite.index import TokenIndex
from lmql_lite.interpreter import Runner
from lmql_lite.models.fake import FakeModel

A = terms.Var("A")
LOADED = 60  # seconds: generous for a loaded 2-core machine (each case takes a few seconds when idle)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def test_long_char_length_with_a_token_budget_compiles_quickly():
    term = terms.And((terms.Compare(terms.Length(A), "<", 5000), terms.Compare(terms.Length(terms.Tokens("A")), "<", 4)))
    guide, seconds = _timed(lambda: compile_guide(term, "A", TokenIndex(FakeModel().vocabulary)))
    assert seconds < LOADED
    assert guide.automaton.accepting[0]  # the empty text has length 0 < 5000
    assert automata.max_states() >= len(guide.automaton.accepting)


def test_word_repeat_compiles_quickly_and_exactly():
    plan, seconds = _timed(lambda: plan_hole(terms.Regex("A", r"\w{50}"), "A"))
    assert seconds < LOADED
    dfa = automata.Dfa(plan.automaton.table, plan.automaton.accepting)
    assert dfa.accepts(("é" * 50).encode()) and not dfa.accepts(b"a" * 49) and not dfa.accepts(b"a" * 51)


def test_json_array_with_many_free_items_is_bounded_and_max_items_still_holds():
    schema = {"type": "array", "maxItems": 300}
    language, seconds = _timed(lambda: json_schema.language(schema))
    assert seconds < LOADED
    assert language.accepts(b"[1, \"a\", [true]]")
    convert = json_schema.converter(schema)
    assert convert(json.dumps([0] * 300, separators=(",", ":"))) == [0] * 300
    with pytest.raises(ConstraintError, match="items"):
        convert(json.dumps([0] * 301))


def test_json_array_with_simple_items_keeps_its_exact_count():
    language = json_schema.language({"type": "array", "items": {"type": "integer"}, "maxItems": 300})
    assert language.accepts(("[" + ", ".join(["7"] * 300) + "]").encode())
    assert not language.accepts(("[" + ", ".join(["7"] * 301) + "]").encode())


def test_exponential_regex_hits_the_state_budget_quickly_in_bounded_memory():
    script = textwrap.dedent('''
        import time
        from lmql_lite.constraints import terms
        from lmql_lite.constraints.holes import plan_hole
        from lmql_lite.errors import ConstraintBudgetError
        start = time.perf_counter()
        try:
            plan_hole(terms.Regex("A", r"(a|b)*a(a|b){20}"), "A")
        except ConstraintBudgetError as e:
            print("error:", e)
        print("seconds:", time.perf_counter() - start)
        # VmHWM is this process's own peak; ru_maxrss would also count the pytest process that
        # spawned it (Linux keeps it across exec), which is gigabytes once the model tests ran.
        hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print("peak MB:", int(hwm.split()[1]) / 1024)
    ''')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMQL_LITE_MAX")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300).stdout
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert "A: the constraint needs more than 100,000 automaton states" in lines["error"]
    assert "LMQL_LITE_MAX_STATES" in lines["error"]
    assert float(lines["seconds"]) < LOADED
    assert float(lines["peak MB"]) < 1500  # it peaked at 7.1 GB before the budget


def test_the_state_budget_is_a_knob(monkeypatch):
    monkeypatch.setenv("LMQL_LITE_MAX_STATES", "500")
    with pytest.raises(ConstraintBudgetError, match=r"^A: the constraint needs more than 500 automaton states "
                                                    r"\(set LMQL_LITE_MAX_STATES"):
        plan_hole(terms.Regex("A", r"[a-z]{1000}"), "A")
    monkeypatch.setenv("LMQL_LITE_MAX_STATES", "lots")
    with pytest.raises(ConstraintError, match="LMQL_LITE_MAX_STATES='lots' must be a positive int"):
        plan_hole(terms.Regex("A", r"[a-z]{3}"), "A")


def test_the_time_budget_is_a_knob(monkeypatch):
    monkeypatch.setenv("LMQL_LITE_MAX_COMPILE_SECONDS", "0.0001")
    with pytest.raises(ConstraintBudgetError, match=r"^B: compiling the constraint took more than 0.0001 s "
                                                    r"\(set LMQL_LITE_MAX_COMPILE_SECONDS"):
        plan_hole(terms.Regex("B", r"(?:x[0-9a-f]{2}|\w)+[a-z]{30}\w{30}"), "B")


def test_budget_errors_in_a_query_name_the_hole_and_the_knob(monkeypatch):
    monkeypatch.setenv("LMQL_LITE_MAX_STATES", "2000")
    for where in ['REGEX(A, r"(a|b)*a(a|b){20}")', "len(A) < 10 ** 40"]:
        with pytest.raises(ConstraintBudgetError, match="A: the constraint needs more than 2,000 automaton states "
                                                        r"\(set LMQL_LITE_MAX_STATES"):
            lmql_lite.run(f'argmax "Say: [A]" where {where}', model=FakeModel())


@pytest.mark.parametrize("schema, message", [
    ({"type": "integer", "minimum": float("nan")}, "`minimum` needs a finite number, got nan"),
    ({"type": "number", "maximum": float("inf")}, "`maximum` needs a finite number, got inf"),
    ({"type": "integer", "maximum": 10 ** 5000}, "numbers must have at most"),
    ({"type": "array", "maxItems": float("nan")}, "`maxItems` needs a non-negative integer"),
    ({"type": "string", "minLength": -1}, "`minLength` needs a non-negative integer"),
])
def test_bad_json_schema_bounds_are_constraint_errors(schema, message):
    with pytest.raises(ConstraintError, match=message):
        json_schema.language(schema)


def test_huge_json_bounds_are_checked_on_the_value():
    schema = {"type": "integer", "minimum": -10 ** 300, "maximum": 10 ** 20}
    assert json_schema.language(schema).accepts(b"123456789012345678901234")
    with pytest.raises(ConstraintError, match="maximum"):
        json_schema.converter(schema)("123456789012345678901234")


@pytest.mark.parametrize("where, message", [
    ('len(TOKENS(A)) < float("nan")', "cannot be compared with NaN"),
    ('len(A) > float("nan")', "cannot be compared with NaN"),
    ('len(A) < "ten"', "a length compares with a number"),
])
def test_nan_length_bounds_are_constraint_errors(where, message):
    with pytest.raises(ConstraintError, match=message):
        lmql_lite.run(f'argmax "[A]" where {where}', model=FakeModel())


@pytest.mark.parametrize("where", ['len(TOKENS(A)) < float("inf")', 'len(A) < float("inf") and len(TOKENS(A)) < 3'])
def test_infinite_and_huge_length_bounds_mean_no_bound(where):
    result = lmql_lite.run(f'argmax(max_len=12) "[A]" where {where}', model=FakeModel())
    assert isinstance(result.variables["A"], str)


@pytest.mark.parametrize("decoder, message", [
    ("sample(n=2.5)", "n must be an integer, got 2.5"),
    ('sample(temperature=float("nan"))', "temperature must be positive and finite, got nan"),
    ('sample(temperature=float("inf"))', "temperature must be positive and finite, got inf"),
    ("sample(n=100000)", "n=100000 is above the limit of 1024 results"),
    ('sample(top_p=float("nan"))', "top_p must be a number in"),
    ("sample(top_k=2.0)", "top_k must be an integer"),
    ("sample(seed=2**70)", "seed must be from 0 to 18,446,744,073,709,551,615"),
    ("sample(seed=-1)", "seed must be from 0 to"),
    ("argmax(max_len=10**100)", None),
    ("argmax(max_tokens=0)", "max_tokens must be at least 1"),
    ('argmax(healing="no")', "healing must be True or False"),
])
def test_decoder_options_are_checked_before_any_model_work(decoder, message):
    model = _NoForwardPasses()
    source = f'{decoder}\n"[A]" where A in ["ab", "cd"]\n'
    if message is None:
        assert lmql_lite.run(source, model=model).variables["A"] in ("ab", "cd")
        return
    with pytest.raises(QueryArgumentError, match=message):
        lmql_lite.run(source, model=model)
    assert model.batches == 0


def test_a_seed_too_large_is_an_argument_error_from_the_api_and_the_cli(tmp_path, capsys):
    from lmql_lite import cli
    with pytest.raises(QueryArgumentError, match="seed must be from 0 to"):
        lmql_lite.run('sample "[A]" where A in ["ab"]', model=FakeModel(), seed=2 ** 70)
    path = tmp_path / "q.lmq"
    path.write_text('sample\n"[A]" where A in ["ab"]\n')
    # the options are checked before the model is loaded: no model is needed to see the error
    assert cli.main(["run", str(path), "--seed", str(2 ** 70)]) == QueryArgumentError.exit_code
    assert "seed must be from 0 to" in capsys.readouterr().err


class _NoForwardPasses(FakeModel):
    """A fake model that counts the batches made, to show an error came before any model work."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def batch(self, rows: int):
        self.batches += 1
        return super().batch(rows)


@pytest.mark.parametrize("query, message", [
    ('argmax(max_len=30) "Say: [A]" where len(TOKENS(A)) > 100', "A needs at least 101 tokens"),
    ('argmax(max_tokens=4) "Say: [A]" where len(TOKENS(A)) >= 5', "max_tokens=4 leave room for 4"),
    ('argmax(max_len=20) "Say: [A]" where REGEX(A, r"[0-9]{200}")', "A needs at least"),
])
def test_a_budget_max_len_makes_impossible_fails_before_decoding(query, message):
    model = _NoForwardPasses()
    with pytest.raises(ConstraintError, match=message):
        lmql_lite.run(query, model=model)
    assert model.batches == 0


def test_distribution_scores_in_chunks_with_the_same_result(monkeypatch):
    values = [f"v{i}" for i in range(50)] + ["yes", "no", "ab"]
    source = 'argmax "Answer:[X]" distribution X in values'
    whole = lmql_lite.run(source, model=FakeModel(), values=values)
    monkeypatch.setattr(Runner, "SCORE_CHUNK", 7)
    chunked = lmql_lite.run(source, model=FakeModel(), values=values)
    assert chunked.variables == whole.variables
    assert chunked.distribution == pytest.approx(whole.distribution)
    assert chunked.trace.forward_passes > whole.trace.forward_passes
