"""A model named by a URL with no server behind it: clear ModelErrors, fast (tests/model/test_served.py runs a real server)."""
import socket
import time

import pytest

import lmql_lite as lmql
from lmql_lite import cli
from lmql_lite.errors import ModelError
from lmql_lite.models import load_model

pytest.importorskip("httpx2")


def nothing_listening() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_a_server_that_is_down_is_a_model_error_within_seconds():
    start = time.monotonic()
    with pytest.raises(ModelError, match="cannot reach the server at http://127.0.0.1:[0-9]+/v1"):
        load_model(nothing_listening())
    assert time.monotonic() - start < 10


def test_a_url_without_v1_gets_it():
    url = nothing_listening().removesuffix("/v1")
    with pytest.raises(ModelError, match=f"cannot reach the server at {url}/v1"):
        load_model(url + "/")


@pytest.mark.parametrize("options, message", [
    ({"tokeniser": "x"}, "unknown option 'tokeniser'; did you mean 'tokenizer'"),
    ({"server": "tgi"}, "unknown server 'tgi'; known: llama.cpp, vllm, sglang"),
])
def test_wrong_options_are_named(options, message):
    with pytest.raises(ModelError, match=message):
        load_model(nothing_listening(), **options)


def test_a_from_clause_with_a_dead_url_fails_clearly_in_the_cli(tmp_path, capsys):
    query = tmp_path / "q.lmq"
    query.write_text(f'argmax\n    "Hi [X]"\nfrom\n    "{nothing_listening()}"\n')
    assert cli.main(["run", str(query)]) == ModelError.exit_code
    err = capsys.readouterr().err
    assert "cannot reach the server" in err and "Traceback" not in err


def test_hosted_api_names_still_say_what_to_do():
    with pytest.raises(ModelError, match="name it by its URL"):
        lmql.run('argmax\n    "[X]"\nfrom\n    "openai/gpt-4o"\n')
