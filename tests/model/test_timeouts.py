"""Timeouts on real models: the output-layer probe lets the timeout through, and a long hole stops within a pass of the deadline."""
import time

import pytest

from lmql_lite import api, cli
from lmql_lite.deadline import Deadline
from lmql_lite.errors import QueryTimeoutError

pytestmark = pytest.mark.model


def test_the_output_layer_probe_lets_the_timeout_through(tiny_model_dir, monkeypatch):
    from lmql_lite.models.transformers import load_model
    m = load_model(str(tiny_model_dir))
    body = m.module.base_model
    forward = body.forward

    def slow(*args, **kwargs):
        time.sleep(5)  # the alarm interrupts this, inside the probe's try
        return forward(*args, **kwargs)
    monkeypatch.setattr(body, "forward", slow)
    with pytest.raises(QueryTimeoutError):
        with Deadline(0.3):
            m._head
    assert "_head" not in m.__dict__  # not remembered as "this model has no output head"
    monkeypatch.setattr(body, "forward", forward)
    assert m._head is not None  # the sparse output layer stays on


def test_a_long_hole_stops_within_a_forward_pass_of_the_timeout(default_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(api, "model", lambda name=None: default_model)
    api._index(default_model)  # built once per process: not part of what this test times
    path = tmp_path / "long.lmq"
    prompt = "Write a very long story about a dragon:"
    path.write_text(f'argmax(max_len=4000)\n"{prompt}[STORY]" where len(TOKENS(STORY)) < 3000\n')
    start = time.monotonic()
    assert cli.main(["run", str(path), "--timeout", "6"]) == 7
    late = time.monotonic() - start - 6
    captured = capsys.readouterr()
    assert late < 3, f"stopped {late:.2f} s after the deadline"  # a forward pass, even on a busy machine
    assert captured.out.startswith(prompt) and captured.out.endswith("\n")
    assert "--timeout 6 s" in captured.err


def test_a_timeout_while_loading_never_rebuilds_the_cache(default_model, monkeypatch):
    from lmql_lite import cache
    from lmql_lite.models import transformers as engine
    rebuilt = []
    monkeypatch.setattr(cache, "build", lambda *args: rebuilt.append(args))
    load = engine.AutoModelForCausalLM.from_pretrained

    def slow_load(*args, **kwargs):
        time.sleep(5)  # the alarm interrupts loading the weights
        return load(*args, **kwargs)
    monkeypatch.setattr(engine.AutoModelForCausalLM, "from_pretrained", slow_load)
    with pytest.raises(QueryTimeoutError):
        with Deadline(0.5):
            engine.load_model(None)
    assert rebuilt == []  # a timeout is not a damaged cache
