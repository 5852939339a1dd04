"""Masks on the real SmolLM2 vocabulary (49,152 tokens): for a table of constraints and sampled states, the
vectorised mask equals a token-by-token check, and for choices and fixed-shape regexes it equals Python's own answer."""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from lmql_lite.constraints import compile_guide
from lmql_lite.constraints import terms as T
from lmql_lite.index import TokenIndex

pytestmark = pytest.mark.model

X, TOK = T.Var("X"), T.Length(T.Tokens("X"))
DEV_TOKENIZER = Path(os.environ.get("SMOLLM2_TOKENIZER", "/tmp/smollm2-tokenizer"))


@pytest.fixture(scope="module")
def vocab():
    transformers_backend = pytest.importorskip("lmql_lite.models.transformers")
    try:
        tokenizer = transformers_backend.default_tokenizer()
    except Exception:
        if not DEV_TOKENIZER.is_dir():
            pytest.skip("the SmolLM2 tokenizer is not available")
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(DEV_TOKENIZER))
    vocabulary = transformers_backend.vocabulary_from_tokenizer(tokenizer)
    return tokenizer, vocabulary, TokenIndex(vocabulary)


def token_by_token(guide, vocabulary):
    """The reference mask: each token's bytes walked in Python through the hole's automaton."""
    a, counts = guide.automaton, guide.plan.counts
    k = guide.tokens_used + 1
    armed = counts.allows(k)
    ref = np.zeros(len(vocabulary), bool)
    for i, data in enumerate(vocabulary.tokens):
        if i in vocabulary.special_ids or not data or k > counts.hi:
            continue
        s = guide.state
        for b in data:
            s = int(a.table[s, b])
            if s < 0 or (armed and a.stops[s]):
                break
        if s >= 0 and (armed and a.stops[s] or a.end_ok[s]):
            ref[i] = s < 0 or a.stops[s] and armed or guide._can_end(s, k)
    if a.accepting[guide.state] and counts.allows(guide.tokens_used):
        ref[list(vocabulary.eos_ids)] = True
    return ref


TABLE = [
    (None, " The capital of France is Paris."),
    (T.And((T.StopsAt("X", "\n"), T.Compare(TOK, "<", 8))), " Paris, on the Seine\n"),
    (T.StopsBefore("X", "."), " Paris is lovely. Yes"),
    (T.In("X", ("yes", "no", "maybe", " yes", "naïve")), "naïve"),
    (T.Int("X"), " 12345"),
    (T.Float("X"), " -3.25e10"),
    (T.Regex("X", r"\d{4}-\d{2}-\d{2}"), "2024-01-31"),
    (T.Regex("X", r"[A-Z][a-z]+( [A-Z][a-z]+)*"), "New York City"),
    (T.Regex("X", r"[a-zäöüß ]+"), "grüße aus köln"),
    (T.And((T.Compare(T.Length(X), "<", 12), T.Not(T.Contains("X", "e")))), " Pay Oslo now"),
    (T.And((T.Regex("X", "[a-z ]+"), T.Compare(X, "!=", "no"))), " quiet harbour"),
    (T.In("X", ("日本語", "中文", "🙂")), "日本語"),
]


@pytest.mark.parametrize("term, text", TABLE, ids=[str(t) for t, _ in TABLE])
def test_mask_equals_token_by_token_check_in_sampled_states(vocab, term, text):
    tokenizer, vocabulary, index = vocab
    rng = random.Random(0)
    guide = compile_guide(term, "X", index)
    path = tokenizer.encode(text, add_special_tokens=False)
    for step in range(4):
        if guide.is_finished():
            break
        mask = guide.allowed()
        assert np.array_equal(mask, token_by_token(guide, vocabulary)), (term, step)
        assert not mask[list(vocabulary.special_ids - vocabulary.eos_ids)].any()
        # follow the tokenizer's own split while it stays allowed, else a random allowed token
        tok = path[step] if step < len(path) and mask[path[step]] else rng.choice(np.flatnonzero(mask).tolist())
        if tok in vocabulary.eos_ids:
            break
        guide.advance(tok)


def viable_choice_prefix(options, data: bytes) -> bool:
    return any(o.encode().startswith(data) for o in options)


def viable_date_prefix(data: bytes) -> bool:
    # fixed shape: complete the prefix with a filler of the same shape and ask re
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    filler = "0000-00-00"
    return len(text) <= len(filler) and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text + filler[len(text):]) is not None


@pytest.mark.parametrize("term, viable, path", [
    (T.In("X", ("yes", "no", "maybe", " yes", "naïve", "日本語")),
     lambda d: viable_choice_prefix(("yes", "no", "maybe", " yes", "naïve", "日本語"), d), ["na", "ï"]),
    (T.Regex("X", r"\d{4}-\d{2}-\d{2}"), viable_date_prefix, ["2", "0", "2", "4", "-"]),
])
def test_mask_equals_pythons_answer(vocab, term, viable, path):
    tokenizer, vocabulary, index = vocab
    guide = compile_guide(term, "X", index)
    text = b""
    for piece in [None] + path:
        if piece is not None:
            tok = tokenizer.encode(piece, add_special_tokens=False)[0]
            guide.advance(tok)
            text += vocabulary.tokens[tok]
        mask = guide.allowed()
        for i, data in enumerate(vocabulary.tokens):
            if i in vocabulary.special_ids:
                continue
            assert mask[i] == (bool(data) and viable(text + data)), (text, data)


def test_unconstrained_hole_never_breaks_a_character(vocab):
    tokenizer, vocabulary, index = vocab
    guide = compile_guide(None, "X", index)
    partial = next(i for i, t in enumerate(vocabulary.tokens) if t == "日".encode()[:2])
    guide.advance(partial)
    mask = guide.allowed()
    for i in np.flatnonzero(mask):
        data = vocabulary.tokens[i]
        assert 0x80 <= data[0] < 0xC0  # only a continuation byte can come next
    assert not mask[list(vocabulary.eos_ids)].any()
