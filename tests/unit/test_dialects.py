"""The constraint translation for serving engines (models/dialects.py), with no server: GBNF from hole automata, request fields per dialect."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from lmql_lite.constraints import terms
from lmql_lite.constraints.holes import plan_hole
from lmql_lite.errors import ConstraintError
from lmql_lite.models import dialects

X = terms.Var("X")


def tokens_below(n):
    return terms.Compare(terms.Length(terms.Tokens("X")), "<", n)


def right_linear(grammar: str):
    """Parse the GBNF `dialects.gbnf` writes: rule -> [(set of code points | None for "", next rule | None)]."""
    rules = {}
    for line in grammar.strip().splitlines():
        name, body = line.split(" ::= ")
        alternatives = []
        for alt in body.split(" | "):
            if alt == '""':
                alternatives.append((None, None))
                continue
            m = re.fullmatch(r"\[(.*)\](?: (\S+))?", alt)
            assert m, alt
            alternatives.append((_ranges(m.group(1)), m.group(2)))
        rules[name] = alternatives
    return rules


def _ranges(body: str):
    chars = re.findall(r"\\u([0-9A-F]{4})|\\U([0-9A-F]{8})|([0-9A-Za-z])|(-)", body)
    points = [("-" if dash else int(u or U, 16) if (u or U) else ord(c)) for u, U, c, dash in chars]
    out, i = [], 0
    while i < len(points):
        if i + 2 < len(points) and points[i + 1] == "-":
            out.append((points[i], points[i + 2]))
            i += 3
        else:
            out.append((points[i], points[i]))
            i += 1
    return out


def accepts(rules, text: str) -> bool:
    """Whether the grammar derives exactly `text` (it is deterministic per character, so a set of rules suffices)."""
    current = {"root"}
    for ch in text:
        nxt = set()
        for r in current - {None}:  # None: a closing character was read, nothing may follow
            for ranges, target in rules[r]:
                if ranges and any(lo <= ord(ch) <= hi for lo, hi in ranges):
                    nxt.add(target)
        if not nxt:
            return False
        current = nxt
    return None in current or any(ranges is None for r in current if r is not None for ranges, _ in rules[r])


CASES = [
    terms.In("X", ("yes", "no", "yesterday")),
    terms.Int("X"),
    terms.Float("X"),
    terms.Regex("X", r"[a-zé]{1,3}-\d"),
    terms.Regex("X", r"(café|naïve|日本|🙂)+"),
    terms.And((terms.StopsAt("X", "\n"), tokens_below(10))),
    terms.And((terms.Regex("X", r"[a-z ]+\."), terms.StopsBefore("X", " end"))),
]
TEXTS = st.text(alphabet="yesnotrday0123456789-.+eaéz \n日本🙂cfïv", max_size=12)


@pytest.mark.parametrize("term", CASES, ids=str)
@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_the_grammar_writes_the_holes_language_and_a_closing_character(term, text):
    a = plan_hole(term, "X").automaton
    rules = right_linear(dialects.gbnf(a))
    data, s = text.encode(), 0
    for b in data:
        s = -1 if s < 0 or a.stops[s] else int(a.table[s, b])
    ends = s >= 0 and bool(a.accepting[s] or a.stops[s])
    closed = False  # text = a value that could go on + one ASCII character that cannot continue it
    if text and ord(text[-1]) < 0x80:
        head, p = text[:-1].encode(), 0
        for b in head:
            p = -1 if p < 0 or a.stops[p] else int(a.table[p, b])
        closed = p >= 0 and not a.stops[p] and a.accepting[p] and a.has_next[p] and a.table[p, ord(text[-1])] < 0 and ord(text[-1]) > 0
    assert accepts(rules, text) == (ends or closed)
    if closed and not ends:
        assert dialects.value_text(a, text) == (text[:-1], text[-1])
    elif ends:
        assert dialects.value_text(a, text) == (text, "")


def test_a_number_may_end_with_a_character_that_cannot_continue_it():
    rules = right_linear(dialects.gbnf(plan_hole(terms.Int("X"), "X").automaton))
    assert accepts(rules, "42") and accepts(rules, "42\n") and accepts(rules, "42 ")
    assert not accepts(rules, "42\n\n") and not accepts(rules, "4a2")


def test_a_complete_choice_has_nothing_after_it():
    a = plan_hole(terms.In("X", ("yes", "no")), "X").automaton
    rules = right_linear(dialects.gbnf(a))
    assert accepts(rules, "yes") and not accepts(rules, "yes.") and not accepts(rules, "ye")


LLAMA, VLLM, SGLANG = (dialects.DIALECTS[k] for k in ("llama.cpp", "vllm", "sglang"))


class Guide:  # what translate reads of an automaton guide: its plan
    def __init__(self, term, hole_type=None):
        self.plan = plan_hole(term, "X", hole_type)


@pytest.mark.parametrize("term, dialect, how, field", [
    (None, LLAMA, "none", None),
    (None, VLLM, "none", None),
    (terms.StopsAt("X", "\n"), LLAMA, "grammar", "grammar"),
    (terms.StopsAt("X", "\n"), VLLM, "stop", "include_stop_str_in_output"),
    (terms.StopsBefore("X", "."), SGLANG, "stop", "no_stop_trim"),
    (terms.Int("X"), LLAMA, "grammar", "grammar"),
    (terms.Int("X"), VLLM, "grammar", "structured_outputs"),
    (terms.In("X", ("a", "b")), SGLANG, "grammar", "ebnf"),
])
def test_each_dialect_gets_its_own_fields(term, dialect, how, field):
    request = dialects.translate(Guide(term), dialect, room=100)
    assert request.how == how
    assert (field in request.fields) if field else request.fields == {}


def test_a_token_budget_is_max_tokens_within_the_room_left():
    guide = Guide(terms.And((terms.StopsAt("X", "."), tokens_below(20))))
    assert dialects.translate(guide, VLLM, room=100).max_tokens == 19
    assert dialects.translate(guide, VLLM, room=7).max_tokens == 7
    assert dialects.translate(Guide(None), LLAMA, room=33).max_tokens == 33


@pytest.mark.parametrize("dialect", [LLAMA, VLLM, SGLANG], ids=lambda d: d.name)
@pytest.mark.parametrize("term", [
    terms.Compare(terms.Length(terms.Tokens("X")), ">", 3),
    terms.Compare(terms.Length(terms.Tokens("X")), "!=", 3),
], ids=str)
def test_a_least_token_count_is_refused_naming_the_constraint_and_server(term, dialect):
    with pytest.raises(ConstraintError) as e:
        dialects.translate(Guide(term), dialect, room=100)
    assert dialect.name in e.value.message and "TOKENS(X)" in e.value.message


class RecursiveGuide:  # what translate reads of a GrammarGuide
    plan = None
    term = terms.Grammar("X", "start: x\nx: \"(\" x \")\" | \"a\"")
    grammar = term.text
    budget = 12


def test_a_recursive_grammar_goes_as_lark_where_taken_and_is_refused_elsewhere():
    assert dialects.translate(RecursiveGuide(), VLLM, 50).fields["structured_outputs"]["grammar"].startswith("start")
    assert dialects.translate(RecursiveGuide(), SGLANG, 50).fields["ebnf"].startswith("%llguidance {}")
    assert dialects.translate(RecursiveGuide(), VLLM, 50).max_tokens == 12
    with pytest.raises(ConstraintError, match="llama.cpp's server takes no grammar with nested rules"):
        dialects.translate(RecursiveGuide(), LLAMA, 50)


@pytest.mark.parametrize("term, phrases", [
    (None, []),
    (terms.StopsAt("X", "\n"), ["\n"]),
    (terms.And((terms.StopsAt("X", "."), terms.StopsBefore("X", "!"), tokens_below(5))), [".", "!"]),
    (terms.And((terms.StopsAt("X", "."), terms.Int("X"))), None),
    (terms.In("X", ("a",)), None),
], ids=str)
def test_stop_phrases_only_when_the_text_is_otherwise_free(term, phrases):
    assert dialects.stop_phrases(term) == phrases
