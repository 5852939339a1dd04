"""Masks are exact: on a small vocabulary with split multi-byte characters, for random constraints and random
decoding paths, the mask equals the tokens some valid token sequence continues with (brute-force oracle).

The oracle knows nothing of automata: it enumerates every token sequence within a token budget,
or, for constraints without one, within a finite choice (`X in [...]`), so the enumeration is
exhaustive; it replays each with
the hole semantics written plainly (stop phrases fire at the first byte where the rest of the
constraint accepts; the value must satisfy the term by Python's own `re`, `in`, `len`...), and
keeps the valid ones.
"""
from __future__ import annotations

import functools
import itertools
import operator
import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmql_lite.constraints import compile_guide
from lmql_lite.constraints import terms as T
from lmql_lite.constraints.holes import FLOAT_PATTERN, INT_PATTERN
from lmql_lite.errors import ConstraintError
from lmql_lite.index import TokenIndex, Vocabulary

EOS, SPECIAL = 0, 1
TOKENS = (b"", b"", b"a", b"b", b"1", b"-", b".", b"ab", b"a.", b"b1", "é".encode(), b"\xc3", b"\xa9",
          "日".encode(), b"\xe6\x97", b"\xa5", "a日".encode()[:2])
VOCAB = Vocabulary(TOKENS, eos_ids=frozenset({EOS}), special_ids=frozenset({EOS, SPECIAL}))
INDEX = TokenIndex(VOCAB)
TEXT_IDS = [i for i in range(len(TOKENS)) if i not in VOCAB.special_ids]
CHARS = ["a", "b", "1", "-", ".", "é", "日"]
OPS = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">=": operator.ge, ">": operator.gt}
X = T.Var("X")

# ---- random constraints -------------------------------------------------------------------

words = st.text(st.sampled_from(CHARS), min_size=0, max_size=3)
char_class = st.sampled_from(["[ab]", "[^a]", ".", r"\w", "[0-9]", "[é日]", "[a-é]", r"\W"])
regex = st.recursive(
    st.one_of(st.sampled_from(CHARS).map(re.escape), char_class),
    lambda inner: st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map(lambda p: f"(?:{p[0]}|{p[1]})"),
        st.tuples(inner, st.sampled_from(["?", "*", "+", "{1,2}", "{2}"])).map(lambda p: f"(?:{p[0]}){p[1]}"),
    ),
    max_leaves=4,
)
atoms = st.one_of(
    regex.map(lambda p: T.Regex("X", p)),
    st.lists(words, max_size=3).map(lambda ws: T.In("X", tuple(ws))),
    st.tuples(st.sampled_from(list(OPS)), words).map(lambda p: T.Compare(X, p[0], p[1])),
    words.filter(bool).map(lambda w: T.Contains("X", w)),
    st.tuples(st.sampled_from(list(OPS)), st.integers(0, 3)).map(lambda p: T.Compare(T.Length(X), *p)),
    st.sampled_from([T.Int("X"), T.Float("X")]),
)
languages = st.recursive(
    atoms,
    lambda inner: st.one_of(
        inner.map(T.Not),
        st.lists(inner, min_size=2, max_size=2).map(lambda ps: T.And(tuple(ps))),
        st.lists(inner, min_size=2, max_size=2).map(lambda ps: T.Or(tuple(ps))),
    ),
    max_leaves=3,
)
stops = st.lists(st.tuples(st.sampled_from([T.StopsAt, T.StopsBefore]), st.sampled_from([".", "1", "a.", "日"]))
                 .map(lambda p: p[0]("X", p[1])), max_size=2)
counts = st.lists(st.tuples(st.sampled_from(list(OPS)), st.integers(0, 3))
                  .map(lambda p: T.Compare(T.Length(T.Tokens("X")), *p)), max_size=1)


@st.composite
def constraints(draw):
    """(term, token budget or None); without a budget the term carries a finite choice that bounds the text."""
    parts = ([draw(languages)] if draw(st.booleans()) else []) + draw(stops) + draw(counts)
    if draw(st.booleans()):
        budget = draw(st.integers(1, 3))
        parts.append(T.Compare(T.Length(T.Tokens("X")), "<=", budget))
        return T.And(tuple(parts)), budget
    parts.append(T.In("X", tuple(draw(st.lists(words, min_size=1, max_size=3)))))
    return T.And(tuple(parts)), None


# ---- the oracle ---------------------------------------------------------------------------

def holds(term, text: str) -> bool:
    """The term's language parts on a value (stop phrases and token counts are handled by the replay)."""
    if isinstance(term, T.And):
        return all(holds(p, text) for p in term.parts)
    if isinstance(term, T.Or):
        return any(holds(p, text) for p in term.parts)
    if isinstance(term, T.Not):
        return not holds(term.part, text)
    if isinstance(term, (T.StopsAt, T.StopsBefore)):
        return True
    if isinstance(term, T.Regex):
        return re.fullmatch(term.pattern, text) is not None
    if isinstance(term, T.Int):
        return re.fullmatch(INT_PATTERN, text) is not None
    if isinstance(term, T.Float):
        return re.fullmatch(FLOAT_PATTERN, text) is not None
    if isinstance(term, T.In):
        return text in term.options
    if isinstance(term, T.Contains):
        return term.substring in text
    if isinstance(term.left, T.Length):
        return True if isinstance(term.left.of, T.Tokens) else OPS[term.op](len(text), term.right)
    return OPS[term.op](text, term.right)


def count_ok(term, n: int) -> bool:
    return all(OPS[p.op](n, p.right) for p in term.parts
               if isinstance(p, T.Compare) and isinstance(p.left, T.Length) and isinstance(p.left.of, T.Tokens))


class Oracle:
    def __init__(self, term, budget: int | None):
        self.term = term
        self.stops = [(p.phrase.encode(), isinstance(p, T.StopsBefore)) for p in term.parts
                      if isinstance(p, (T.StopsAt, T.StopsBefore))]
        self.valid: dict[tuple, str] = {}  # valid token sequence -> its value
        if budget is not None:
            sequences = (seq for n in range(budget + 1) for seq in itertools.product(TEXT_IDS, repeat=n))
        else:  # every text is a prefix of a choice, possibly followed by a stop phrase
            choice = next(p for p in term.parts if isinstance(p, T.In))
            texts = [o.encode() + phrase for o in choice.options for phrase in [b""] + [p for p, _ in self.stops]]
            sequences = self.spell(texts, (), b"")
        for seq in sequences:
            value = self.replay(seq)
            if value is not None:
                self.valid[seq] = value

    def spell(self, texts, seq, text):
        """Every token sequence whose bytes are a prefix of one of `texts`."""
        yield seq
        for tok in TEXT_IDS:
            longer = text + TOKENS[tok]
            if any(t.startswith(longer) for t in texts):
                yield from self.spell(texts, seq + (tok,), longer)

    @functools.lru_cache(maxsize=None)
    def accepts(self, data: bytes) -> bool:
        try:
            return holds(self.term, data.decode("utf-8"))
        except UnicodeDecodeError:
            return False

    def replay(self, seq) -> str | None:
        """The value if `seq` is a complete, valid run of the hole, else None."""
        text = b""
        for k, tok in enumerate(seq, 1):
            armed = count_ok(self.term, k)
            for b in TOKENS[tok]:
                text += bytes([b])
                if not armed:
                    continue
                for phrase, before in self.stops:  # the first listed phrase wins a tie
                    value = text[: len(text) - len(phrase)] if before else text
                    if text.endswith(phrase) and self.accepts(value):
                        return value.decode() if k == len(seq) else None  # the hole ended here
        return text.decode() if count_ok(self.term, len(seq)) and self.accepts(text) else None

    def allowed(self, prefix: tuple) -> set[int]:
        n = len(prefix)
        nxt = {seq[n] for seq in self.valid if len(seq) > n and seq[:n] == prefix}
        return nxt | ({EOS} if prefix in self.valid else set())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(constraints(), st.data())
def test_mask_equals_oracle_on_random_constraints_and_paths(constraint, data):
    term, budget = constraint
    oracle = Oracle(term, budget)
    try:
        guide = compile_guide(term, "X", INDEX)
    except ConstraintError:
        assert not oracle.valid, f"refused a satisfiable constraint {term}"
        return
    prefix: tuple = ()
    while not guide.is_finished():
        expected = oracle.allowed(prefix)
        if not expected:
            try:
                mask = guide.allowed()
            except ConstraintError:
                return  # the safety net: no invalid value, an error instead
            raise AssertionError(f"{term}: allowed {np.flatnonzero(mask)} after {prefix}, oracle allows nothing")
        mask = guide.allowed()
        assert set(np.flatnonzero(mask).tolist()) == expected, (term, prefix)
        tok = data.draw(st.sampled_from(sorted(expected)))
        guide.advance(tok)
        if tok == EOS:
            break
        prefix += (tok,)
    assert prefix in oracle.valid, (term, prefix)
    assert guide.text() == oracle.valid[prefix]
    # a finished hole admits no further token: the oracle agrees nothing valid extends it
    if tok != EOS:
        assert oracle.allowed(prefix) <= {EOS}
