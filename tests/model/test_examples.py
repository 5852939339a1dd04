"""Every example in examples/ runs on the default model, and its values obey the example's own constraints."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import lmql_lite

pytestmark = pytest.mark.model
EXAMPLES = Path(__file__).parents[2] / "examples"


def run(name, model, trace=False, **inputs):
    return lmql_lite.run(str(EXAMPLES / name), model=model, trace=trace, **inputs)


def test_capital(default_model):
    r = run("capital.lmq", default_model, country="France")
    assert r.value["coast"] in ("yes", "no")
    assert "\n" not in r.value["city"] and r.variables["CITY"].endswith("\n")


def test_classify(default_model):
    r = run("classify.lmq", default_model, review="The best pizza I have had in years, and friendly staff.")
    assert r.value in ("positive", "neutral", "negative")


def test_extract(default_model):
    r = run("extract.lmq", default_model)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.value["date"])
    assert isinstance(r.value["items"], int)


def test_list(default_model):
    r = run("list.lmq", default_model)
    assert len(r.value) == 3 and all("\n" not in fruit for fruit in r.value)


def ends(r):
    return {e.variable: e.reason for e in r.trace.ends}


def test_two_plus_two_ends_within_a_handful_of_tokens(default_model):
    r = lmql_lite.run('"Two plus two equals [N: int]"', model=default_model, trace=True)
    assert isinstance(r.variables["N"], int)
    assert len(r.trace.tokens) <= 5 and ends(r)["N"] in ("end", "following text", "not a continuation")


def test_chain_of_thought(default_model):
    r = run("chain_of_thought.lmq", default_model, question="Can a cat fly?")
    assert r.value["answer"] in ("yes", "no")
    assert "\n" not in r.value["reasoning"] and len(r.value["reasoning"].split()) >= 3
    # The nested query's prompt was replaced by its return value.
    assert "Let's think step by step" not in r.prompt and r.value["reasoning"] in r.prompt


def test_calculator(default_model):
    r = run("calculator.lmq", default_model, trace=True)
    expression = r.value["expression"]
    assert re.fullmatch(r"[0-9]+ ?[*+/-] ?[0-9]+", expression)
    a, op, b = re.match(r"([0-9]+) ?([*+/-]) ?([0-9]+)", expression).groups()
    expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op]
    assert r.value["value"] == expected and f"Result: {r.value['value']}" in r.prompt
    assert 12 in (int(a), int(b)) and len(r.trace.tokens) <= 8  # the question's numbers, and it stops
    assert ends(r)["EXPR"] not in ("budget", "default bound", "max_len")


def test_distribution(default_model):
    r = run("distribution.lmq", default_model, headline="Local team wins the championship after extra time")
    assert set(r.distribution) == {" sports", " politics", " science", " business"}
    assert sum(r.distribution.values()) == pytest.approx(1.0)
    assert r.variables["TOPIC"] == max(r.distribution, key=r.distribution.get)


def test_chat(default_model):
    r = run("chat.lmq", default_model)
    assert re.fullmatch(r"[A-Z][a-z]+", r.value) and "<|im_start|>assistant\n" in r.prompt
    assert r.value == "Mars"  # the red planet
    assert ends(r)["PLANET"] not in ("budget", "default bound", "max_len")


def test_sample_is_reproducible(default_model):
    a = run("sample.lmq", default_model)
    b = run("sample.lmq", default_model)
    assert len(a) == 3 and [r.value for r in a] == [r.value for r in b]
    assert all("\n" not in r.value and "." not in r.value for r in a)


def test_record(default_model):
    r = run("record.lmq", default_model)
    assert not r.trace.notes  # nothing cut by a budget
    assert isinstance(r.value["age"], int) and r.value["class"] in ("warrior", "wizard", "thief")
    assert '"' not in r.value["name"]
    record = json.loads(r.prompt[r.prompt.index("{"):])  # the prompt itself is a JSON document
    assert record["class"] == r.value["class"]


def test_few_shot_with_true_and_shuffled_labels(default_model):
    review = "An absolute delight from start to finish."
    true = run("few_shot.lmq", default_model, review=review, shuffled="no")
    shuffled = run("few_shot.lmq", default_model, review=review, shuffled="yes")
    for r in (true, shuffled):
        assert set(r.distribution) == {" positive", " negative"}
        assert sum(r.distribution.values()) == pytest.approx(1.0)
    assert true.distribution != shuffled.distribution  # the examples' labels move the model


def test_pattern_machine(default_model):
    r = run("pattern_machine.lmq", default_model, sequence=[2, 4, 6, 8])
    assert r.value == [10, 12, 14, 16]  # the sequence continues the pattern, and stops after four


def test_think_then_answer(default_model):
    r = run("think_then_answer.lmq", default_model, question="Is the sun hotter than the moon?")
    assert r.value["answer"] in ("yes", "no") and r.value["confidence"] in ("low", "medium", "high")
    assert r.value["thought"] and "\n" not in r.value["thought"]
    verdict = json.loads(r.prompt[r.prompt.rindex("{"):])  # the JSON in the prompt is the verdict read
    assert verdict == {"answer": r.value["answer"], "confidence": r.value["confidence"]}


def _example_module(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_in_context_learning_with_gold_and_shuffled_labels(default_model, tmp_path):
    icl = _example_module("icl_labels")
    rows = icl.load()
    rows = rows[:4] + rows[4:8]  # the four demonstrations and four test reviews (two of each label): test time
    report = icl.evaluate(default_model, rows)
    tests = len(rows) - 4
    assert set(report) == {"gold", "shuffled"} and report["shuffled"]["demo labels"] != report["gold"]["demo labels"]
    for r in report.values():
        assert sum(r["predicted"].values()) == tests and 0 <= r["p(gold)"] <= 1
        assert r["accuracy"] * tests == pytest.approx(round(r["accuracy"] * tests))
    assert report["gold"]["accuracy"] > 0.5  # better than chance on an easy balanced set
    assert "gold" in icl.table(report)
    png = tmp_path / "icl.png"
    if icl.plot(report, str(png)):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pattern_machine_run(default_model):
    patterns = _example_module("pattern_run")
    rows = patterns.run(default_model, sequences=[[2, 4, 6, 8, 10], [10, 20, 30, 40, 50]], grids=[0])
    for row in rows:
        if row["kind"] == "sequence":
            assert len(row["answer"]) == 4 and row["right"]  # continues the pattern
        else:  # the format is kept: a 3 × 3 grid of . and #
            assert len(row["answer"]) == 3 and all(re.fullmatch(r"[.#]{3}", line) for line in row["answer"])


def test_embedded_python_script():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(EXAMPLES / "embedded.py")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("France → ") and lines[2].split("→ ")[1] in ("yes", "no")


def test_readme_first_command_runs_the_capital_example():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "lmql_lite", "run", str(EXAMPLES / "capital.lmq"), "--arg",
                          "country=France", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["value"]["coast"] in ("yes", "no")
