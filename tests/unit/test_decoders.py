"""Decoders against exact computations on the fake model: sampling frequencies, top-k/top-p, beam versus exhaustive search."""
import math

import numpy as np
import pytest

import lmql_lite
from lmql_lite import decoders
from lmql_lite.constraints import Mask
from lmql_lite.decoders import DecoderOptions
from lmql_lite.models.fake import FakeModel


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    out = np.zeros_like(x)
    out[finite] = np.exp(x[finite] - x[finite].max())
    return out / out.sum()


@pytest.mark.parametrize("options", [
    DecoderOptions(name="sample", temperature=1.0),
    DecoderOptions(name="sample", temperature=0.5),
    DecoderOptions(name="sample", temperature=2.0, top_k=4),
    DecoderOptions(name="sample", temperature=1.0, top_p=0.7),
])
def test_sampling_frequencies_match_the_masked_tempered_distribution(options):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(40).astype(np.float32) * 2
    allowed = np.zeros(40, bool)
    allowed[[1, 3, 5, 8, 13, 21, 34]] = True
    scores = decoders.masked(logits, Mask(allowed))
    # The exact distribution, computed independently of the decoder's code.
    z = np.where(allowed, logits / options.temperature, -np.inf)
    if options.top_k:
        z[np.argsort(-z)[options.top_k:]] = -np.inf
    if options.top_p:
        order = np.argsort(-z)
        p = softmax(z)[order]
        keep = np.cumsum(p) - p < options.top_p
        z[order[~keep]] = -np.inf
    expected = softmax(z)
    n = 6000
    generator = np.random.default_rng(1234)
    counts = np.zeros(40)
    for _ in range(n):
        tok, logprob = decoders.pick_sample(scores, options, generator)
        counts[tok] += 1
    assert counts[~allowed].sum() == 0
    assert counts[expected == 0].sum() == 0
    # Each frequency within 4.5 standard deviations of its binomial expectation.
    std = np.sqrt(n * expected * (1 - expected))
    assert np.all(np.abs(counts - n * expected) <= 4.5 * std + 1e-9)
    assert logprob == pytest.approx(math.log(expected[tok]), rel=1e-4)


def token_paths(model, options):
    """Every token sequence that spells one of `options` (all tokenizations)."""
    vocab = model.vocabulary.tokens
    out = []

    def extend(text: bytes, path):
        if text in options:
            out.append(path)
        for i, tok in enumerate(vocab):
            if tok and any(o.startswith(text + tok) for o in options):
                extend(text + tok, path + [i])
    extend(b"", [])
    return out


def test_beam_equals_exhaustive_search():
    fake = FakeModel()
    options = [b"ab", b"cd", b"12", b"2024"]
    prompt = fake.bos_ids + fake.encode("Pick")
    vocab = fake.vocabulary.tokens
    scored = {}
    for path in token_paths(fake, options):
        ids, text, total = list(prompt), b"", 0.0
        for k, tok in enumerate(path):
            # The masked distribution: tokens that keep the text a prefix of some option (EOS if complete).
            allowed = np.array([bool(t) and any(o.startswith(text + t) for o in options) for t in vocab])
            if text in options:
                allowed[0] = True
            logits = fake.logits_for(ids)
            total += float(np.log(softmax(np.where(allowed, logits, -np.inf))[tok]))
            ids.append(tok)
            text += vocab[tok]
        # A value that is a prefix of another ends with EOS, a real choice of the model.
        if any(o != text and o.startswith(text) for o in options):
            allowed = np.array([bool(t) and any(o.startswith(text + t) for o in options) for t in vocab])
            allowed[0] = True
            total += float(np.log(softmax(np.where(allowed, fake.logits_for(ids), -np.inf))[0]))
        key = text.decode()
        scored[key] = max(scored.get(key, -math.inf), total)
    best = sorted(scored.items(), key=lambda kv: -kv[1])
    # A beam as wide as the search space is exhaustive: every value, ranked, each at its best tokenization.
    assert len(token_paths(fake, options)) <= 12
    results = lmql_lite.run('beam(n=12, healing=False)\n"Pick[A]" where A in ["ab", "cd", "12", "2024"]\n',
                            model=fake)
    assert [(r.variables["A"], pytest.approx(r.logprob, abs=1e-4)) for r in results] == \
        [(v, pytest.approx(s, abs=1e-4)) for v, s in best]


def test_top_candidates_are_sorted_log_probabilities():
    scores = np.array([0.0, -np.inf, 2.0, 1.0], dtype=np.float32)
    top = decoders.top_candidates(scores, 5)
    assert [t for t, _ in top] == [2, 3, 0]
    assert sum(math.exp(lp) for _, lp in top) == pytest.approx(1.0)


def test_sample_n_shares_the_prompt_and_gives_n_results():
    fake = FakeModel()
    results = lmql_lite.run('sample(n=5, seed=3)\n"A long shared prompt for all five[A]" where A in ["ab", "cd"]\n',
                            model=fake)
    assert len(results) == 5 and all(r.variables["A"] in ("ab", "cd") for r in results)


def test_argmax_n_gives_n_equal_results_as_in_lmql():
    results = lmql_lite.run('argmax(n=3, verbose=True)\n"Pick[A]" where A in [" ab", " cd"]\n', model=FakeModel())
    single = lmql_lite.run('argmax\n"Pick[A]" where A in [" ab", " cd"]\n', model=FakeModel())
    assert [r.variables for r in results] == [single.variables] * 3


@pytest.mark.parametrize("bad, message", [
    ("sample(n=0)", "n must be at least 1"),
    ("sample(temperature=0)", "temperature must be positive"),
    ("sample(top_p=1.5)", "top_p"),
    ("argmax(max_len=0)", "max_len"),
    ("sample(bogus=1)", "unknown option 'bogus' for sample"),
    ("argmax(temperature=0.5)", "unknown option 'temperature' for argmax"),  # the rules `lmql-lite check` applies
    ("argmax(repetition_penalty=1.2)", "LMQL's option 'repetition_penalty' is not supported"),
    ("beam(temperature=0.5)", "unknown option 'temperature' for beam"),
    ("argmax(3)", "argmax takes no positional argument"),
])
def test_bad_decoder_options_are_argument_errors(bad, message):
    with pytest.raises(lmql_lite.QueryArgumentError, match=message):
        lmql_lite.run(f'{bad}\n"[A]" where A in ["ab"]\n', model=FakeModel())
