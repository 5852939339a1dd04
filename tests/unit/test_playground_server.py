"""The playground's server over real HTTP on 127.0.0.1 (no browser): the page, examples, runs as server-sent events, Stop."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

import lmql_lite  # noqa: E402
from lmql_lite.errors import QueryArgumentError  # noqa: E402
from lmql_lite.models.fake import FakeModel  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHOICE = 'argmax\n    "Is it good?[A]" where A in [" yes", " no"]\n    "\\nSo:[B]" where B in [" positive"]\n    return A\n'


def start(base: str, **request) -> str:
    r = httpx.post(f"{base}/api/run", json=request, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def events(base: str, run: str, timeout: float = 60) -> list[dict]:
    """Every event of a run, read from its server-sent event stream until `done`."""
    out, kind = [], None
    with httpx.stream("GET", f"{base}/api/runs/{run}/events", timeout=timeout) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                event = json.loads(line[len("data: "):])
                assert event["type"] == kind  # the `event:` line names the type
                out.append(event)
                if kind == "done":
                    break
    return out


def test_the_page_and_its_modules_are_served(playground_server):
    base, _ = playground_server
    page = httpx.get(base + "/")
    assert page.status_code == 200 and 'type="module"' in page.text and "is a program" in page.text
    for name in ("app.js", "tokens.js", "highlight.js", "style.css"):
        assert httpx.get(f"{base}/static/{name}").status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: everything is served from here


def test_examples_are_the_shipped_queries(playground_server):
    base, _ = playground_server
    shipped = {e["name"]: e["source"] for e in httpx.get(base + "/api/examples").json()}
    assert shipped["capital.lmq"] == (EXAMPLES / "capital.lmq").read_text()
    assert set(shipped) == {p.name for p in EXAMPLES.glob("*.lmq")}


def test_inputs_are_the_querys_free_variables(playground_server):
    base, _ = playground_server
    doc = httpx.post(base + "/api/inputs", json={"source": (EXAMPLES / "capital.lmq").read_text()}).json()
    assert doc == {"inputs": ["country"], "error": None}
    bad = httpx.post(base + "/api/inputs", json={"source": 'argmax\n    "x [A" where\n'}).json()
    assert bad["inputs"] == [] and bad["error"]["kind"] == "LmqlSyntaxError" and bad["error"]["line"] == 2


def test_a_run_streams_the_schema_and_its_json_equals_run(playground_server):
    base, models = playground_server
    run = start(base, source=CHOICE, model="fake")
    got = events(base, run)
    types = [e["type"] for e in got]
    assert types[-1] == "done" and "error" not in types
    assert types.index("text") < types.index("hole") < types.index("token") < types.index("hole_end") < types.index("result")
    tokens = [e for e in got if e["type"] == "token"]
    vocab = len(models["fake"].vocabulary)
    assert all(t["vocab"] == vocab for t in tokens)
    assert any(t["how"] == "forced" and t["allowed"] == 1 and t["p"] is None for t in tokens)
    chosen = [t for t in tokens if t["how"] == "chosen"]
    assert chosen and all(0 < t["p"] <= 1 and 1 <= t["allowed"] <= vocab for t in chosen)
    ends = {e["name"]: e for e in got if e["type"] == "hole_end"}
    assert ends["A"]["value"] in (" yes", " no") and ends["B"]["value"] == " positive"
    expected = lmql_lite.run(CHOICE, model=FakeModel()).to_json()
    assert httpx.get(f"{base}/api/runs/{run}/result.json").json() == expected


def test_decoder_and_seed_fields_match_run(playground_server):
    base, _ = playground_server
    query = '"Say:[X]" where len(TOKENS(X)) < 6\n'
    run = start(base, source=query, model="fake", decoder="sample", seed="7")
    assert events(base, run)[-1]["type"] == "done"
    expected = lmql_lite.run(query, model=FakeModel(), decoder="sample", seed=7).to_json()
    assert httpx.get(f"{base}/api/runs/{run}/result.json").json() == expected


@pytest.mark.parametrize("request_, kind, line", [
    ({"source": 'argmax\n    "x [A" where\n'}, "LmqlSyntaxError", 2),
    ({"source": '"x [A]" where A in ["a"] and A in ["b"]\n'}, "ConstraintError", 1),
    ({"source": '"Hello {name} [A]"\n'}, "QueryArgumentError", None),
    ({"source": '"x [A]"\n', "model": "/no/such/model"}, "ModelError", None),
    ({"source": '"x [A]"\n', "seed": "seven"}, "QueryArgumentError", None),
    ({"source": '"x [A]"\n', "decoder": "greedy"}, "QueryArgumentError", None),
])
def test_user_errors_come_as_an_error_event(playground_server, request_, kind, line):
    base, _ = playground_server
    request_ = {"model": "fake", **request_}
    got = events(base, start(base, **request_))
    (error,) = [e for e in got if e["type"] == "error"]
    assert error["kind"] == kind and error["message"] and "Traceback" not in error["message"]
    if line is not None:
        assert error["line"] == line and error["column"] >= 1
    assert got[-1]["type"] == "done"


def test_stop_ends_decoding(playground_server):
    base, models = playground_server
    slow = models["slow"]
    run = start(base, source='"Go:[X]" where len(TOKENS(X)) < 400\n', model="slow")
    deadline = time.monotonic() + 20
    while slow.forward_passes < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.post(f"{base}/api/runs/{run}/stop", timeout=30).json()["state"] == "stopped"
    passes = slow.forward_passes
    time.sleep(0.3)  # about 15 passes' time at the slow model's pace
    assert slow.forward_passes == passes and passes < 100
    got = events(base, run)
    assert [e["type"] for e in got][-2:] == ["stopped", "done"] and not any(e["type"] == "result" for e in got)
    assert httpx.get(f"{base}/api/runs/{run}/result.json").status_code == 404


def test_a_new_run_stops_the_one_running(playground_server):
    base, models = playground_server
    first = start(base, source='"Go:[X]" where len(TOKENS(X)) < 400\n', model="slow")
    second = start(base, source=CHOICE, model="fake")
    assert httpx.get(f"{base}/api/runs/{first}").json()["state"] == "stopped"
    assert events(base, second)[-1]["type"] == "done"


def test_loopback_only_unless_asked():
    from lmql_lite.playground.server import bind
    with pytest.raises(QueryArgumentError, match="--allow-remote") as e:
        bind("0.0.0.0", 0)
    assert "arbitrary Python" in str(e.value)
    bind("0.0.0.0", 0, allow_remote=True).close()


def test_a_busy_port_is_a_clear_error():
    from lmql_lite.playground.server import bind
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(QueryArgumentError, match=r"port \d+ on 127.0.0.1 is in use.*--port 0"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_the_command_serves_the_file_and_prints_its_url():
    proc = subprocess.Popen([sys.executable, "-m", "lmql_lite", "playground", str(EXAMPLES / "capital.lmq"),
                             "--port", "0", "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("lmql-lite playground on http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[3]
        config = httpx.get(url + "api/config", timeout=10).json()
        assert config["preload"] == {"name": "capital.lmq", "source": (EXAMPLES / "capital.lmq").read_text()}
        assert config["remote"] is False
    finally:
        proc.terminate()
        proc.wait(60)  # after a model has run, the process takes several seconds to end


def test_the_command_refuses_a_remote_host_with_a_reason(capsys):
    from lmql_lite import cli
    assert cli.main(["playground", "--host", "0.0.0.0", "--no-browser"]) == QueryArgumentError.exit_code
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "is a program" in err and "Traceback" not in err


def test_a_body_that_is_not_json_is_a_400(playground_server):
    base, _ = playground_server
    r = httpx.post(base + "/api/run", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert httpx.get(base + "/api/runs/999999/events").status_code == 404


def test_a_field_the_query_no_longer_reads_is_left_out(playground_server):
    base, _ = playground_server
    query = '"Say:[X]" where len(TOKENS(X)) < 4\n'
    got = events(base, start(base, source=query, model="fake", inputs={"country": "France"}))
    assert got[-1]["type"] == "done" and not any(e["type"] == "error" for e in got)
