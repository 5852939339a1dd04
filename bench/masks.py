"""Mask speed on the real SmolLM2 vocabulary: compile, a new state's mask, a cached mask, and applying it to logits.

Run: python bench/masks.py   (targets: compile <= 5 ms, new state <= 10 ms p50, cached + apply <= 0.3 ms)
For each constraint it decodes a fixed value token by token (the tokenizer's own split), so the
states measured are the ones a real run visits.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmql_lite.constraints import automata, compile_guide, grammar, holes, json_schema, regex  # noqa: E402
from lmql_lite.constraints import terms as T  # noqa: E402
from lmql_lite import decoders  # noqa: E402
from lmql_lite.index import TokenIndex  # noqa: E402

X = T.Var("X")
TOK = T.Length(T.Tokens("X"))
SQL = r"""
start: "SELECT " columns " FROM " NAME (" WHERE " NAME " " OP " " value)? ";"
columns: "*" | NAME (", " NAME)*
OP: "=" | "<" | ">"
value: INT | "'" /[A-Za-z ]+/ "'"
NAME: /[a-z_][a-z0-9_]*/
%import common.INT
"""
ARITH = r"""
?start: sum
?sum: product | sum "+" product | sum "-" product
?product: atom | product "*" atom | product "/" atom
?atom: NUMBER | "(" sum ")"
%import common.NUMBER
"""
CASES = [  # (label, term, hole_type, a value to walk)
    ("no constraint", None, None, " Paris is the capital of France."),
    ('STOPS_AT(X, "\\n") and len(TOKENS(X)) < 20', T.And((T.StopsAt("X", "\n"), T.Compare(TOK, "<", 20))), None,
     " Paris, on the Seine\n"),
    ('STOPS_BEFORE(X, ".")', T.StopsBefore("X", "."), None, " Paris is lovely."),
    ('X in ["yes", "no", "maybe"]', T.In("X", ("yes", "no", "maybe")), None, "maybe"),
    ("X in [100 city names]", T.In("X", tuple(f" City{i} of Place{i}" for i in range(100))), None, " City42 of Place42"),
    ("INT(X)", T.Int("X"), None, " 12345"),
    ("[X: float]", None, float, " -3.25e10"),
    (r'REGEX(X, r"\d{4}-\d{2}-\d{2}")', T.Regex("X", r"\d{4}-\d{2}-\d{2}"), None, "2024-01-31"),
    (r'REGEX(X, r"[A-Z][a-z]+( [A-Z][a-z]+)*")', T.Regex("X", r"[A-Z][a-z]+( [A-Z][a-z]+)*"), None,
     "New York City"),
    ('REGEX(X, r"(?i)[a-zäöüß ]+")', T.Regex("X", r"(?i)[a-zäöüß ]+"), None, "Grüße aus Köln"),
    ('len(X) < 30 and not "e" in X', T.And((T.Compare(T.Length(X), "<", 30), T.Not(T.Contains("X", "e")))),
     None, " Pay Oslo now"),
    ('REGEX(X, r"[a-z ]+") and X != "no"', T.And((T.Regex("X", "[a-z ]+"), T.Compare(X, "!=", "no"))), None,
     " quiet harbour"),
    ("JSON(X, {name, age 0..120})", T.Json("X", {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"]}), None, '{"name":"Ada Lovelace","age":36}'),
    ("JSON(X, 10 fields)", T.Json("X", {"type": "object", "properties": {
        f"field{i}": {"type": ["string", "integer", "boolean"][i % 3]} for i in range(10)}}), None,
     '{"field0":"a","field1":2,"field2":true,"field3":"long text here","field4":42}'),
    ("JSON(X, array of objects, maxItems 8)", T.Json("X", {"type": "array", "maxItems": 8, "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "label": {"enum": ["a", "b", "c"]},
                                         "score": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["id"]}}), None, '[{"id":1,"label":"a","score":0.5},{"id":2,"score":1}]'),
    ("GRAMMAR(X, csv line) [DFA]", T.Grammar("X", 'start: field ("," field)*\nfield: /[A-Za-z0-9 .]+/\n'), None,
     "Ada Lovelace,London,36"),
    ("GRAMMAR(X, SQL SELECT) [DFA]", T.Grammar("X", SQL), None, "SELECT name, age FROM users WHERE age > 30;"),
    ("GRAMMAR(X, arithmetic) [llguidance]", T.Grammar("X", ARITH), None, "(12+3)*4-5/6"),
    ("GRAMMAR(X, arithmetic) and len(TOKENS(X)) < 40 [llguidance]",
     T.And((T.Grammar("X", ARITH), T.Compare(TOK, "<", 40))), None, "(12+3)*4-5/6"),
]


def load_tokenizer():
    try:
        from lmql_lite.models.transformers import default_tokenizer
        return default_tokenizer()
    except Exception:  # the default model is not installed: the development copy
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(os.environ.get("SMOLLM2_TOKENIZER", "/tmp/smollm2-tokenizer"))


def clear_caches() -> None:
    for fn in (regex.regex_dfa, automata.intersect, automata.union, automata.complement,
               holes._choices, holes._ordered, holes._char_length, holes.hole_automaton, json_schema._language,
               grammar.regular_language, grammar.lark_parser):
        fn.cache_clear()


def percentile(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    from lmql_lite.models.transformers import vocabulary_from_tokenizer

    tokenizer = load_tokenizer()
    vocabulary = vocabulary_from_tokenizer(tokenizer)
    t0 = time.perf_counter()
    index = TokenIndex(vocabulary)
    print(f"vocabulary: {len(vocabulary)} tokens, TokenIndex built in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    regex._category(r"\w")  # one-off Unicode table, computed at first use of \w
    t0 = time.perf_counter()
    grammar._tokenizer(index)  # llguidance's copy of the vocabulary: once per index, like the TokenIndex
    print(f"llguidance tokenizer built in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    logits = np.random.default_rng(0).standard_normal(len(vocabulary)).astype(np.float32)  # what Batch.step returns
    rows = []
    for label, term, hole_type, walk in CASES:
        clear_caches()  # a cold compile; the index keeps nothing of automata that are gone
        t0 = time.perf_counter()
        guide = compile_guide(term, "X", index, hole_type=hole_type)
        compile_ms = (time.perf_counter() - t0) * 1e3
        ids = tokenizer.encode(walk, add_special_tokens=False)
        new_state, cached, apply = [], [], []
        automaton = getattr(guide, "automaton", None)  # None: llguidance computes every state's mask anew
        for tok in ids + [None]:
            walks = len(index.cache(automaton)) if automaton is not None else -1
            t0 = time.perf_counter()
            mask = guide.allowed()
            if automaton is None or len(index.cache(automaton)) > walks:  # a state this index had not walked yet
                new_state.append(time.perf_counter() - t0)
            for _ in range(20):  # the same state again: a cache lookup
                t0 = time.perf_counter()
                mask = guide.allowed()
                t1 = time.perf_counter()
                t2 = time.perf_counter()
                decoders.masked(logits, mask)  # what the interpreter does: add the state's cached 0/-inf bias
                t3 = time.perf_counter()
                cached.append(t1 - t0)
                apply.append(t3 - t2)
            if tok is None or guide.is_finished():
                break
            assert mask[tok], (label, tokenizer.decode([tok]))
            guide.advance(tok)
        rows.append((label, compile_ms, percentile(new_state, 50) * 1e3, percentile(new_state, 99) * 1e3,
                     percentile(cached, 50) * 1e6,
                     percentile(cached, 99) * 1e6, percentile(apply, 50) * 1e6, percentile(apply, 99) * 1e6))
    header = ("constraint", "compile ms", "new state ms p50", "new state ms p99", "cached µs p50", "cached µs p99",
              "apply µs p50", "apply µs p99")
    width = max(len(r[0]) for r in rows)
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>16}" for h in header[1:]))
    for r in rows:
        print(f"{r[0]:<{width}}  " + "  ".join(f"{x:>16.2f}" for x in r[1:]))
    print("new state = allowed() in a state not walked before (the vectorised trie walk); cached = allowed() "
          "again;\napply = lmql_lite.decoders.masked(logits, mask): the state's cached 0/-inf bias added to (49152,) logits")
    print(f"median compile {statistics.median(r[1] for r in rows):.2f} ms, "
          f"median new state {statistics.median(r[2] for r in rows):.2f} ms, "
          f"worst cached+apply p50 {max(r[4] + r[6] for r in rows):.0f} µs")


if __name__ == "__main__":
    main()
