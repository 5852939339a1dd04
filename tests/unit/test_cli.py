"""The lmql-lite command, in process, on the fake model: output formats, exit codes, batches, timeouts."""
import json

import pytest

from lmql_lite import api, cli
from lmql_lite.models.fake import FakeModel


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    fake = FakeModel()
    monkeypatch.setattr(api, "model", lambda name=None: fake)
    return fake


def write(tmp_path, text, name="q.lmq"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


CHOICE = 'argmax\n    "Capital of {country}:[A]" where A in [" ab", " cd"]\n    return A.strip()\n'


def test_json_output_is_one_document(tmp_path, capsys):
    code = cli.main(["run", write(tmp_path, CHOICE), "--arg", "country=France", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"prompt", "variables", "distribution", "value", "logprobs", "logprob", "ends", "notes"}
    assert doc["value"] in ("ab", "cd") and doc["prompt"].startswith("Capital of France:")
    assert doc["distribution"] is None
    assert set(doc["logprobs"]) == {"A"} and doc["logprobs"]["A"] <= 0 and doc["logprob"] == doc["logprobs"]["A"]


def test_streaming_prints_the_prompt(tmp_path, capsys):
    assert cli.main(["run", write(tmp_path, CHOICE), "--arg", "country=Peru"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Capital of Peru:") and "\x1b[" not in out  # no colour when not a terminal


def test_json_arguments(tmp_path, capsys):
    src = '"{xs[1] + 1}[A]" where A in ["!"]\nreturn xs\n'
    assert cli.main(["run", write(tmp_path, src), "--arg", "xs:=[1, 2]", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] == [1, 2]


def test_several_results_are_a_list(tmp_path, capsys):
    src = 'sample(n=3, seed=1)\n"[A]" where A in ["ab", "cd"]\n'
    assert cli.main(["run", write(tmp_path, src), "--json"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert isinstance(docs, list) and len(docs) == 3


@pytest.mark.parametrize("source, code, fragment", [
    ('"ok"\n"[A" where A in ["x"]\n', 2, ":2:"),
    ('"[A]" where A in []\n', 3, "A in []"),
    ('"{country}[A]" where A in ["x"]\n', 5, "country"),
    ('x = 1 / 0\n"[A]"\n', 6, "ZeroDivisionError"),
    ('sampel(n=2)\n"[A]"\n', 5, "did you mean 'sample'"),
])
def test_errors_exit_with_their_code_and_no_traceback(tmp_path, capsys, source, code, fragment):
    assert cli.main(["run", write(tmp_path, source)]) == code
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_syntax_error_format(tmp_path, capsys):
    path = write(tmp_path, 'argmax\n    "Hello [X"\n')
    assert cli.main(["check", path]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:2:")
    assert err[2].strip() == "^"


def test_check_reports_unknown_constraint_and_hole(tmp_path, capsys):
    path = write(tmp_path, '"[A]" where STOP_AT(A, "x") and len(TOKENS(B)) < 3\n')
    assert cli.main(["check", path]) == 3
    err = capsys.readouterr().err
    assert "unknown constraint function STOP_AT" in err and "no hole [B]" in err


def test_timeout_stops_a_looping_query(tmp_path, capsys):
    path = write(tmp_path, 'while True:\n    pass\n')
    assert cli.main(["run", path, "--timeout", "0.5"]) == 7
    assert "--timeout" in capsys.readouterr().err


def test_inputs_output_and_resume(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"country": c}) + "\n" for c in ["France", "Peru", "Chad"]))
    out = tmp_path / "out.jsonl"
    path = write(tmp_path, CHOICE)
    assert cli.main(["run", path, "--inputs", str(rows), "--output", str(out), "--batch-size", "2"]) == 0
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["index"] for l in lines] == [0, 1, 2]
    assert all(l["result"]["value"] in ("ab", "cd") for l in lines)
    # A crash left a cut line and lost row 2: --resume redoes only what is missing.
    out.write_text(out.read_text().splitlines()[0] + "\n" + '{"index": 1, "inp')
    assert cli.main(["run", path, "--inputs", str(rows), "--output", str(out), "--resume"]) == 0
    done = []
    for line in out.read_text().splitlines():
        try:
            done.append(json.loads(line)["index"])
        except json.JSONDecodeError:
            pass
    assert sorted(done) == [0, 1, 2]


def test_quiet_prints_only_the_value(tmp_path, capsys):
    assert cli.main(["run", write(tmp_path, CHOICE), "--arg", "country=x", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) in ("ab", "cd")  # the value as JSON


def test_trace_table(tmp_path, capsys):
    assert cli.main(["run", write(tmp_path, CHOICE), "--arg", "country=x", "--trace"]) == 0
    err = capsys.readouterr().err
    assert "forward passes" in err and "allowed" in err


def test_ctrl_c_stops_with_one_line(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(api, "run_compiled", interrupted)
    assert cli.main(["run", write(tmp_path, CHOICE), "--arg", "country=x"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_sigterm_that_lands_in_a_finalizer_still_ends_a_batch(tmp_path, capsys, monkeypatch):
    # Python prints "Exception ignored in ..." for an exception a finalizer raises and goes on;
    # a SIGTERM handled there was lost, and the batch ran on to its last row.
    import gc
    import os
    import signal
    import sys

    class SignalledWhileFinalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # the handler runs here, in the finalizer
                pass

    calls = 0
    logits_for = FakeModel.logits_for

    def logits_and_finalize(self, tokens):
        nonlocal calls
        calls += 1
        if calls == 5:
            SignalledWhileFinalized()
            gc.collect()
        return logits_for(self, tokens)
    monkeypatch.setattr(FakeModel, "logits_for", logits_and_finalize)
    inputs, out = tmp_path / "rows.jsonl", tmp_path / "out.jsonl"
    inputs.write_text("".join(json.dumps({"country": f"c{i}"}) + "\n" for i in range(50)))
    argv = ["run", write(tmp_path, CHOICE), "--inputs", str(inputs), "--output", str(out), "--batch-size", "1"]
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: swallowed.append(info.exc_type))
    assert cli.main(argv) == 143
    assert swallowed == [cli._Terminated]  # it landed in the finalizer, which swallowed it
    assert capsys.readouterr().err.endswith("terminated\n")
    rows = [json.loads(line) for line in out.read_text().splitlines()]  # each line whole
    assert 0 < len(rows) < 50
    assert cli.main(["run", write(tmp_path, CHOICE), "--arg", "country=x"]) == 0  # nothing left pending


def test_undecodable_file_is_a_syntax_error(tmp_path, capsys):
    path = tmp_path / "bad.lmq"
    path.write_bytes(b'"ok"\n"caf\xe9 [X]"\n')
    assert cli.main(["check", str(path)]) == 2
    assert ":2:5: the file is not valid UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["--timeout", "nan"], "--timeout must be a positive number"),
    (["--timeout", "inf"], "--timeout must be a positive number"),
    (["--timeout", "-1"], "--timeout must be a positive number"),
    (["--seed", "2**70"], "invalid int value"),
    (["--seed", str(2 ** 70)], "--seed must be from 0 to 2**64-1"),
    (["--arg", "country=\udced\udca0"], "not valid UTF-8"),  # undecodable argv bytes arrive as lone surrogates
    (["--batch-size", "0", "--inputs", "x.jsonl"], "--batch-size must be at least 1"),
])
def test_bad_command_line_values_are_argument_errors(tmp_path, capsys, argv, fragment):
    assert cli.main(["run", write(tmp_path, CHOICE), *argv]) == 5
    err = capsys.readouterr().err
    assert fragment in err and "internal error" not in err and "Traceback" not in err


def test_version(capsys):
    import lmql_lite
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lmql-lite {lmql_lite.__version__}"


def test_json_trace_and_quiet_trace_keep_the_trace(tmp_path, capsys):
    path = write(tmp_path, CHOICE)
    assert cli.main(["run", path, "--arg", "country=x", "--json", "--trace"]) == 0
    trace = json.loads(capsys.readouterr().out)["trace"]
    assert trace["forward_passes"] >= 1 and trace["tokens"]
    assert {t["variable"] for t in trace["tokens"]} == {"A"} and all(t["logprob"] <= 0 for t in trace["tokens"])
    assert cli.main(["run", path, "--arg", "country=x", "--quiet", "--trace"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) in ("ab", "cd") and "forward passes" in captured.err


def test_quiet_prints_json_even_for_no_value_and_lists(tmp_path, capsys):
    assert cli.main(["run", write(tmp_path, '"[A]" where A in ["ab"]\n'), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out) is None
    src = 'sample(n=2, seed=3)\n"[A]" where A in ["ab", "cd"]\nreturn {"a": A}\n'
    assert cli.main(["run", write(tmp_path, src), "--quiet"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert len(values) == 2 and all(v["a"] in ("ab", "cd") for v in values)


def test_runtime_error_points_at_the_statement_column(tmp_path, capsys):
    path = write(tmp_path, 'argmax\n    x = 1\n    y = x / 0\n    "[A]"\n')
    assert cli.main(["run", path]) == 6
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:3:9: ZeroDivisionError")
    assert err[2].index("^") == err[1].index("x / 0")


ESC = "\x1b[2J"  # "clear the screen"


def test_control_characters_from_the_model_are_escaped_on_display_and_exact_in_json(tmp_path, capsys, monkeypatch):
    from lmql_lite.models.fake import DEFAULT_TOKENS
    fake = FakeModel(tokens=DEFAULT_TOKENS + (ESC, "\x9b", "\u202e"), bias={ESC: 30.0, "\x9b": 20.0, "\u202e": 10.0})
    monkeypatch.setattr(api, "model", lambda name=None: fake)
    path = write(tmp_path, '"Say:[A]" where len(TOKENS(A)) < 4\nreturn A\n')
    assert cli.main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert "\\x1b[2J" in out
    assert cli.main(["run", path, "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert ESC in json.loads(out)["value"]
    assert cli.main(["run", path, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and ESC in json.loads(out)


def test_library_log_noise_is_silenced_unless_debug(tmp_path, capsys, caplog, monkeypatch):
    import logging

    def noisy_model(name=None):
        logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
        return FakeModel()
    monkeypatch.setattr(api, "model", noisy_model)
    path = write(tmp_path, CHOICE)
    assert cli.main(["run", path, "--arg", "country=x"]) == 0
    assert "Retrying" not in capsys.readouterr().err and "Retrying" not in caplog.text
    assert cli.main(["run", path, "--arg", "country=x", "--debug"]) == 0
    assert "Retrying" in caplog.text


def test_stdout_on_a_full_disk_is_reported_plainly(tmp_path, capsys):
    import subprocess
    import sys
    if not __import__("os").path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    path = write(tmp_path, 'return "x" * 100000\n')  # no hole: no model needed
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "lmql_lite", "run", path, "--json"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1
    assert "No space left on device" in done.stderr and "internal error" not in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
