"""TokenIndex: the vectorised trie walk gives, per automaton state, exactly the tokens a byte-by-byte walk allows."""
from __future__ import annotations

import numpy as np
import pytest

from lmql_lite.constraints import terms as T
from lmql_lite.constraints.holes import plan_hole
from lmql_lite.index import TokenIndex, Vocabulary

TOKENS = (b"", b"a", b"b", b"ab", b"abc", b"ba", b"c", b".", b"a.", b".b", b"\xc3", b"\xa9", b"\xc3\xa9",
          "é.".encode(), b"1", b"12", b" ", b" a", b"", b"\n")
VOCAB = Vocabulary(TOKENS, eos_ids=frozenset({0}), special_ids=frozenset({0, 18}))


@pytest.fixture(scope="module")
def index():
    return TokenIndex(VOCAB)


def naive(automaton, state, armed, prefix=b""):
    """Token by token, byte by byte: the reference the vectorised walk must equal."""
    allowed = {}
    for i, t in enumerate(TOKENS):
        if i in VOCAB.special_ids or not t.startswith(prefix):
            continue
        s = state
        for b in t[len(prefix):]:
            s = int(automaton.table[s, b])
            if s < 0:
                break
            if armed and automaton.stops[s]:
                s = -1
                allowed[i] = -1
                break
        else:
            if s >= 0 and (armed or automaton.end_ok[s]):
                allowed[i] = s
    return allowed


CONSTRAINTS = [
    None,
    T.In("X", ("ab", "abc", "ba", "é.")),
    T.Regex("X", r"[ab]+\.?"),
    T.Regex("X", r"é+"),
    T.StopsAt("X", "."),
    T.StopsBefore("X", "."),
    T.And((T.StopsAt("X", "."), T.Regex("X", r"a+b*\."))),
    T.And((T.StopsBefore("X", "."), T.Regex("X", r"[ab]+"))),
    T.Not(T.Contains("X", "b")),
]


@pytest.mark.parametrize("term", CONSTRAINTS, ids=str)
@pytest.mark.parametrize("armed", [False, True])
def test_walk_equals_naive_walk_in_every_state(index, term, armed):
    automaton = plan_hole(term, "X").automaton
    for state in range(len(automaton.table)):
        step = index.allowed(automaton, state, armed)
        expected = naive(automaton, state, armed)
        assert sorted(step.ids.tolist()) == sorted(expected), (state, armed)
        assert dict(zip(step.ids.tolist(), step.ends.tolist())) == expected
        assert step.mask.sum() == len(expected)


@pytest.mark.parametrize("prefix", [b"a", b"ab", b"\xc3", b".", b" ", b"abd", b"z"])
def test_walk_from_a_prefix_keeps_tokens_that_start_with_it(index, prefix):
    automaton = plan_hole(T.Regex("X", r"[abc.]+|é\.?|b"), "X").automaton
    step = index.walk(automaton, 0, False, prefix)
    assert dict(zip(step.ids.tolist(), step.ends.tolist())) == naive(automaton, 0, False, prefix)


def test_special_and_eos_tokens_are_never_in_a_walk(index):
    step = index.allowed(plan_hole(None, "X").automaton, 0, False)
    assert not step.mask[0] and not step.mask[18]
    assert step.mask[1:18].sum() == 16 and not step.mask[11]  # b"\xa9" alone cannot start a text


def test_masks_are_cached_per_state(index):
    automaton = plan_hole(T.Regex("X", "[ab]+"), "X").automaton
    assert index.allowed(automaton, 0, False) is index.allowed(automaton, 0, False)


def test_index_facts(index):
    assert index.max_token_bytes == 3
    assert len(index.missing_bytes) == 256 - 9
    assert not len(TokenIndex(Vocabulary(tuple(bytes([b]) for b in range(256)), frozenset())).missing_bytes)
    assert np.array_equal(index.eos_ids, [0])


def _all_walks(index):
    """Every state's walk for a few constraints, and walks from prefixes: what a trie decides."""
    out = []
    for term in CONSTRAINTS:
        automaton = plan_hole(term, "X").automaton
        for state in range(len(automaton.table)):
            out.append(index.walk(automaton, state, True).ids.tolist())
        for prefix in (b"a", b"\xc3", b" ", b"zz"):
            out.append(index.walk(automaton, 0, False, prefix).ids.tolist())
    return out


def test_the_trie_is_saved_once_and_loaded_by_the_next_index(tmp_path, monkeypatch):
    from lmql_lite import index as index_module
    built = TokenIndex(VOCAB, cache_dir=tmp_path)
    files = list(tmp_path.glob("index-*.npz"))
    assert len(files) == 1
    fresh = TokenIndex(VOCAB)
    monkeypatch.setattr(index_module, "_build_trie", lambda texts: pytest.fail("built again"))
    loaded = TokenIndex(VOCAB, cache_dir=tmp_path)
    assert _all_walks(loaded) == _all_walks(built) == _all_walks(fresh)
    other = Vocabulary(TOKENS[:-1] + (b"xyz",), eos_ids=VOCAB.eos_ids, special_ids=VOCAB.special_ids)
    monkeypatch.undo()
    TokenIndex(other, cache_dir=tmp_path)  # another vocabulary: another file
    assert len(list(tmp_path.glob("index-*.npz"))) == 2


@pytest.mark.parametrize("damage", [lambda p: p.write_bytes(p.read_bytes()[:40]), lambda p: p.write_bytes(b""),
                                    lambda p: p.write_bytes(b"PK" + bytes(200))], ids=["cut", "empty", "garbage"])
def test_a_damaged_saved_trie_is_built_again(tmp_path, damage):
    TokenIndex(VOCAB, cache_dir=tmp_path)
    (path,) = tmp_path.glob("index-*.npz")
    damage(path)
    assert _all_walks(TokenIndex(VOCAB, cache_dir=tmp_path)) == _all_walks(TokenIndex(VOCAB))
    assert TokenIndex(VOCAB, cache_dir=tmp_path)._byte.size  # rewritten, loads again


def test_an_unwritable_cache_folder_only_costs_the_build(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    index = TokenIndex(VOCAB, cache_dir=blocker / "index")
    assert _all_walks(index) == _all_walks(TokenIndex(VOCAB))
    assert not list(tmp_path.glob("**/.index-*"))
