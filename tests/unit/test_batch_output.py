"""Batches on the command line, on the fake model: an --output that is never clobbered, error rows, resume, locks, progress."""
import fcntl
import json
import os

import pytest

from lmql_lite import api, cli
from lmql_lite.models.fake import FakeModel

QUERY = 'argmax\n    "Review: {review}\\nSentiment:[S]" where S in [" yes", " no"]\n    return S.strip()\n'


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    fake = FakeModel()
    monkeypatch.setattr(api, "model", lambda name=None: fake)
    return fake


@pytest.fixture
def files(tmp_path):
    query = tmp_path / "q.lmq"
    query.write_text(QUERY)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"review": f"text {i}"}) + "\n" for i in range(5)))
    return str(query), rows, tmp_path / "out.jsonl"


def run(query, rows, out=None, *flags):
    argv = ["run", query, "--inputs", str(rows), "--batch-size", "2", *flags]
    return cli.main(argv + (["--output", str(out)] if out is not None else []))


def indices(out):
    return [json.loads(line)["index"] for line in out.read_text().splitlines()]


def test_an_existing_output_is_refused_unless_resume_or_overwrite(files, capsys):
    query, rows, out = files
    out.write_text('{"index": 0, "result": {}}\n{"index": 1, "result": {}}\n')
    before = out.read_text()
    assert run(query, rows, out) == 5
    err = capsys.readouterr().err
    assert "already holds rows" in err and "--resume" in err and "--overwrite" in err
    assert out.read_text() == before  # untouched
    assert run(query, rows, out, "--overwrite") == 0
    assert indices(out) == [0, 1, 2, 3, 4]


def test_an_empty_output_is_written(files):
    query, rows, out = files
    out.write_text("")
    assert run(query, rows, out) == 0
    assert indices(out) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("argv, fragment", [
    (["--output", "x.jsonl"], "--output needs --inputs"),
    (["--resume"], "--resume needs --output"),
    (["--overwrite"], "--overwrite needs --output"),
    (["--inputs", "r.jsonl", "--output", "o.jsonl", "--retry-errors"], "--retry-errors needs --resume"),
    (["--inputs", "r.jsonl", "--output", "o.jsonl", "--resume", "--overwrite"], "choose one"),
])
def test_batch_flags_without_what_they_need_are_argument_errors(files, capsys, argv, fragment):
    query, _, _ = files
    assert cli.main(["run", query, *argv]) == 5
    assert fragment in capsys.readouterr().err


def test_resume_keeps_a_whole_last_row_that_lost_its_newline(files, capsys):
    query, rows, out = files
    assert run(query, rows, out) == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]))  # rows 0-2, the last without its newline
    assert run(query, rows, out, "--resume") == 0
    assert sorted(indices(out)) == [0, 1, 2, 3, 4]
    assert out.read_text().splitlines()[:3] == lines[:3]
    assert "3 rows already done" in capsys.readouterr().err


def test_resume_drops_a_torn_last_line_and_redoes_its_row(files, capsys):
    query, rows, out = files
    assert run(query, rows, out) == 0
    lines = out.read_text().splitlines()
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])
    assert run(query, rows, out, "--resume") == 0
    assert sorted(indices(out)) == [0, 1, 2, 3, 4]
    assert "cut short" in capsys.readouterr().err


def test_a_failing_row_becomes_an_error_row_and_the_run_goes_on(files, capsys):
    query, rows, out = files
    rows.write_text('{"review": "fine"}\n\n{"reviw": "typo"}\n{"review": "good"}\n')
    assert run(query, rows, out) == cli.ROWS_FAILED
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["index"] for d in docs] == [0, 1, 2]
    bad = docs[1]
    assert "result" not in bad and bad["input"] == {"reviw": "typo"}
    assert bad["error"]["type"] == "QueryArgumentError" and "review" in bad["error"]["message"]
    assert bad["error"]["inputs"] == {"file": str(rows), "line": 3}  # the blank line 2 counts
    assert all(d["result"]["value"] in ("yes", "no") for d in (docs[0], docs[2]))
    err = capsys.readouterr().err
    assert f"{rows}:3: row 1 failed" in err and "3 rows: 2 ok, 1 failed" in err


@pytest.mark.parametrize("source, kind", [
    ('"[S]" where S in ["a"] and len(S) < len(review)\n', "ConstraintError"),  # len(S) < 0: unsatisfiable
    ('x = 1 / len(review)\n"[S]" where S in ["a"]\n', "QueryRuntimeError"),  # empty review: 1 / 0
])
def test_constraint_and_runtime_errors_fail_their_row_only(tmp_path, capsys, source, kind):
    query = tmp_path / "q.lmq"
    query.write_text(source)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"review": "ab"}\n{"review": ""}\n{"review": "cd"}\n{"review": "ab"}\n')
    out = tmp_path / "out.jsonl"
    assert run(str(query), rows, out) == cli.ROWS_FAILED
    docs = {d["index"]: d for d in map(json.loads, out.read_text().splitlines())}
    assert sorted(docs) == [0, 1, 2, 3]
    assert docs[1]["error"]["type"] == kind and docs[1]["error"]["inputs"]["line"] == 2
    assert all("result" in docs[i] for i in (0, 2, 3))


def test_resume_retries_error_rows_only_when_asked(files, capsys):
    query, rows, out = files
    rows.write_text('{"review": "a"}\n{"reviw": "typo"}\n')
    assert run(query, rows, out) == cli.ROWS_FAILED
    assert run(query, rows, out, "--resume") == cli.ROWS_FAILED  # the error row stays done
    assert indices(out) == [0, 1]
    assert "1 failed; --retry-errors" in capsys.readouterr().err
    rows.write_text('{"review": "a"}\n{"review": "fixed"}\n')
    assert run(query, rows, out, "--resume", "--retry-errors") == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(d["index"] for d in docs) == [0, 1]  # the error row is replaced, not duplicated
    assert all("result" in d for d in docs)


def test_a_second_run_on_the_same_output_is_refused(files, capsys):
    query, rows, out = files
    out.write_text("")
    with open(out, "a") as held:  # another run holding the file
        fcntl.flock(held, fcntl.LOCK_EX)
        assert run(query, rows, out, "--resume") == 5
    assert "another run is writing" in capsys.readouterr().err
    assert out.read_text() == ""


def test_rows_on_stdout_are_json_lines_and_progress_stays_on_stderr(files, capsys):
    query, rows, _ = files
    assert run(query, rows) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["index"] for line in captured.out.splitlines()] == [0, 1, 2, 3, 4]
    assert "5 rows: 5 ok, 0 failed" in captured.err


def test_row_results_carry_log_probabilities(files):
    query, rows, out = files
    assert run(query, rows, out) == 0
    doc = json.loads(out.read_text().splitlines()[0])
    assert set(doc["result"]["logprobs"]) == {"S"} and doc["result"]["logprobs"]["S"] <= 0


def _read_only_path(tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: use a file system that takes no new files
        return "/sys/lmql-out.jsonl"
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder / "out.jsonl")


@pytest.mark.parametrize("where, fragment", [
    (lambda tmp: str(tmp), "is a folder"),
    (lambda tmp: str(tmp / "missing" / "out.jsonl"), "there is no folder"),
    (_read_only_path, "cannot write --output"),
])
def test_an_output_that_cannot_be_written_is_an_argument_error(files, tmp_path, capsys, where, fragment):
    query, rows, _ = files
    assert cli.main(["run", query, "--inputs", str(rows), "--output", where(tmp_path)]) == 5
    err = capsys.readouterr().err
    assert fragment in err and "internal error" not in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_reported_plainly(files, capsys):
    query, rows, _ = files
    assert cli.main(["run", query, "--inputs", str(rows), "--output", "/dev/full"]) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume continues" in err and "internal error" not in err


def test_inputs_that_are_not_utf8_name_the_line(files, capsys):
    query, rows, out = files
    rows.write_bytes(b'{"review": "ok"}\n{"review": "caf\xe9"}\n')
    assert run(query, rows, out) == 5
    err = capsys.readouterr().err
    assert f"{rows}:2:" in err and "not valid UTF-8" in err


def test_timeout_in_a_batch_keeps_the_finished_rows(files, capsys, monkeypatch):
    query, rows, out = files
    import time
    real_run_batch = api.run_batch

    def slow_second_batch(*args, **kwargs):
        for k, result in real_run_batch(*args, **kwargs):
            if k == 2:
                time.sleep(5)  # the alarm interrupts this
            yield k, result
    monkeypatch.setattr(api, "run_batch", slow_second_batch)
    assert run(query, rows, out, "--timeout", "1") == 7
    assert indices(out) == [0, 1]
    monkeypatch.setattr(api, "run_batch", real_run_batch)
    assert run(query, rows, out, "--resume") == 0
    assert sorted(indices(out)) == [0, 1, 2, 3, 4]


def test_progress_on_a_terminal_shows_rows_rate_and_time_left(files, capsys, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    query, rows, out = files
    out.write_text("")
    assert run(query, rows, out, "--batch-size", "1") == 0
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run(query, rows, out, "--resume") == 0
    shown = terminal.getvalue()
    assert "2 rows already done, 3 to go" in shown
    assert "5/5" in shown and ("row/s" in shown or "s/row" in shown)  # rows done, rate
    assert "<00:00" in shown  # time left
    assert capsys.readouterr().out == ""
