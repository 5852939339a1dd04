"""The model backend contract (`lmql_lite.models.base`), one suite over every backend: a new engine is done when it passes.

Every check compares a backend with itself through a different route (a fresh batch fed the
same tokens at once, step-by-step logits), so it needs no reference implementation: the fake
model, the transformers engine on a tiny random Llama, llama.cpp on the default model's GGUF
(when llama-cpp-python is installed: the `llama` extra), and any engine added later.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from lmql_lite.models import base

TEXTS = ["The capital of France is Paris.\n", "Is it on the coast? yes no", "Numbers: 2024-01-31", "Café"]


@pytest.fixture(scope="module", params=["fake", "random", "transformers", "nanogpt", "llama.cpp"])
def model(request):
    if request.param == "fake":
        from lmql_lite.models.fake import FakeModel
        return FakeModel()
    from lmql_lite.models import load_model
    if request.param == "random":
        return load_model("random", seed=123)
    if request.param == "llama.cpp":
        pytest.importorskip("llama_cpp", reason="the llama extra (llama-cpp-python) is not installed")
        return load_model(None, engine="llama.cpp")
    if request.param == "nanogpt":  # a character vocabulary holding every character these checks write
        from lmql_lite.models.hf_tokenizer import PLAIN_ROLE_MARKERS
        from nanogpt_ref import make_checkpoint
        chars = sorted(set("".join(TEXTS) + "".join(a + b for a, b in PLAIN_ROLE_MARKERS.values()) + "a"))
        ckpt, _ = make_checkpoint(request.getfixturevalue("tmp_path_factory").mktemp("nanogpt"), chars=chars)
        return load_model(str(ckpt))
    return load_model("transformers:" + str(request.getfixturevalue("tiny_model_dir")))


def ordinary(model, n: int, rng: random.Random) -> list[int]:
    """`n` random ids of ordinary (non-special) tokens."""
    ids = [i for i, t in enumerate(model.vocabulary.tokens) if t and i not in model.vocabulary.special_ids]
    return [rng.choice(ids) for _ in range(n)]


def fresh_logits(model, tokens: list[int]) -> np.ndarray:
    """The logits after `tokens`, from a new one-row batch fed them all at once."""
    return model.batch(1).step([tokens])[0]


# How far a backend's logits for the same tokens may differ between routes (one decode or several,
# one row or many). llama.cpp's quantised CPU kernels take other code paths for other batch shapes:
# on the default model the same tokens fed at once or one by one differ by up to 1.0 (measured over
# prompts of 10-400 tokens), while a wrong row, position or stale cache entry is off by 10 or more.
TOLERANCE = {"LlamaCppModel": 1.5}


def tolerance(model) -> float:
    return TOLERANCE.get(type(model).__name__, 1e-4)


def close(model, a, b) -> None:
    finite = np.isfinite(b)
    assert np.array_equal(np.isfinite(a), finite)
    np.testing.assert_allclose(a[finite], b[finite], atol=tolerance(model), rtol=1e-4)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - x.max() - np.log(np.exp(x - x.max()).sum())


def test_logits_are_numpy_float32_rows_by_vocabulary_and_the_callers(model):
    batch = model.batch(3)
    logits = batch.step([model.bos_ids + model.encode(t) for t in TEXTS[:3]])
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
    assert logits.shape == (3, len(model.vocabulary))
    assert np.isfinite(logits).all()
    kept = logits.copy()
    logits[:] = 0.0  # the caller owns what it got: the batch does not see this
    np.testing.assert_array_equal(batch.step([[], [], []]), kept)  # fed nothing: the same logits again


def test_a_row_with_no_tokens_gets_zero_logits(model):
    logits = model.batch(2).step([ordinary(model, 2, random.Random(0)), []])
    assert (logits[1] == 0).all() and not (logits[0] == 0).all()


def test_each_token_goes_through_the_model_once(model):
    tokens = ordinary(model, 12, random.Random(1))
    batch = model.batch(1)
    batch.step([tokens[:8]])
    for token in tokens[8:]:
        logits = batch.step([[token]])
    assert (batch.forward_passes, batch.tokens_fed) == (5, 12)
    assert batch.tokens(0) == tokens
    close(model, logits[0], fresh_logits(model, tokens))


def test_truncate_select_and_tokens_match_a_fresh_batch(model):
    rng = random.Random(2)
    batch = model.batch(3)

    def check(logits):
        for row in range(logits.shape[0]):
            close(model, logits[row], fresh_logits(model, batch.tokens(row)))

    check(batch.step([ordinary(model, n, rng) for n in (5, 2, 3)]))
    check(batch.step([ordinary(model, n, rng) for n in (1, 0, 4)]))
    batch.truncate(0, 3)
    batch.truncate(2, 6)
    assert [len(batch.tokens(r)) for r in range(3)] == [3, 2, 6]
    check(batch.step([[], ordinary(model, 1, rng), ordinary(model, 2, rng)]))
    rows = [batch.tokens(r) for r in range(3)]
    batch.select([2, 0, 0, 1])
    assert [batch.tokens(r) for r in range(4)] == [rows[2], rows[0], rows[0], rows[1]]
    check(batch.step([ordinary(model, n, rng) for n in (1, 2, 0, 3)]))
    batch.truncate(3, 1)
    check(batch.step([[], [], [], []]))
    batch.select([1])
    check(batch.step([[]]))


def test_only_gives_exactly_the_logits_asked_for(model):
    rng = random.Random(3)
    width = len(model.vocabulary)
    few = np.array(sorted(rng.sample(range(width), 9)))
    only = [few, None, few[:2]]
    batch = model.batch(3)
    logits = batch.step([ordinary(model, n, rng) for n in (4, 2, 3)], only=only)
    for row in range(3):
        expected = fresh_logits(model, batch.tokens(row))
        ids = np.arange(width) if only[row] is None else only[row]
        np.testing.assert_allclose(logits[row, ids], expected[ids], atol=tolerance(model), rtol=1e-4)
        rest = np.setdiff1d(np.arange(width), ids)
        # Outside `only` a backend may skip the work (-inf) or compute the logits anyway.
        assert (np.isneginf(logits[row, rest]) | np.isclose(logits[row, rest], expected[rest], atol=tolerance(model))).all()
    # Asked later for all of them, a row that got only some logits gets them all, exactly.
    full = batch.step([[], [], []])
    for row in range(3):
        close(model, full[row], fresh_logits(model, batch.tokens(row)))


@pytest.mark.parametrize("truncated", [False, True])
def test_scoring_equals_step_by_step_logits(model, truncated):
    rng = random.Random(4)
    prefix = model.bos_ids + model.encode(TEXTS[0])
    continuations = [ordinary(model, n, rng) for n in (1, 3, 2)]
    batch = model.batch(2)
    batch.step([prefix, ordinary(model, 3, rng)])
    if truncated:  # the row's last logits are gone: the backend must recompute them
        batch.step([ordinary(model, 2, rng), []])
        batch.truncate(0, len(prefix))
    before = [batch.tokens(0), batch.tokens(1)]
    scores = batch.score(0, continuations)
    assert len(scores) == len(continuations)
    for tokens, score in zip(continuations, scores):
        assert score.shape == (len(tokens),)
        step = model.batch(1)
        expected = []
        logits = step.step([prefix])[0]
        for token in tokens:
            expected.append(log_softmax(logits)[token])
            logits = step.step([[token]])[0]
        np.testing.assert_allclose(score, expected, atol=tolerance(model))
    assert [batch.tokens(0), batch.tokens(1)] == before  # the rows are as they were
    close(model, batch.step([[], []])[0], fresh_logits(model, prefix))


def test_scoring_after_fresh_logits_feeds_only_what_needs_logits(model):
    """A continuation's first token is scored on the row's own logits and its last token needs none
    after it: one-token candidates (a `distribution` over labels) cost no pass at all."""
    rng = random.Random(5)
    prefix = model.bos_ids + model.encode(TEXTS[1])
    batch = model.batch(1)
    batch.step([prefix])
    passes, fed = batch.forward_passes, batch.tokens_fed
    ones = [ordinary(model, 1, rng) for _ in range(4)]
    scores = batch.score(0, ones)
    assert (batch.forward_passes, batch.tokens_fed) == (passes, fed)
    logits = fresh_logits(model, prefix)
    for tokens, score in zip(ones, scores):
        np.testing.assert_allclose(score, [log_softmax(logits)[tokens[0]]], atol=tolerance(model))
    longer = [ordinary(model, n, rng) for n in (3, 1, 2)]
    batch.score(0, longer)
    assert batch.forward_passes == passes + 1
    assert batch.tokens_fed == fed + sum(len(c) - 1 for c in longer)
    assert batch.tokens(0) == prefix


def test_step_all_gives_the_step_by_step_logits_of_every_token_fed(model):
    rng = random.Random(5)
    prefixes = [model.bos_ids + model.encode(TEXTS[0]), ordinary(model, 3, rng), model.bos_ids + model.encode(TEXTS[2])]
    feeds = [ordinary(model, 4, rng), [], ordinary(model, 1, rng)]
    batch = model.batch(3)
    batch.step(prefixes)
    passes, fed = batch.forward_passes, batch.tokens_fed
    out = batch.step_all(feeds)
    assert (batch.forward_passes, batch.tokens_fed) == (passes + 1, fed + 5)  # one pass, each token once
    assert [o.shape for o in out] == [(4, len(model.vocabulary)), (1, len(model.vocabulary)),
                                     (1, len(model.vocabulary))]
    assert all(o.dtype == np.float32 for o in out)
    for row, (prefix, feed) in enumerate(zip(prefixes, feeds)):
        assert batch.tokens(row) == prefix + feed
        for i in range(max(len(feed), 1)):
            close(model, out[row][i], fresh_logits(model, prefix + feed[:i + 1]))
    out[0][:] = 0.0  # the caller's: the batch's next step is unaffected
    close(model, batch.step([[], [], []])[0], fresh_logits(model, prefixes[0] + feeds[0]))


def test_step_all_gives_the_last_logits_asked_for_of_each_row(model):
    # A prompt with a draft after it: only the draft's positions and the one before them are read.
    rng = random.Random(7)
    prefixes = [model.bos_ids + model.encode(TEXTS[1]), ordinary(model, 2, rng), ordinary(model, 3, rng)]
    feeds = [ordinary(model, 6, rng), ordinary(model, 2, rng), []]
    batch = model.batch(3)
    batch.step(prefixes)
    passes, fed = batch.forward_passes, batch.tokens_fed
    out = batch.step_all(feeds, last=[2, 5, 1])
    assert (batch.forward_passes, batch.tokens_fed) == (passes + 1, fed + 8)  # one pass, each token once
    assert [o.shape for o in out] == [(2, len(model.vocabulary)), (2, len(model.vocabulary)),
                                     (1, len(model.vocabulary))]
    for row, (prefix, feed, first) in enumerate(zip(prefixes, feeds, (4, 0, 0))):
        assert batch.tokens(row) == prefix + feed
        for i, line in enumerate(out[row]):
            close(model, line, fresh_logits(model, prefix + feed[:first + i + 1]))
    # the rows go on as after any pass
    more = ordinary(model, 1, rng)
    close(model, batch.step([more, [], []])[0], fresh_logits(model, prefixes[0] + feeds[0] + more))


def test_step_all_then_truncating_a_rejected_draft_leaves_no_trace_of_it(model):
    rng = random.Random(6)
    prefix, draft, other = model.bos_ids + model.encode(TEXTS[1]), ordinary(model, 5, rng), ordinary(model, 4, rng)
    batch = model.batch(2)
    batch.step([prefix, other])
    batch.step_all([draft, ordinary(model, 2, rng)])
    batch.truncate(0, len(prefix) + 2)  # two draft tokens accepted, three rejected
    assert batch.tokens(0) == prefix + draft[:2]
    fixed = ordinary(model, 1, rng)
    logits = batch.step([fixed, []])
    close(model, logits[0], fresh_logits(model, prefix + draft[:2] + fixed))
    # a row fed nothing after its draft was cut gets the logits after its new last token
    batch.step_all([ordinary(model, 3, rng), []])
    batch.truncate(0, len(prefix) + 3)
    out = batch.step_all([[], []])
    assert out[0].shape == (1, len(model.vocabulary))
    close(model, out[0][0], fresh_logits(model, prefix + draft[:2] + fixed))


def test_end_of_sequence_ids_are_special_and_never_spelt(model):
    vocab = model.vocabulary
    # nanoGPT's character vocabularies are the one kind with no end-of-sequence token (their holes
    # end by constraints and budgets); every other backend has one.
    from lmql_lite.models.nanogpt import CharModel
    assert (vocab.eos_ids or isinstance(model, CharModel)) and vocab.eos_ids <= vocab.special_ids
    assert all(0 <= i < len(vocab) and vocab.tokens[i] == b"" for i in vocab.eos_ids)
    assert all(0 <= i < len(vocab) for i in model.bos_ids)
    for text in TEXTS:
        assert not set(model.encode(text)) & vocab.eos_ids


def test_the_vocabulary_bytes_spell_what_encode_and_decode_say(model):
    vocab = model.vocabulary
    assert len(vocab) == model.batch(1).step([model.encode("a")]).shape[1]
    assert all(isinstance(t, bytes) for t in vocab.tokens)
    assert all(vocab.tokens[i] == b"" for i in vocab.special_ids)
    for text in TEXTS:
        ids = model.encode(text)
        assert b"".join(vocab.tokens[i] for i in ids) == text.encode()
        assert model.decode(ids) == text


def test_chat_markers_are_text_that_encodes_with_special_tokens(model):
    for role in ("system", "user", "assistant"):
        opening, closing = model.role_markers(role)
        assert isinstance(opening, str) and isinstance(closing, str) and opening
        for marker in (opening, closing):
            assert model.decode(model.encode(marker, special=True)) == marker
    assert isinstance(model.chat_preamble("user"), str)


def test_backends_implement_the_protocol_names(model):
    batch = model.batch(1)
    for name in ("step", "step_all", "score", "truncate", "select", "tokens", "forward_passes", "tokens_fed"):
        assert hasattr(batch, name) and hasattr(base.Batch, name)
    for name in ("encode", "decode", "role_markers", "chat_preamble", "batch"):
        assert callable(getattr(model, name)) and hasattr(base.LanguageModel, name)
