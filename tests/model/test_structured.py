"""JSON, dataclass and grammar holes on the real default model: every value parses and validates."""
from __future__ import annotations

import jsonschema
import lark
import pytest

import lmql_lite

pytestmark = pytest.mark.model

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}}, "required": ["name", "age"]},
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 15},
                                      "coastal": {"type": "boolean"}}, "required": ["city", "coastal"]},
    {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 2, "maxItems": 3},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}, "required": ["color", "hex"]},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 30},
                                      "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                                      "rating": {"type": "number", "minimum": 0, "maximum": 10}}, "required": ["title", "year"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1}, "email": {"type": ["string", "null"], "maxLength": 30}},
        "required": ["id", "email"]}}, "required": ["user"]},
    {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
        "item": {"type": "string", "maxLength": 10}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["item", "qty"]}},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 100}, {"type": "null"}]},
    {"type": "object", "properties": {"date": {"type": "string", "format": "date"},
                                      "event": {"type": "string", "maxLength": 20}}, "required": ["date", "event"]},
    {"$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                                          "y": {"type": "integer", "minimum": -9, "maximum": 9}},
                         "required": ["x", "y"]}},
     "type": "object", "properties": {"start": {"$ref": "#/$defs/Point"}, "end": {"$ref": "#/$defs/Point"}},
     "required": ["start", "end"]},
    {"const": "ok"},
]

QUERY = '''argmax
"Answer with JSON only.\\nQ: {question}\\nA: [X]" where JSON(X, schema) and len(TOKENS(X)) < 40
return X
'''


@pytest.mark.parametrize("schema", SCHEMAS, ids=range(len(SCHEMAS)))
def test_json_values_validate(default_model, schema):
    value = lmql_lite.run(QUERY, model=default_model, schema=schema, question="Describe an example record.").value
    jsonschema.validate(value, schema)


def test_a_dataclass_hole_is_an_instance(default_model):
    source = '''argmax
from dataclasses import dataclass
from typing import Optional

@dataclass
class City:
    name: str
    country: str
    population: Optional[int] = None

"The capital of France as JSON: [C: City]" where len(TOKENS(C)) < 40
return C
'''
    value = lmql_lite.run(source, model=default_model).value
    assert type(value).__name__ == "City" and isinstance(value.name, str) and isinstance(value.country, str)


ARITH = r"""
?start: sum
?sum: product | sum "+" product | sum "-" product
?product: atom | product "*" atom | product "/" atom
?atom: NUMBER | "(" sum ")"
%import common.NUMBER
"""
CSV = r"""
start: field ("," field)*
field: /[A-Za-z0-9 .]+/
"""
SQL = r"""
start: "SELECT " columns " FROM " NAME (" WHERE " NAME " " OP " " value)? ";"
columns: "*" | NAME (", " NAME)*
OP: "=" | "<" | ">"
value: INT | "'" /[A-Za-z ]+/ "'"
NAME: /[a-z_][a-z0-9_]*/
%import common.INT
"""
GRAMMARS = [
    (ARITH, "Write an arithmetic expression that equals 10: "),
    (CSV, "A CSV line with a name, a city and an age: "),
    (SQL, "SQL to list the names of users older than 30: "),
]


@pytest.mark.parametrize("grammar, prompt", GRAMMARS, ids=["arithmetic", "csv", "sql"])
def test_grammar_values_parse(default_model, grammar, prompt):
    source = 'argmax\n"{prompt}[X]" where GRAMMAR(X, grammar) and len(TOKENS(X)) < 25\nreturn X\n'
    value = lmql_lite.run(source, model=default_model, grammar=grammar, prompt=prompt).value
    lark.Lark(grammar).parse(value)
