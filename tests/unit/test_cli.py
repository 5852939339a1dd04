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
    assert set(doc) == {"prompt", "variables", "distribution", "value", "ends", "notes"}
    assert doc["value"] in ("ab", "cd") and doc["prompt"].startswith("Capital of France:")
    assert doc["distribution"] is None


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
    assert capsys.readouterr().out.strip() in ("ab", "cd")


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


def test_undecodable_file_is_a_syntax_error(tmp_path, capsys):
    path = tmp_path / "bad.lmq"
    path.write_bytes(b'"ok"\n"caf\xe9 [X]"\n')
    assert cli.main(["check", str(path)]) == 2
    assert ":2:5: the file is not valid UTF-8" in capsys.readouterr().err
