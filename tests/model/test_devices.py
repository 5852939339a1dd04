"""Devices and dtypes on the transformers engine: the device asked for (or a clear error), weights cast at load, float32 logits on the host."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lmql_lite
from lmql_lite import cli
from lmql_lite.errors import ModelError
from lmql_lite.models import load_model


def auto_device() -> str:
    if torch.cuda.is_available():
        return "cuda:0"
    mps = getattr(torch.backends, "mps", None)
    return "mps:0" if mps and mps.is_available() else "cpu"


def missing_device() -> str:
    """A device this machine does not have: CUDA on a machine without one, else one GPU too many."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    monkeypatch.delenv("LMQL_LITE_DEVICE", raising=False)
    monkeypatch.delenv("LMQL_LITE_DTYPE", raising=False)


def test_cpu_asked_and_auto(tiny_model_dir):
    cpu = load_model(str(tiny_model_dir), device="cpu")
    assert (cpu.device, cpu.dtype) == ("cpu", "float32")
    auto = load_model(str(tiny_model_dir))
    assert auto.device == auto_device()
    assert auto.dtype == ("float32" if auto.device == "cpu" else auto.dtype)


def test_a_device_that_is_not_here_is_a_clear_error(tiny_model_dir, monkeypatch):
    asked = missing_device()
    with pytest.raises(ModelError, match=f"device '{asked}' is not available.*available here: cpu"):
        load_model(str(tiny_model_dir), device=asked)
    with pytest.raises(ModelError, match="is not available"):
        lmql_lite.run('"Hi [X]" where len(TOKENS(X)) < 3', model=str(tiny_model_dir), device=asked)
    if not torch.cuda.is_available():  # LMQL's spelling, and the environment
        with pytest.raises(ModelError, match="CPU build, without CUDA"):
            load_model(str(tiny_model_dir), cuda=True)
        monkeypatch.setenv("LMQL_LITE_DEVICE", "cuda")
        with pytest.raises(ModelError, match="'cuda' is not available"):
            load_model(str(tiny_model_dir))


def test_bfloat16_weights_give_float32_logits_close_to_float32_ones(tiny_model_dir):
    full = load_model(str(tiny_model_dir), device="cpu")
    half = load_model(str(tiny_model_dir), device="cpu", torch_dtype=torch.bfloat16)
    assert half.dtype == "bfloat16" and half.module.lm_head.weight.dtype == torch.bfloat16
    ids = half.bos_ids + half.encode("The capital of France is Paris.")
    batch = half.batch(2)
    logits = batch.step([ids, ids[:4]])
    assert logits.dtype == np.float32 and logits.shape == (2, len(half.vocabulary))
    np.testing.assert_allclose(logits[0], full.batch(1).step([ids])[0], atol=0.1)
    logits = batch.step([[], ids[4:]])  # the row fed in two steps (padding, masks) matches one fed at once
    np.testing.assert_allclose(logits[1], logits[0], atol=0.05)
    scores = batch.score(0, [ids[:3]])
    assert scores[0].dtype == np.float64 and np.isfinite(scores[0]).all()


def test_placement_keywords_of_run_run_batch_and_the_cli(tiny_model_dir, tmp_path, capsys):
    query = '"Say [X]" where X in ["yes", "no"]\nreturn X'
    assert lmql_lite.run(query, model=str(tiny_model_dir), device="cpu", dtype="bfloat16").variables["X"] in ("yes", "no")
    handle = lmql_lite.model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert handle.load().dtype == "bfloat16"
    rows = list(lmql_lite.run_batch(query, [{}, {}], model=str(tiny_model_dir), dtype="bfloat16", device="cpu"))
    assert [r.variables["X"] in ("yes", "no") for _, r in rows] == [True, True]
    @lmql_lite.query(model=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    def say():
        '''lmql
        "Say [X]" where X in ["yes", "no"]
        return X
        '''
    assert say() in ("yes", "no")
    path = tmp_path / "q.lmq"
    path.write_text(query + "\n")
    assert cli.main(["run", str(path), "--model", str(tiny_model_dir), "--device", "cpu", "--dtype", "bfloat16",
                     "--quiet"]) == 0
    assert capsys.readouterr().out.strip() in ('"yes"', '"no"')
    assert cli.main(["run", str(path), "--model", str(tiny_model_dir), "--device", missing_device()]) == 4
    err = capsys.readouterr().err
    assert "is not available" in err and "Traceback" not in err


@pytest.mark.model
def test_a_constrained_query_on_the_default_model_in_bfloat16():
    m = lmql_lite.model(device="cpu", dtype="bfloat16")
    r = lmql_lite.run('"Q: What year did the Berlin Wall fall?\\nA: [YEAR]" where INT(YEAR) and len(TOKENS(YEAR)) <= 3\n'
                      'return YEAR', model=m)
    year = r.variables["YEAR"]  # INT holes give ints, of at most 3 digit tokens here
    assert m.load().dtype == "bfloat16" and isinstance(year, int) and 0 <= year < 1000
