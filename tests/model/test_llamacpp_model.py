"""The llama.cpp engine on the default model's GGUF: batches that llama.cpp builds could crash on, growth past a context's size, and the same prompts as the transformers engine."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="the llama extra (llama-cpp-python) is not installed")

import lmql_lite  # noqa: E402
from lmql_lite.errors import ModelError  # noqa: E402
from lmql_lite.models import llamacpp, load_model  # noqa: E402

pytestmark = pytest.mark.model

# Run in a child: a llama.cpp build with instructions this CPU lacks, or one that crashes on
# batches of two or more tokens (a native build did on an AVX-512 machine), dies with a signal.
MULTI_TOKEN_BATCH = """
import numpy as np
from lmql_lite.models import load_model
m = load_model(None, engine="llama.cpp")
texts = ["The capital of France is Paris. The capital of Germany is", "Hi", "One, two, three, four, five,"]
prompts = [m.encode(t) for t in texts]
batch = m.batch(4)
logits = batch.step(prompts[:2] + [[], prompts[2]])            # multi-token prompts, four rows, one decode
following = batch.step([[p[-1]] for p in prompts[:2]] + [[], [prompts[2][-1]]])
for row, prompt in zip((0, 1, 3), prompts):
    alone = m.batch(1)
    single = alone.step([prompt[:1]])[0]
    for token in prompt[1:]:                                     # the same tokens one decode at a time
        single = alone.step([[token]])[0]
    np.testing.assert_allclose(logits[row], single, atol=1.5, rtol=1e-3)
    np.testing.assert_allclose(following[row], alone.step([[prompt[-1]]])[0], atol=1.5, rtol=1e-3)
assert (logits[2] == 0).all() and np.isfinite(logits).all()
assert (batch.forward_passes, batch.tokens_fed) == (2, sum(map(len, prompts)) + 3)
print("ok")
"""


def test_multi_token_prompts_in_a_batch_of_rows_decode_without_crashing():
    out = subprocess.run([sys.executable, "-c", MULTI_TOKEN_BATCH], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (f"the llama.cpp child exited with {out.returncode} (a negative code is a signal: "
                                 f"-4 an illegal instruction, -11 a crash)\n{out.stderr[-3000:]}")
    assert out.stdout.split() == ["ok"]


@pytest.fixture(scope="module")
def model():
    return load_model(None, engine="llama.cpp")


def fresh(model, tokens):
    return model.batch(1).step([tokens])[0]


def test_rows_that_outgrow_the_first_context_move_to_a_larger_one(model):
    rng = random.Random(0)
    ids = [i for i, t in enumerate(model.vocabulary.tokens) if t]
    rows = [[rng.choice(ids) for _ in range(900)] for _ in range(3)]  # 2,700 tokens > FIRST_CELLS
    batch = model.batch(3)
    logits = batch.step(rows)
    assert batch._context.cells > llamacpp.FIRST_CELLS
    for row in range(3):
        np.testing.assert_allclose(logits[row], fresh(model, rows[row]), atol=1.5, rtol=1e-3)
    batch.select([0, 1, 2] * 4)  # more rows than a first context holds sequences
    assert batch._context.sequences >= 12
    more = batch.step([[ids[k]] for k in range(12)])
    for row in (0, 7, 11):
        np.testing.assert_allclose(more[row], fresh(model, batch.tokens(row)), atol=1.5, rtol=1e-3)


def test_a_row_longer_than_the_model_context_is_a_model_error_naming_the_limit(model, monkeypatch):
    monkeypatch.setattr(model, "context_limit", 16)
    batch = model.batch(1)
    batch.step([model.encode("a b c d e f g h")])
    with pytest.raises(ModelError, match="longer than the model's context of 16 tokens"):
        batch.step([model.encode(" i j k l m n o p q r s")])


def test_threads_are_an_option_and_an_environment_variable(monkeypatch):
    assert load_model(None, engine="llama.cpp", threads=1).threads == 1
    monkeypatch.setenv("LMQL_LITE_THREADS", "many")
    with pytest.raises(ModelError, match="LMQL_LITE_THREADS"):
        load_model(None, engine="llama.cpp")


def test_the_default_model_reads_as_on_the_transformers_engine(model):
    reference = load_model(None, engine="transformers")
    assert model.name == reference.name and model.bos_ids == reference.bos_ids
    assert model.vocabulary == reference.vocabulary
    for role in ("system", "user", "assistant"):
        assert model.role_markers(role) == reference.role_markers(role)
        assert model.chat_preamble(role) == reference.chat_preamble(role)
    for text in ["The capital of France is Paris.\n", "  two  spaces, Café, 日本語 🙂", "<|im_start|>user\nHi<|im_end|>",
                 "x = [1, 2, 3]\n\tprint(x)"]:
        assert model.encode(text) == reference.encode(text)
        assert model.encode(text, special=True) == reference.encode(text, special=True)
        assert model.decode(model.encode(text, special=True)) == text


@pytest.mark.parametrize("spelling", ["engine", "prefix"])
def test_a_gguf_file_runs_on_llamacpp_by_engine_or_by_lmqls_spelling(spelling):
    from lmql_lite.models.default import default_gguf

    path = str(default_gguf())
    m = lmql_lite.model(path, engine="llama.cpp") if spelling == "engine" else lmql_lite.model("llama.cpp:" + path)
    result = lmql_lite.run('argmax "Is Paris in France? Answer: [A]" where A in ["yes", "no"]', model=m)
    assert isinstance(m.load(), llamacpp.LlamaCppModel) and result.variables["A"] in ("yes", "no")


def test_the_run_cache_knows_the_model_by_its_gguf_bytes(model, tmp_path):
    import shutil
    from types import SimpleNamespace

    copy = tmp_path / "copy.gguf"
    shutil.copyfile(model.path, copy)
    assert llamacpp.LlamaCppModel.fingerprint(SimpleNamespace(path=copy)) == model.fingerprint()  # bytes, not the name
    with open(copy, "r+b") as f:  # one byte of the weights changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert llamacpp.LlamaCppModel.fingerprint(SimpleNamespace(path=copy)) != model.fingerprint()
