"""Time limits that hold: through `except Exception` (the query's and ours), in threads, nested, in the API and the CLI."""
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

import lmql_lite
from lmql_lite import api, cli
from lmql_lite.deadline import Deadline
from lmql_lite.errors import QueryArgumentError, QueryTimeoutError
from lmql_lite.models.fake import FakeModel

SWALLOWING = '''while True:
    try:
        x = sum(range(1000))
    except Exception:
        pass
'''


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    fake = FakeModel()
    monkeypatch.setattr(api, "model", lambda name=None: fake)
    return fake


def elapsed(fn):
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def test_except_exception_cannot_swallow_the_timeout():
    before = signal.getsignal(signal.SIGALRM)

    def run():
        with pytest.raises(QueryTimeoutError):
            with Deadline(0.3):
                while True:
                    try:
                        time.sleep(0.01)
                    except Exception:
                        pass
    assert elapsed(run) < 1.5
    assert signal.getsignal(signal.SIGALRM) == before  # the handler is given back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_finished_block_leaves_no_alarm_behind():
    with Deadline(0.2):
        pass
    time.sleep(0.3)  # nothing fires
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_outer_deadline_fires_through_an_inner_one():
    outer = Deadline(0.3, label="outer")

    def run():
        with pytest.raises(QueryTimeoutError, match="outer"):
            with outer:
                with Deadline(30, label="inner"):
                    while True:
                        pass
    assert elapsed(run) < 1.5


def test_a_deadline_in_another_thread():
    errors = []

    def work():
        try:
            with Deadline(0.3):
                while True:
                    try:
                        sum(range(100))
                    except Exception:
                        pass
        except QueryTimeoutError as e:
            errors.append(e)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(5)
    assert not thread.is_alive() and len(errors) == 1


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0, -1, "5", True])
def test_unusable_limits_are_argument_errors(seconds):
    with pytest.raises(QueryArgumentError, match="timeout"):
        Deadline(seconds)


def test_api_run_timeout_stops_a_query_that_swallows_exceptions():
    def run():
        with pytest.raises(QueryTimeoutError, match="timeout 0.3 s"):
            lmql_lite.run(SWALLOWING, timeout=0.3)
    assert elapsed(run) < 2


def test_api_run_batch_timeout_counts_only_time_inside_the_generator():
    src = '"{x}[A]" where A in ["ab", "cd"]\n'
    rows = api.run_batch(src, [{"x": str(i)} for i in range(4)], batch_size=1, timeout=0.5)
    assert next(rows)[0] == 0
    time.sleep(0.7)  # the caller's own time is not the query's
    with pytest.raises(QueryTimeoutError):
        for _ in rows:
            pass


def test_cli_timeout_stops_a_query_that_swallows_exceptions(tmp_path, capsys):
    path = tmp_path / "q.lmq"
    path.write_text(SWALLOWING)
    codes = []
    assert elapsed(lambda: codes.append(cli.main(["run", str(path), "--timeout", "0.5"]))) < 2
    assert codes == [7]
    assert "--timeout 0.5 s" in capsys.readouterr().err


def test_cli_json_timeout_prints_what_was_decoded(tmp_path, capsys):
    path = tmp_path / "q.lmq"
    path.write_text('"Hello [A]" where A in ["ab"]\nwhile True:\n    pass\n')
    assert cli.main(["run", str(path), "--timeout", "0.5", "--json"]) == 7
    doc = json.loads(capsys.readouterr().out)
    assert doc["prompt"] == "Hello ab" and doc["error"]["type"] == "QueryTimeoutError"


def test_cli_streaming_timeout_keeps_the_streamed_text(tmp_path, capsys):
    path = tmp_path / "q.lmq"
    path.write_text('"Hello [A]" where A in ["ab"]\nwhile True:\n    pass\n')
    assert cli.main(["run", str(path), "--timeout", "0.5"]) == 7
    captured = capsys.readouterr()
    assert captured.out == "Hello ab\n" and "--timeout" in captured.err


@pytest.mark.parametrize("json_output", [False, True])
def test_cli_timeout_in_a_hole_shows_its_text_so_far(tmp_path, capsys, monkeypatch, json_output):
    from lmql_lite.models import fake
    path = tmp_path / "q.lmq"
    path.write_text('argmax(max_len=4000)\n"Hello [A]" where len(TOKENS(A)) < 3000\n')
    api.load(str(path))  # parsing is not what this test times
    step = fake.FakeBatch.step

    def slow_step(self, *args, **kwargs):
        time.sleep(0.02)
        return step(self, *args, **kwargs)
    monkeypatch.setattr(fake.FakeBatch, "step", slow_step)
    assert cli.main(["run", str(path), "--timeout", "1"] + (["--json"] if json_output else [])) == 7
    out = capsys.readouterr().out
    text = json.loads(out)["prompt"] if json_output else out
    assert text.startswith("Hello ") and len(text.strip()) > len("Hello ") + 3


def test_a_query_that_catches_even_the_timeout_is_ended(tmp_path):
    path = tmp_path / "q.lmq"
    path.write_text("import time\nwhile True:\n    try:\n        time.sleep(0.01)\n    except BaseException:\n        pass\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lmql_lite", "run", str(path), "--timeout", "0.5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 7, done.stderr
    assert "--timeout 0.5 s" in done.stderr  # by a later alarm, or at the last by ending the process
    assert time.monotonic() - start < 60
