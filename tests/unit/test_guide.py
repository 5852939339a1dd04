"""Guides, one constraint kind per row: decoding under the mask always yields a value that satisfies the constraint."""
from __future__ import annotations

import re

import numpy as np
import pytest

from lmql_lite.constraints import compile_guide
from lmql_lite.constraints import terms as T
from lmql_lite.errors import ConstraintError
from lmql_lite.index import TokenIndex, Vocabulary

EOS, SPECIAL = 0, 1
WORDS = [b"yes", b"no", b" yes", b" no", b"maybe", b"ye", b"s", b"n", b"o", b"y", b"es", b"m", b"ay", b"be",
         b".", b"a.", b" a", b"\n", b"a\nb", b"ab", b"-", b"1", b"12", b"3.", b"e5", b" 4", b"\xc3", b"\xa9", b"\xc3\xa9",
         "日本".encode(), b"\xe6", b"\x97\xa5", b"stop.", b"go. on", b"end.x"]
TOKENS = (b"", b"") + tuple(bytes([b]) for b in range(256)) + tuple(w for w in WORDS if len(w) > 1)
VOCAB = Vocabulary(TOKENS, eos_ids=frozenset({EOS}), special_ids=frozenset({EOS, SPECIAL}))
ID = {t: i for i, t in reversed(list(enumerate(TOKENS)))}
X, TOK = T.Var("X"), T.Length(T.Tokens("X"))


@pytest.fixture(scope="module")
def index():
    return TokenIndex(VOCAB)


def decode(guide, prefer: list[bytes], limit: int = 60):
    """Take the first preferred token the mask allows (else EOS, else the lowest allowed id), until the hole ends."""
    for _ in range(limit):
        if guide.is_finished():
            break
        mask = guide.allowed()
        assert not mask[SPECIAL]
        choice = next((ID[t] for t in prefer if mask[ID[t]]), EOS if mask[EOS] else int(np.flatnonzero(mask)[0]))
        if choice != EOS:
            prefer = prefer[prefer.index(TOKENS[choice]) + 1:] if TOKENS[choice] in prefer else prefer
        guide.advance(choice)
        if choice == EOS:
            break
    assert guide.is_finished()
    return guide


def run(index, term, prefer, hole_type=None):
    return decode(compile_guide(term, "X", index, hole_type=hole_type), [p if isinstance(p, bytes) else p.encode() for p in prefer])


# (constraint, hole type, the tokens a "model" would like to write, expected text, expected value)
CASES = [
    (None, None, ["ab", " a"], "ab a", "ab a"),
    (T.In("X", ("yes", "no")), None, ["maybe", "ye", "s"], "yes", "yes"),
    (T.In("X", (" yes", " no")), None, [" no"], " no", " no"),
    (T.Compare(X, "==", "maybe"), None, ["m", "ay", "be"], "maybe", "maybe"),
    (T.Compare(X, "!=", "no"), None, ["no", "."], "no.", "no."),
    (T.Compare(X, "<", "b"), None, ["c", "a"], "a", "a"),
    (T.Compare(X, ">=", "n"), None, ["a", "no"], "no", "no"),
    (T.StopsAt("X", "."), None, ["go. on"], "go.", "go."),
    (T.StopsBefore("X", "."), None, ["stop.", "x"], "stop", "stop"),
    (T.And((T.StopsAt("X", "."), T.StopsAt("X", "\n"))), None, ["a\nb", "."], "a\n", "a\n"),
    (T.Or((T.StopsBefore("X", "\n"), T.StopsBefore("X", "a"))), None, ["end.x", "a\nb"], "end.x", "end.x"),
    (T.And((T.StopsAt("X", "."), T.Compare(TOK, ">", 2))), None, ["a.", "a.", "a.", "a."], "a.a.a.", "a.a.a."),
    (T.Compare(TOK, "<", 3), None, ["a", "b", "c", "d"], "ab", "ab"),
    (T.Compare(TOK, "==", 2), None, ["yes", "no", "maybe"], "yesno", "yesno"),
    (T.Compare(T.Length(X), "<=", 3), None, ["ab", "ab"], "ab", "ab"),
    (T.Compare(T.Length(X), ">", 2), None, ["é", "é", "é"], "ééé", "ééé"),
    (T.Not(T.Contains("X", "e")), None, ["yes", "no", "."], "no.", "no."),
    (T.Contains("X", "no"), None, ["yes", ".", "no"], "yes.no", "yes.no"),
    (T.Int("X"), None, [" 4", "12", "a"], " 412", 412),
    (None, int, ["-", "12", "x"], "-12", -12),
    (T.Float("X"), None, ["3.", "1", "e5"], "3.1e5", 3.1e5),
    (None, float, ["1", "2"], "12", 12.0),
    (T.Regex("X", r"\d{2}-\d"), None, ["12", "-", "3"], "12-3", "12-3"),
    (None, r"[a-z]+\.", ["yes", "."], "yes.", "yes."),
    (None, str, ["ab"], "ab", "ab"),
    (T.Regex("X", r"é+"), None, [b"\xc3", b"\xa9", "é"], "éé", "éé"),
    (T.In("X", ("日本", "日")), None, ["日本"], "日本", "日本"),
    (T.And((T.Regex("X", "[a-z]+"), T.In("X", ("ab", "yes", "no1")))), None, ["no"], "ab", "ab"),
    (T.Or((T.In("X", ("yes",)), T.Regex("X", r"\d+"))), None, ["12"], "12", "12"),
    (T.Not(T.In("X", ("yes", "no"))), None, ["yes", "."], "yes.", "yes."),
    (T.Not(T.Compare(TOK, ">=", 2)), None, ["ab", "cd"], "ab", "ab"),
    (T.Or((T.Compare(TOK, "==", 1), T.Compare(TOK, "==", 3))), None, ["a", "b", "c", "d"], "abc", "abc"),
    (T.And((T.StopsBefore("X", "."), T.Regex("X", "[a-z]+"))), None, ["go. on", "."], "go", "go"),
    (T.And((T.StopsAt("X", "."), T.Regex("X", r"[a-z]+\."))), None, ["a.", "a."], "a.", "a."),
]


@pytest.mark.parametrize("term, hole_type, prefer, text, value", CASES, ids=[str(c[0]) for c in CASES])
def test_decoded_value_satisfies_the_constraint(index, term, hole_type, prefer, text, value):
    guide = run(index, term, prefer, hole_type)
    assert guide.text() == text
    assert guide.value() == value
    assert type(guide.value()) is type(value)


@pytest.mark.parametrize("term", [
    T.In("X", ()),
    T.And((T.In("X", (" yes",)), T.In("X", (" no",)))),
    T.Compare(TOK, "<", 0),
    T.And((T.Compare(TOK, ">", 3), T.Compare(TOK, "<", 3))),
    T.Regex("X", r"[^\x00-\U0010FFFF]"),
    T.And((T.Regex("X", r"[0-9]{30}"), T.Compare(TOK, "<", 3))),
    T.And((T.In("X", ("yes",)), T.Compare(TOK, ">", 3))),
    T.And((T.Compare(T.Length(X), "<", 2), T.Compare(T.Length(X), ">", 2))),
])
def test_unsatisfiable_constraints_fail_before_decoding_naming_variable_and_constraint(index, term):
    with pytest.raises(ConstraintError) as e:
        compile_guide(term, "X", index)
    assert "X" in str(e.value) and str(term) in str(e.value)


@pytest.mark.parametrize("term, message", [
    (T.Not(T.StopsAt("X", ".")), "has no meaning"),
    (T.Or((T.StopsAt("X", "."), T.In("X", ("a",)))), "`or`"),
    (T.Or((T.Compare(TOK, "<", 3), T.In("X", ("a",)))), "`or`"),
    (T.Regex("X", r"(a)\1"), "backreferences"),
    (T.Regex("Y", "a"), "about Y"),
])
def test_malformed_constraints_are_refused(index, term, message):
    with pytest.raises(ConstraintError, match=re.escape(message)):
        compile_guide(term, "X", index)


def test_eos_only_in_accepting_states(index):
    guide = compile_guide(T.In("X", ("ye", "yes")), "X", index)
    assert not guide.allowed()[EOS]
    guide.advance(ID[b"ye"])
    assert guide.allowed()[EOS] and guide.allowed()[ID[b"s"]]
    guide.advance(ID[b"s"])
    assert guide.is_finished()  # no longer text possible


def test_unconstrained_hole_ends_on_eos(index):
    guide = compile_guide(None, "X", index)
    assert guide.allowed()[EOS]
    guide.advance(ID[b"ab"])
    guide.advance(EOS)
    assert guide.is_finished() and guide.value() == "ab"


def test_broken_characters_never_end_a_value(index):
    guide = compile_guide(None, "X", index)
    guide.advance(ID[b"\xc3"])
    mask = guide.allowed()
    assert not mask[EOS] and mask[ID[b"\xa9"]] and not mask[ID[b"a"]]
    assert guide.forced() == b""  # the text ends inside a character


def test_token_budget_ends_the_hole_in_an_accepting_state(index):
    guide = compile_guide(T.And((T.Regex("X", r"[a-z]+"), T.Compare(TOK, "<=", 2))), "X", index)
    guide.advance(ID[b"ab"])
    guide.advance(ID[b"c"])
    assert guide.is_finished() and guide.value() == "abc"


def test_budget_masks_tokens_that_cannot_finish_in_time(index):
    # two tokens for a 4-digit number: only 2-digit tokens keep it reachable
    guide = compile_guide(T.And((T.Regex("X", r"[0-9]{4}"), T.Compare(TOK, "<", 3))), "X", index)
    mask = guide.allowed()
    assert mask[ID[b"12"]] and not mask[ID[b"1"]]


@pytest.mark.parametrize("term, after, forced", [
    (T.In("X", ("positive", "negative")), [b"y"], b""),
    (T.In("X", ("yes", "yellow")), [b"y"], b"e"),
    (T.In("X", ("maybe",)), [b"m"], b"aybe"),
    (T.Regex("X", r"\d\d-\d\d"), [b"12"], b"-"),
    (T.In("X", ("日本",)), [], "日本".encode()),
    (T.In("X", ("日本",)), [b"\xe6"], b""),
])
def test_forced_text(index, term, after, forced):
    guide = compile_guide(term, "X", index)
    for t in after:
        if guide.allowed()[ID[t]]:
            guide.advance(ID[t])
    assert guide.forced() == forced


def test_healing_first_token_starts_with_prefix_which_is_not_the_value(index):
    guide = compile_guide(T.In("X", ("yes", "no")), "X", index)
    guide.heal(b" ")
    mask = guide.allowed()
    assert mask[ID[b" yes"]] and mask[ID[b" no"]] and not mask[ID[b"yes"]] and not mask[EOS]
    guide.advance(ID[b" no"])
    assert guide.is_finished() and guide.value() == "no"


def test_healed_masks_are_computed_once_per_prefix(index, monkeypatch):
    term = T.In("X", ("yes", "no"))
    first = compile_guide(term, "X", index)
    first.heal(b" ")
    mask = first.allowed()
    walks = []
    monkeypatch.setattr(index, "walk", lambda *a, **k: walks.append(a) or pytest.fail("walked again"))
    assert first.allowed() is mask  # asked again (settle, then choose): the same mask
    again = compile_guide(term, "X", index)  # the next hole with this constraint and prefix
    again.heal(b" ")
    assert again.allowed() is mask and again.allowed().count == first.allowed().count == int(mask.array.sum())
    monkeypatch.undo()
    other = compile_guide(T.In("X", ("no",)), "X", index)  # another constraint: its own healed mask
    other.heal(b" ")
    assert other.allowed()[ID[b" no"]] and not other.allowed()[ID[b" yes"]] and mask[ID[b" yes"]]
    assert not walks


def test_predicates_are_checked_on_the_value(index):
    ok = T.Predicate(lambda v: v.startswith("y"), (X,), (), "starts_y(X)")
    guide = run(index, T.And((T.In("X", ("yes", "no")), ok)), ["yes"])
    assert guide.value() == "yes"
    guide = run(index, T.And((T.In("X", ("yes", "no")), ok)), ["no"])
    with pytest.raises(ConstraintError, match="'no'"):
        guide.value()


def test_or_with_a_predicate_is_checked_whole(index):
    long = T.Predicate(lambda v: len(v) > 5, (X,), (), "is_long(X)")
    guide = run(index, T.Or((T.In("X", ("yes",)), long)), ["no", "."])
    with pytest.raises(ConstraintError):
        guide.value()


@pytest.mark.parametrize("op, n, ok", [("<", 100, True), (">", 100, False), ("==", 12, True)])
def test_numeric_comparisons_are_post_checks(index, op, n, ok):
    guide = run(index, T.And((T.Int("X"), T.Compare(X, op, n))), ["12"])
    if ok:
        assert guide.value() == 12
    else:
        with pytest.raises(ConstraintError):
            guide.value()


def test_stop_phrase_only_counts_once_the_rest_accepts(index):
    # STOPS_AT(X, ".") and len(X) > 3: the first "." comes too early and is ordinary text
    term = T.And((T.StopsAt("X", "."), T.Compare(T.Length(X), ">", 3)))
    guide = run(index, term, ["a.", "a.", "a."])
    assert guide.value() == "a.a."


def test_copy_is_independent(index):
    guide = compile_guide(T.In("X", ("yes", "no")), "X", index)
    twin = guide.copy()
    guide.advance(ID[b"yes"])
    assert not twin.is_finished() and twin.text() == ""
