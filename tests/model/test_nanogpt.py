"""nanoGPT checkpoints: exact conversion to GPT-2 (against nanoGPT's architecture written again), its char vocabulary, safe reading, constrained queries."""
from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import torch

import lmql_lite
from lmql_lite.errors import ModelError
from lmql_lite.models import load_model
from lmql_lite.models import nanogpt

from nanogpt_ref import CHARS, make_checkpoint


def reference_last_logits(gpt, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return gpt(torch.tensor([ids]))[0, -1].numpy()


def ids_of(text: str) -> list[int]:
    return [CHARS.index(c) for c in text]


@pytest.mark.parametrize("bias,compiled", [(True, False), (False, False), (True, True)],
                         ids=["bias", "no-bias", "compiled"])
def test_logits_match_nanogpts_own_forward_pass(tmp_path, bias, compiled):
    ckpt, gpt = make_checkpoint(tmp_path, bias=bias, compiled=compiled)
    model = load_model(str(ckpt))
    text = ids_of("hello, world: 42 times.\nyes?")
    batch = model.batch(2)
    # Row 0 all at once, row 1 a few tokens at a time (padding, masks and the cache in play).
    logits = batch.step([text, text[:5]])
    np.testing.assert_allclose(logits[0], reference_last_logits(gpt, text), atol=2e-5, rtol=1e-5)
    for end in range(6, len(text) + 1, 7):
        logits = batch.step([[], text[len(batch.tokens(1)):end]])
        np.testing.assert_allclose(logits[1], reference_last_logits(gpt, text[:end]), atol=2e-5, rtol=1e-5)
    assert logits.dtype == np.float32 and logits.shape == (2, len(CHARS))


def test_a_folder_holding_ckpt_pt_and_its_vocabulary_of_characters(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path, meta="next")
    model = load_model(str(ckpt.parent))  # the folder, as nanoGPT's --out_dir names it
    assert model.vocabulary.tokens == tuple(c.encode() for c in CHARS)
    assert model.vocabulary.eos_ids == frozenset() and model.bos_ids == []
    assert model.encode("hi there") == ids_of("hi there") and model.decode(ids_of("ok.\n")) == "ok.\n"
    with pytest.raises(ModelError, match="character vocabulary without 'Z'"):
        model.encode("Zebra")


def test_a_wider_model_than_its_vocabulary_pads_with_tokens_never_allowed(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path, vocab_size=64)  # nanoGPT rounds vocab_size up for speed
    vocabulary = load_model(str(ckpt)).vocabulary
    assert len(vocabulary) == 64 and vocabulary.tokens[len(CHARS):] == (b"",) * (64 - len(CHARS))
    assert set(range(len(CHARS), 64)) <= vocabulary.special_ids


def test_constrained_queries_on_a_nanogpt_model(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path)
    m = lmql_lite.model(str(ckpt))
    r = lmql_lite.run('"Code: [CODE]" where REGEX(CODE, r"[a-f][0-9]{3}")\nreturn CODE', model=m)
    assert re.fullmatch(r"[a-f][0-9]{3}", r.variables["CODE"])
    r = lmql_lite.run('"Q: yes or no?\\nA: [A]" where A in ["yes", "no", "maybe"]', model=m)
    assert r.variables["A"] in ("yes", "no", "maybe")
    # No end-of-sequence token: an unbounded hole ends at its token budget.
    r = lmql_lite.run('"Story: [S]" where len(TOKENS(S)) < 12 and STOPS_AT(S, ".")', model=m)
    assert len(r.variables["S"]) <= 11 and "." not in r.variables["S"][:-1]


def test_the_context_ends_at_block_size_with_a_clear_error(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path, block_size=16)
    with pytest.raises(ModelError, match="at most 16 tokens"):
        lmql_lite.run('"Story: [S]" where len(TOKENS(S)) < 40', model=lmql_lite.model(str(ckpt)))


def test_gpt2_bpe_when_there_is_no_meta_pkl(tmp_path, monkeypatch, tiny_model_dir):
    from transformers import AutoTokenizer
    bpe = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # a byte-level BPE, standing in for GPT-2's
    monkeypatch.setattr(nanogpt, "GPT2_TOKENIZER", str(tiny_model_dir))
    ckpt, gpt = make_checkpoint(tmp_path, meta=None, vocab_size=448)
    model = load_model(str(ckpt))
    ids = model.encode("The capital of France")
    assert ids == bpe.encode("The capital of France", add_special_tokens=False)
    np.testing.assert_allclose(model.batch(1).step([ids])[0], reference_last_logits(gpt, ids), atol=2e-5, rtol=1e-5)
    assert bpe.eos_token_id in model.vocabulary.eos_ids
    r = lmql_lite.run('"The capital of France is[X]" where X in [" Paris", " Berlin"]', model=lmql_lite.model(str(ckpt)))
    assert r.variables["X"] in (" Paris", " Berlin")


def test_no_meta_pkl_and_no_gpt2_tokenizer_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(nanogpt, "GPT2_TOKENIZER", "lmql-lite-tests/no-such-tokenizer")
    ckpt, _ = make_checkpoint(tmp_path, meta=None)
    with pytest.raises(ModelError, match="no nanoGPT meta.pkl") as e:
        load_model(str(ckpt))
    assert "AutoTokenizer.from_pretrained('gpt2')" in str(e.value)


class NotWeights:
    pass


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path):
    torch.save({"model": {}, "model_args": {}, "extra": NotWeights()}, tmp_path / "ckpt.pt")
    with pytest.raises(ModelError, match=r"weights_only=True"):
        load_model(str(tmp_path / "ckpt.pt"))


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_meta_pkl_that_would_run_code_is_refused_unrun(tmp_path):
    ckpt, _ = make_checkpoint(tmp_path, meta=None)
    payload = Payload()
    payload.marker = str(tmp_path / "ran")
    (ckpt.parent / "meta.pkl").write_bytes(pickle.dumps({"itos": {0: "a"}, "x": payload}))
    with pytest.raises(ModelError, match="not a nanoGPT meta.pkl.*posix.system|not a nanoGPT meta.pkl.*os.system"):
        load_model(str(ckpt))
    assert not (tmp_path / "ran").exists()


def test_names_that_cannot_be_a_checkpoint_fail_before_torch_loads_them(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(str(tmp_path / "missing.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match="not a torch checkpoint"):
        load_model(str(tmp_path / "garbage.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a nanoGPT checkpoint"):
        load_model(str(tmp_path / "other.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no nanoGPT checkpoint"):
        load_model(str(tmp_path / "empty"))
