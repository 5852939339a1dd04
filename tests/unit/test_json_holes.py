"""JSON holes: masks equal a brute-force oracle, values are the parsed (and built) objects, unsupported schemas are refused.

The oracle knows nothing of automata: it lists every value of a small schema (plain recursion),
keeps those `jsonschema` validates, writes each as json.dumps does (its member order, ", " and ": "
as separators), spells every text in every tokenization within the budget, and allows exactly
the tokens that continue some such spelling.
"""
from __future__ import annotations

import enum
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import List, Literal, Optional

import jsonschema
import numpy as np
import pytest

from lmql_lite.constraints import compile_guide, json_schema
from lmql_lite.constraints import terms as T
from lmql_lite.errors import ConstraintError
from lmql_lite.index import TokenIndex, Vocabulary

EOS, SPECIAL = 0, 1
WORDS = ["{", "}", "[", "]", '"', ":", ",", "-", ".", " ", "\n", "0", "1", "2", "3", "a", "b", "é", "e", "f", "l", "n",
         "r", "s", "t", "u", '{"', '":', '",', '"a"', "true", "null", "1,", "],", '"}', "é\"", "12"]
TOKENS = (b"", b"") + tuple(w.encode() for w in WORDS) + (b"\xc3", b"\xa9")  # é split across two tokens too
VOCAB = Vocabulary(TOKENS, eos_ids=frozenset({EOS}), special_ids=frozenset({EOS, SPECIAL}))
INDEX = TokenIndex(VOCAB)
ALPHABET = sorted({c for w in WORDS for c in w} - {'"', "\n"})  # the characters strings can hold here

BOOL = {"type": "boolean"}
SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 2}
SCHEMAS = [  # (schema, token budget or None)
    (BOOL, None),
    ({"type": "null"}, None),
    ({"enum": ["a", 1, None]}, None),
    ({"const": {"a": [1]}}, None),
    ({"type": "integer", "minimum": -3, "maximum": 12}, None),
    ({"type": "integer", "exclusiveMinimum": 9, "maximum": 31}, None),
    ({"type": "string", "maxLength": 2}, None),
    ({"type": "string", "minLength": 1, "maxLength": 2, "pattern": "^a"}, None),
    ({"type": "string", "maxLength": 2, "pattern": "b"}, None),
    ({"type": "array", "items": BOOL, "maxItems": 2}, None),
    ({"type": "array", "items": SMALL_INT, "minItems": 1, "maxItems": 3}, 6),
    ({"type": "object", "properties": {"a": SMALL_INT, "b": BOOL}, "required": ["a"]}, None),
    ({"type": "object", "properties": {"a": BOOL, "b": {"type": "null"}, "e": SMALL_INT}}, 9),
    ({"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 0, "maximum": 3}]}, None),
    ({"type": ["integer", "null"], "minimum": 1, "maximum": 2}, None),
    ({"$defs": {"N": {"enum": [1, 2]}}, "type": "object", "properties": {"a": {"$ref": "#/$defs/N"},
     "b": {"type": "array", "items": {"$ref": "#/$defs/N"}, "maxItems": 2}}, "required": ["a", "b"]}, None),
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "null"}},
     "required": ["b"]}}, "required": ["a"]}, None),
    ({"type": "integer", "minimum": 0}, 2),  # unbounded: the budget bounds the oracle
    ({"type": "string"}, 2),
]


def values(schema, root=None):
    """Every value of a small schema (finite: bounded ints, short strings, bounded arrays)."""
    root = root or schema
    if "$ref" in schema:
        return values(root["$defs"][schema["$ref"].split("/")[-1]], root)
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    if "anyOf" in schema:
        return [v for s in schema["anyOf"] for v in values(s, root)]
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    out = []
    for kind in kinds:
        if kind == "boolean":
            out += [True, False]
        elif kind == "null":
            out.append(None)
        elif kind == "integer":
            out += list(range(schema.get("minimum", -12), schema.get("maximum", 1299) + 1))
        elif kind == "string":
            out += ["".join(p) for n in range(schema.get("maxLength", 2) + 1) for p in itertools.product(ALPHABET, repeat=n)]
        elif kind == "array":
            item = values(schema["items"], root)
            out += [list(p) for n in range(schema.get("maxItems", 3) + 1) for p in itertools.product(item, repeat=n)]
        elif kind == "object":
            names = list(schema["properties"])
            for keep in itertools.product([False, True], repeat=len(names)):
                chosen = [n for n, k in zip(names, keep) if k]
                for combo in itertools.product(*(values(schema["properties"][n], root) for n in chosen)):
                    out.append(dict(zip(chosen, combo)))
    return out


def valid_texts(schema) -> set[bytes]:
    out = set()
    for v in values(schema):
        try:
            jsonschema.validate(v, schema)
        except jsonschema.ValidationError:
            continue
        out.add(json.dumps(v, ensure_ascii=False).encode())
    return out


class Oracle:
    """Valid token sequences (every spelling of every valid text, within the budget) as a prefix tree."""

    def __init__(self, texts: set[bytes], budget: int | None):
        self.next: dict[tuple, set[int]] = {}
        for text in texts:
            self._spell(text, (), budget)

    def _spell(self, rest: bytes, seq: tuple, budget) -> bool:
        """Record the spellings of `rest` after `seq`; False if none fits the budget."""
        if budget is not None and len(seq) > budget:
            return False
        if not rest:
            self.next.setdefault(seq, set()).add(EOS)
            return True
        fits = False
        for i, t in enumerate(TOKENS):
            if t and i not in VOCAB.special_ids and rest.startswith(t) and self._spell(rest[len(t):], seq + (i,), budget):
                self.next.setdefault(seq, set()).add(i)
                fits = True
        return fits


@pytest.mark.parametrize("schema, budget", SCHEMAS, ids=[json.dumps(s)[:60] for s, _ in SCHEMAS])
def test_masks_equal_the_oracle(schema, budget):
    term = T.Json("X", schema)
    if budget is not None:
        term = T.And((term, T.Compare(T.Length(T.Tokens("X")), "<=", budget)))
    oracle = Oracle(valid_texts(schema), budget)
    visited = 0
    stack = [((), compile_guide(term, "X", INDEX))]
    while stack:  # every prefix of every valid spelling
        prefix, guide = stack.pop()
        if guide.is_finished():
            assert oracle.next[prefix] <= {EOS}, (prefix, oracle.next[prefix])
            continue
        allowed = set(np.flatnonzero(guide.allowed()).tolist())
        assert allowed == oracle.next[prefix], (bytes(b"".join(TOKENS[i] for i in prefix)),
                                                 sorted(TOKENS[i] for i in allowed ^ oracle.next[prefix]))
        visited += 1
        for tok in allowed - {EOS}:
            child = guide.copy()
            child.advance(tok)
            stack.append((prefix + (tok,), child))
    assert visited > 1


# ---- values -------------------------------------------------------------------------------

class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclass
class Address:
    city: str
    zip: Optional[str] = None


@dataclass
class Person:
    name: str
    age: int
    tags: List[str]
    color: Color
    kind: Literal["a", "b"]
    home: Address
    score: float = 0.0
    pets: list[Address] = field(default_factory=list)


def write(term, text: str, hole_type=None):
    """Decode `text` byte by byte (each byte is a token of the test vocabulary where it exists), then EOS."""
    guide = compile_guide(term, "X", BYTE_INDEX, hole_type=hole_type)
    for b in text.encode():
        assert guide.allowed()[b + 2], (text, bytes([b]))
        guide.advance(b + 2)
    if not guide.is_finished():
        guide.advance(EOS)
    return guide.value()


BYTE_INDEX = TokenIndex(Vocabulary((b"", b"") + tuple(bytes([b]) for b in range(256)), eos_ids=frozenset({EOS}),
                                   special_ids=frozenset({EOS, SPECIAL})))


def test_a_dataclass_hole_builds_the_instance():
    text = ('{"name": "Ada", "age": 36, "tags": ["x"], "color": "red", "kind": "b", "home": {"city": "Oslo"}, '
            '"pets": [{"city": "Rome", "zip": "1"}]}')
    value = write(None, text, hole_type=Person)
    assert value == Person("Ada", 36, ["x"], Color.RED, "b", Address("Oslo"), pets=[Address("Rome", "1")])


def test_a_pydantic_hole_builds_the_model():
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        name: str
        price: float
        color: Optional[Color] = None

    class Order(pydantic.BaseModel):
        items: List[Item]
        note: Optional[str] = None

    value = write(None, '{"items": [{"name": "pen", "price": 1.5, "color": "green"}]}', hole_type=Order)
    assert value == Order(items=[Item(name="pen", price=1.5, color=Color.GREEN)])


@pytest.mark.parametrize("hole_type, text, expected", [
    (list[int], "[1, -2]", [1, -2]),
    (dict[str, bool], '{"a": true}', {"a": True}),
    (Optional[Color], "null", None),
    (Literal["x", 3], "3", 3),
    (bool, "false", False),
])
def test_typing_types_are_json_holes(hole_type, text, expected):
    assert write(None, text, hole_type=hole_type) == expected


def test_a_schema_hole_is_the_parsed_object():
    assert write(T.Json("X", {"type": "object", "properties": {"n": {"type": "number"}}}), '{"n": 2.5e3}') == {"n": 2500.0}


def test_layout_is_json_dumps_and_forced_between_values():
    guide = compile_guide(T.Json("X", {"type": "object", "properties": {"a": BOOL, "b": BOOL}, "required": ["a"]}),
                          "X", BYTE_INDEX)
    guide.advance(ord("{") + 2)
    assert not guide.allowed()[ord(" ") + 2] and not guide.allowed()[ord("\n") + 2]
    assert guide.forced() == b'"a": '
    for b in b'"a": true':
        guide.advance(b + 2)
    assert guide.allowed()[ord(",") + 2] and guide.allowed()[ord("}") + 2]
    guide.advance(ord(",") + 2)
    assert guide.forced() == b' "b": '


@pytest.mark.parametrize("bound, text", [({"maximum": 0.5}, "0.7"), ({"exclusiveMinimum": 1}, "1.0"),
                                         ({"minimum": -1.5}, "-1.7")])
def test_number_bounds_the_mask_cannot_say_are_checked_on_the_value(bound, text):
    with pytest.raises(ConstraintError, match="minimum|maximum|exclusive"):
        write(T.Json("X", {"type": "number", **bound}), text)


def test_number_bounds_with_integer_values_are_masked_exactly():
    dfa = json_schema.language({"type": "number", "minimum": -2, "maximum": 3})
    for text in ["-2", "-1.99", "0", "0.5", "3", "3.000", "-0.0"]:
        assert dfa.accepts(text.encode()), text
    for text in ["-2.1", "3.01", "4", "1e2", "-3"]:
        assert not dfa.accepts(text.encode()), text


@pytest.mark.parametrize("schema, named", [
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "patternProperties": {"a": {}}}, "patternProperties"),
    ({"type": "string", "format": "email"}, "email"),
    ({"type": "string", "maxLength": 3, "contentEncoding": "base64"}, "contentEncoding"),
    ({"allOf": [{"type": "string"}, {"maxLength": 2}]}, "allOf"),
    ({"$defs": {"A": {"type": "array", "items": {"$ref": "#/$defs/A"}}}, "$ref": "#/$defs/A"}, "recursive"),
    ({"type": "tuple"}, "tuple"),
])
def test_unsupported_schemas_are_refused_by_name(schema, named):
    with pytest.raises(ConstraintError, match=re.escape(named)):
        compile_guide(T.Json("X", schema), "X", INDEX)


def test_unsupported_python_types_are_refused():
    with pytest.raises(ConstraintError, match="cannot be written as JSON"):
        compile_guide(None, "X", INDEX, hole_type=set[int])


def test_a_budget_closes_the_json_in_time():
    schema = {"type": "array", "items": {"type": "string"}}
    guide = compile_guide(T.And((T.Json("X", schema), T.Compare(T.Length(T.Tokens("X")), "<", 8))), "X", BYTE_INDEX)
    while not guide.is_finished():  # a "model" that always wants one more "a"
        mask = guide.allowed()
        tok = next(t for t in [ord("a") + 2, ord('"') + 2, ord(",") + 2, EOS] + list(np.flatnonzero(mask)) if mask[t])
        guide.advance(tok)
    assert json.loads(guide.text()) == guide.value() and guide.tokens_used < 8


def test_a_budget_too_small_for_any_value_is_an_error():
    with pytest.raises(ConstraintError, match="can never"):
        compile_guide(T.And((T.Json("X", {"type": "object", "properties": {"name": BOOL}, "required": ["name"]}),
                             T.Compare(T.Length(T.Tokens("X")), "<", 5))), "X", BYTE_INDEX)


TYPICAL = [
    {"type": "object", "properties": {f"field{i}": {"type": ["string", "integer", "boolean"][i % 3]} for i in range(10)},
     "required": [f"field{i}" for i in range(0, 10, 2)]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string",
                                                                                       "pattern": "^[0-9]{5}$"}}}}}}},
    {"type": "array", "maxItems": 8, "items": {"type": "object", "properties": {
        "id": {"type": "integer"}, "label": {"enum": ["a", "b", "c"]}, "score": {"type": "number", "minimum": 0,
                                                                               "maximum": 1}}, "required": ["id"]}},
    Person,
]


@pytest.mark.parametrize("spec", TYPICAL, ids=["10 fields", "nested", "array of objects", "dataclass"])
def test_typical_schemas_stay_small(spec):
    assert len(json_schema.language(spec)) < 2000
