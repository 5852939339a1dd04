"""JSON holes: a JSON Schema, dataclass, pydantic model or typing type → the regular language of its JSON texts, and text → value.

The texts have json.dumps's layout, properties in the schema's order, `", "` between members and
`": "` after a key (`{"a": 1, "b": [2, 3]}`): the text between two values is forced (no forward
pass), and models write JSON this way (the compact layout steered a small model into `"tags":[]`
and into numbers that grew digit by digit). No other free whitespace, so a small model cannot loop
on newlines, and the language is a byte DFA like any regex: masks are exact and token budgets
close the value in time. Keywords are either compiled into the language exactly, or (where a regular language
cannot say it compactly) masked by a superset and checked on the value: number bounds that are
not integers, exclusive number bounds, bounds past 10**15 in size, `oneOf` (only one branch may
match), string lengths above 1000, item counts whose exact language would be large (more than
`ITEM_STATES` automaton states for the repeated items, such as 300 items of free JSON). Any
other keyword raises ConstraintError naming it; annotations are ignored.
"""
from __future__ import annotations

import builtins
import dataclasses
import enum
import functools
import json
import math
import re
import sys
import types
import typing
from typing import Any, Callable

from ..errors import ConstraintError
from . import automata
from .automata import Dfa
from .regex import Nfa, regex_dfa

ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "readOnly",
               "writeOnly", "deprecated", "$defs", "definitions"}
KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(), "null": set(),
    "array": {"items", "minItems", "maxItems"},
    "object": {"properties", "required", "additionalProperties"},
}
CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))'
PLAIN_CHARS = r'[^"\\\x00-\x1f]*'  # a string's content that needs no escape: its text is its value
NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
FORMATS = {
    "date": r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])",
    "time": r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})?",
    "date-time": r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                 r"(?:\.[0-9]+)?(?:Z|[+-][0-9]{2}:[0-9]{2})",
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
}
MAX_REPEAT = 1000  # longer string bounds are checked on the value
MAX_BOUND = 10 ** 15  # larger number bounds are checked on the value
ITEM_STATES = 20_000  # an item count whose items need more NFA states than this is checked on the value
ANY_DEPTH = 2      # free JSON (`{}`, `Any`, an object without properties) nests this deep


def is_json_type(tp: Any) -> bool:
    """Does a hole typed `tp` hold JSON (dataclass, pydantic model, enum, bool, list/dict/Union/Literal...)?"""
    return (dataclasses.is_dataclass(tp) and isinstance(tp, type)) or _is_pydantic(tp) \
        or (isinstance(tp, type) and issubclass(tp, enum.Enum)) or tp in (bool, list, dict) \
        or typing.get_origin(tp) is not None


@functools.lru_cache(maxsize=128)
def _language(key: Any) -> Dfa:
    schema = _schema_of(key) if not isinstance(key, str) else json.loads(key)
    return _Compiler(schema).dfa()


def language(spec: Any) -> Dfa:
    """The byte DFA of the JSON texts of `spec` (a schema dict or a JSON type)."""
    return _language(_key(spec))


def schema(spec: Any) -> dict:
    """The JSON schema `spec` stands for (a schema dict as given, a JSON type's derived one)."""
    key = _key(spec)
    return json.loads(key) if isinstance(key, str) else _schema_of(key)


def converter(spec: Any) -> Callable[[str], Any]:
    """text → value: the parsed, validated JSON, built into the class where `spec` is one."""
    key = _key(spec)
    schema = json.loads(key) if isinstance(key, str) else _schema_of(key)

    def convert(text: str) -> Any:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"{text!r} is not JSON: {e}") from None
        problem = validate(schema, obj)
        if problem:
            raise ConstraintError(f"{text!r} does not satisfy the schema: {problem}")
        return obj if isinstance(key, str) else build(key, obj)
    return convert


def _key(spec: Any) -> Any:
    if isinstance(spec, (dict, bool)):
        try:
            return json.dumps(spec)
        except TypeError as e:
            raise ConstraintError(f"a JSON schema must be JSON data: {e}") from None
        except ValueError:  # Python refuses to write integers of more than sys.get_int_max_str_digits() digits
            raise ConstraintError("a JSON schema's numbers must have at most "
                                  f"{sys.get_int_max_str_digits()} digits") from None
    if spec is None:
        return json.dumps({})
    if is_json_type(spec) or spec in (int, float, str):
        return spec
    raise ConstraintError(f"JSON(X, schema) needs a schema dict, a dataclass or a pydantic model, got {spec!r}")


# ---- schema → NFA → DFA ----------------------------------------------------------------------

class _Compiler:
    """Builds the NFA of a schema's compact JSON texts, fragment by fragment."""

    def __init__(self, root: Any):
        self.root, self.nfa, self.refs = root, Nfa(), []

    def dfa(self) -> Dfa:
        return self.nfa.determinize(*self.value(self.root))

    def value(self, schema: Any) -> tuple[int, int]:
        nfa = self.nfa
        if schema is True or schema == {}:
            return self.any(ANY_DEPTH)
        if schema is False or not isinstance(schema, dict):
            raise ConstraintError(f"unsupported schema {schema!r}")
        keys = set(schema) - ANNOTATIONS
        if "$ref" in schema:
            _only(schema, {"$ref"})
            return self.ref(schema["$ref"])
        for name in ("const", "enum"):
            if name in schema:
                _only(schema, {name, "type"})
                options = [schema["const"]] if name == "const" else schema["enum"]
                if not isinstance(options, list) or not options:
                    raise ConstraintError(f"`enum` needs a non-empty list, got {options!r}")
                return nfa.either([self.constant(o) for o in options])
        for name in ("anyOf", "oneOf", "allOf"):
            if name in schema:
                _only(schema, {name})
                branches = schema[name]
                if name == "allOf":
                    if len(branches) != 1:
                        raise ConstraintError("`allOf` with more than one schema is not supported")
                    return self.value(branches[0])
                return nfa.either([self.value(b) for b in branches])
        kind = schema.get("type")
        if kind is None:
            kind = "object" if keys & {"properties", "additionalProperties", "required"} else \
                "array" if keys & {"items", "minItems", "maxItems"} else None
            if kind is None:
                _only(schema, set())
                return self.any(ANY_DEPTH)
        kinds = kind if isinstance(kind, list) else [kind]
        bad = [k for k in kinds if k not in KEYWORDS]
        if bad:
            raise ConstraintError(f"unsupported JSON type {bad[0]!r}")
        _only(schema, {"type"}.union(*(KEYWORDS[k] for k in kinds)))
        return nfa.either([getattr(self, k)({n: v for n, v in schema.items() if n in KEYWORDS[k]})
                           for k in kinds])

    def ref(self, ref: str) -> tuple[int, int]:
        m = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref)
        if not m or m.group(2) not in self.root.get(m.group(1), {}):
            raise ConstraintError(f"unsupported or unknown $ref {ref!r} (only #/$defs/Name)")
        if ref in self.refs:
            raise ConstraintError(f"recursive schemas are not supported ({ref} refers to itself)")
        self.refs.append(ref)
        try:
            return self.value(self.root[m.group(1)][m.group(2)])
        finally:
            self.refs.pop()

    def string(self, s: dict) -> tuple[int, int]:
        lo, hi = _count(s, "minLength", 0), _count(s, "maxLength", None)
        if hi is not None and hi > MAX_REPEAT:
            hi = None  # checked on the value
        if lo > MAX_REPEAT:
            lo = 0  # checked on the value
        if "pattern" not in s and "format" not in s:
            return self.nfa.embed(regex_dfa(f'"{CHAR}{{{lo},{"" if hi is None else hi}}}"'))
        if "format" in s and s["format"] not in FORMATS:
            raise ConstraintError(f"string format {s['format']!r} is not supported (supported: {', '.join(FORMATS)})")
        content = regex_dfa(PLAIN_CHARS)
        if "format" in s:
            content = automata.intersect(content, regex_dfa(FORMATS[s["format"]]))
        if "pattern" in s:  # JSON Schema patterns search; ^ and $ anchor
            p = s["pattern"]
            head = "" if p.startswith("^") else "(?s:.*)"
            tail = "" if p.endswith("$") and not p.endswith("\\$") else "(?s:.*)"
            content = automata.intersect(content, regex_dfa(f"{head}(?:{p.lstrip('^')}){tail}"))
        if lo or hi is not None:
            content = automata.intersect(content, automata.char_length(
                lambda n: lo <= n and (hi is None or n <= hi), min(max(lo, hi or 0) + 1, MAX_REPEAT + 1)))
        if content.empty:
            raise ConstraintError(f"no string satisfies {s}")
        quote = self.nfa.literal(b'"')
        return self.nfa.chain(quote, self.nfa.embed(content), self.nfa.literal(b'"'))

    def integer(self, s: dict) -> tuple[int, int]:
        lo, hi = _bounds(s, integer=True)
        if lo is not None and hi is not None and lo > hi:
            raise ConstraintError(f"no integer satisfies {s}")
        return self.nfa.embed(regex_dfa(integer_range(lo, hi)))

    def number(self, s: dict) -> tuple[int, int]:
        lo, hi = _bounds(s, integer=False)
        if lo is None and hi is None:
            return self.nfa.embed(regex_dfa(NUMBER))
        # integer hull of the bounds, no exponent; a non-integer or exclusive bound is checked on the value
        lo = None if lo is None else math.floor(lo)
        hi = None if hi is None else math.ceil(hi)
        parts = []
        if hi is None or hi >= 0:
            parts.append(_magnitudes(max(lo or 0, 0), hi))
        if lo is None or lo < 0:
            parts.append("-(?:" + _magnitudes(max(-hi, 0) if hi is not None else 0, None if lo is None else -lo) + ")")
        return self.nfa.embed(regex_dfa("|".join(f"(?:{p})" for p in parts)))

    def boolean(self, s: dict) -> tuple[int, int]:
        return self.nfa.pattern("true|false")

    def null(self, s: dict) -> tuple[int, int]:
        return self.nfa.literal(b"null")

    def array(self, s: dict, item=None, brackets: bytes = b"[]") -> tuple[int, int]:
        nfa = self.nfa
        lo, hi = _count(s, "minItems", 0), _count(s, "maxItems", None)
        if hi is not None and lo > hi:
            raise ConstraintError(f"no array satisfies {s}")
        item = item or (lambda: self.value(s.get("items", True)))
        start, close = nfa.literal(brackets[:1]), nfa.literal(brackets[1:])
        before = len(nfa.eps)
        first = item()
        if max(lo, hi or 0) * (len(nfa.eps) - before) > ITEM_STATES:
            lo, hi = min(lo, 1), None  # the exact count would be a large automaton: checked on the value
        end = start[1]
        if lo == 0:
            nfa.eps[end].append(close[0])
        for k in range(1, (hi if hi is not None else max(lo, 1)) + 1):
            parts = (first,) if k == 1 else (self.separator(b","), item())
            end = nfa.chain((end, end), *parts)[1]
            if k >= lo:
                nfa.eps[end].append(close[0])
        if hi is None:  # more items, any number of them
            loop = nfa.chain(self.separator(b","), item())
            nfa.eps[end].append(loop[0])
            nfa.eps[loop[1]].append(loop[0])
            nfa.eps[loop[1]].append(close[0])
        return start[0], close[1]

    def object(self, s: dict) -> tuple[int, int]:
        nfa = self.nfa
        props = s.get("properties", {})
        required = set(s.get("required", []))
        missing = required - set(props)
        if missing:
            raise ConstraintError(f"required properties {sorted(missing)} have no schema in `properties`")
        if not props:
            extra = s.get("additionalProperties", True)
            if extra is False:
                return nfa.literal(b"{}")
            return self.members(lambda: self.value(extra))
        # none[i] / some[i]: before property i, with no / some property written; each optional
        # property may be skipped (extra properties are never written: that is always valid)
        none = [nfa.state() for _ in range(len(props) + 1)]
        some = [nfa.state() for _ in range(len(props) + 1)]
        for i, (name, sub) in enumerate(props.items()):
            key = dumps(name).encode()
            value = self.value(sub)
            nfa.chain((none[i], none[i]), nfa.literal(key), self.separator(b":"), value)
            nfa.chain((some[i], some[i]), self.separator(b","), nfa.literal(key), self.separator(b":"), value)
            nfa.eps[value[1]].append(some[i + 1])
            if name not in required:
                nfa.eps[none[i]].append(none[i + 1])
                nfa.eps[some[i]].append(some[i + 1])
        start, close = nfa.literal(b"{"), nfa.literal(b"}")
        nfa.chain(start, (none[0], none[0]))
        nfa.eps[none[-1]].append(close[0])
        nfa.eps[some[-1]].append(close[0])
        return start[0], close[1]

    def constant(self, obj: Any) -> tuple[int, int]:
        """One JSON value as text, its separators laid out as elsewhere."""
        nfa = self.nfa
        if isinstance(obj, (list, dict)):
            items = list(obj.items()) if isinstance(obj, dict) else [(None, x) for x in obj]
            parts = [nfa.literal(b"[" if isinstance(obj, list) else b"{")]
            for i, (k, x) in enumerate(items):
                if i:
                    parts.append(self.separator(b","))
                if isinstance(obj, dict):
                    parts += [nfa.literal(dumps(k).encode()), self.separator(b":")]
                parts.append(self.constant(x))
            parts.append(nfa.literal(b"]" if isinstance(obj, list) else b"}"))
            return nfa.chain(*parts)
        return nfa.literal(dumps(obj).encode())

    def separator(self, mark: bytes) -> tuple[int, int]:
        """`mark` ("," or ":") between members, and the space json.dumps writes after it."""
        return self.nfa.literal(mark + b" ")

    def members(self, value: Callable[[], tuple[int, int]]) -> tuple[int, int]:
        """An object with any string keys: {"k": v, ...}."""
        key = lambda: self.nfa.chain(self.nfa.embed(regex_dfa(f'"{CHAR}*"')), self.separator(b":"), value())
        return self.array({}, key, b"{}")

    def any(self, depth: int) -> tuple[int, int]:
        nfa = self.nfa
        options = [self.string({}), self.number({}), self.boolean({}), self.null({})]
        if depth > 0:
            options.append(self.array({}, lambda: self.any(depth - 1)))
            options.append(self.members(lambda: self.any(depth - 1)))
        return nfa.either(options)


def _only(schema: dict, allowed: set) -> None:
    extra = sorted(set(schema) - ANNOTATIONS - allowed)
    if extra:
        raise ConstraintError(f"JSON schema keyword{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} "
                              f"not supported here (in {json.dumps(schema)[:120]})")


def dumps(obj: Any) -> str:
    """The compact layout of enum and const values in JSON holes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _count(s: dict, name: str, default: int | None) -> int | None:
    """A length or item count keyword: a non-negative integer."""
    value = s.get(name, default)
    if value is not default and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ConstraintError(f"`{name}` needs a non-negative integer, got {value!r}")
    return value


def _bounds(s: dict, integer: bool) -> tuple[Any, Any]:
    """The mask's (lo, hi) for a number schema; bounds past MAX_BOUND are left to the check on the value."""
    for name in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if name in s and (isinstance(s[name], bool) or not isinstance(s[name], (int, float))
                          or isinstance(s[name], float) and not math.isfinite(s[name])):
            raise ConstraintError(f"`{name}` needs a finite number, got {s[name]!r}")
    s = {name: x for name, x in s.items() if not (isinstance(x, (int, float)) and abs(x) > MAX_BOUND)}
    lo, hi = s.get("minimum"), s.get("maximum")
    if "exclusiveMinimum" in s:
        x = s["exclusiveMinimum"]
        x = math.floor(x) + 1 if integer else x
        lo = x if lo is None else max(lo, x)
    if "exclusiveMaximum" in s:
        x = s["exclusiveMaximum"]
        x = math.ceil(x) - 1 if integer else x
        hi = x if hi is None else min(hi, x)
    if integer:
        lo = None if lo is None else math.ceil(lo)
        hi = None if hi is None else math.floor(hi)
    return lo, hi


def integer_range(lo: int | None, hi: int | None) -> str:
    """A regex for the JSON integers in [lo, hi] (None: unbounded), no leading zeros, no -0."""
    parts = []
    if hi is None or hi >= 0:
        parts.append(_naturals(max(lo or 0, 0), hi))
    if lo is None or lo < 0:
        parts.append("-(?:" + _naturals(max(1, -hi if hi is not None else 1), None if lo is None else -lo) + ")")
    return "|".join(f"(?:{p})" for p in parts)


def _magnitudes(lo: int, hi: int | None) -> str:
    """Decimal numbers (no exponent) between the integers lo and hi (None: unbounded)."""
    fraction = r"(?:\.[0-9]+)?"
    if hi is None:
        return f"(?:{_naturals(lo, None)}){fraction}"
    parts = [f"{hi}(?:\\.0+)?"]
    if hi - 1 >= lo:
        parts.insert(0, f"(?:{_naturals(lo, hi - 1)}){fraction}")
    return "|".join(f"(?:{p})" for p in parts)


def _naturals(lo: int, hi: int | None) -> str:
    """A regex for the decimal naturals in [lo, hi] (None: unbounded), without leading zeros."""
    if hi is None:
        width = len(str(lo))
        return f"{_naturals(lo, 10 ** width - 1)}|[1-9][0-9]{{{width},}}"
    parts = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (width - 1) if width > 1 else 0), min(hi, 10 ** width - 1)
        if a <= b:
            parts.append(_same_width(str(a), str(b)))
    return "|".join(parts)


def _same_width(a: str, b: str) -> str:
    if len(a) == 1:
        return f"[{a}-{b}]"
    if a[0] == b[0]:
        return a[0] + f"(?:{_same_width(a[1:], b[1:])})"
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return f"[{a[0]}-{b[0]}][0-9]{{{rest}}}"
    parts = [a[0] + f"(?:{_same_width(a[1:], '9' * rest)})"]
    if int(b[0]) - int(a[0]) > 1:
        parts.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}][0-9]{{{rest}}}")
    parts.append(b[0] + f"(?:{_same_width('0' * rest, b[1:])})")
    return "|".join(parts)


# ---- validation of parsed values (the exact check behind the mask's approximations) -----------

def validate(schema: Any, value: Any, root: Any = None) -> str | None:
    """Why `value` does not satisfy `schema` (the keywords above), or None."""
    root = schema if root is None else root
    if schema is True or schema == {} or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        group, name = schema["$ref"].split("/")[1:]
        return validate(root[group][name], value, root)
    if "const" in schema and not _same(value, schema["const"]):
        return f"{value!r} is not {schema['const']!r}"
    if "enum" in schema and not any(_same(value, o) for o in schema["enum"]):
        return f"{value!r} is not one of {schema['enum']!r}"
    if "anyOf" in schema or "allOf" in schema:
        problems = [validate(b, value, root) for b in schema.get("anyOf", schema.get("allOf"))]
        bad = all(problems) if "anyOf" in schema else any(problems)
        return f"{value!r} fits none of the alternatives" if bad else None
    if "oneOf" in schema:
        fits = sum(validate(b, value, root) is None for b in schema["oneOf"])
        return None if fits == 1 else f"{value!r} fits {fits} of the oneOf alternatives, not exactly one"
    kinds = schema.get("type")
    if kinds is None:
        return None
    kinds = kinds if isinstance(kinds, list) else [kinds]
    for kind in kinds:
        if _is_kind(value, kind) and not _check_kind(schema, kind, value, root):
            return None
    first = next((k for k in kinds if _is_kind(value, k)), None)
    return _check_kind(schema, first, value, root) if first else f"{value!r} is not of type {'/'.join(kinds)}"


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (_is_kind(a, "number") and _is_kind(b, "number") and a == b)


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"string": str, "boolean": bool, "null": type(None), "array": list,
                              "object": dict}[kind])


def _check_kind(s: dict, kind: str, v: Any, root: Any) -> str | None:
    if kind == "string":
        if len(v) < s.get("minLength", 0) or len(v) > s.get("maxLength", math.inf):
            return f"{v!r} has {len(v)} characters, outside [{s.get('minLength', 0)}, {s.get('maxLength', 'inf')}]"
        if "pattern" in s and not re.search(s["pattern"], v):
            return f"{v!r} does not match {s['pattern']!r}"
        if "format" in s and not re.fullmatch(FORMATS[s["format"]], v):
            return f"{v!r} is not a {s['format']}"
    elif kind in ("integer", "number"):
        checks = [("minimum", v >= s.get("minimum", -math.inf)), ("maximum", v <= s.get("maximum", math.inf)),
                  ("exclusiveMinimum", v > s.get("exclusiveMinimum", -math.inf)),
                  ("exclusiveMaximum", v < s.get("exclusiveMaximum", math.inf))]
        bad = [name for name, ok in checks if not ok]
        if bad:
            return f"{v!r} breaks {bad[0]}={s[bad[0]]!r}"
    elif kind == "array":
        if not s.get("minItems", 0) <= len(v) <= s.get("maxItems", math.inf):
            return f"{len(v)} items, outside [{s.get('minItems', 0)}, {s.get('maxItems', 'inf')}]"
        return next((p for p in (validate(s.get("items", True), x, root) for x in v) if p), None)
    elif kind == "object":
        props = s.get("properties", {})
        missing = [k for k in s.get("required", []) if k not in v]
        if missing:
            return f"missing required property {missing[0]!r}"
        for k, x in v.items():
            sub = props.get(k, s.get("additionalProperties", True))
            if sub is False:
                return f"unexpected property {k!r}"
            problem = validate(sub, x, root)
            if problem:
                return f"{k}: {problem}"
    return None


# ---- Python types → schemas, and parsed JSON → instances -------------------------------------

def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") and hasattr(tp, "model_validate")


def _schema_of(tp: Any, seen: tuple = ()) -> dict:
    """The JSON schema of a Python type."""
    if tp in seen:
        raise ConstraintError(f"recursive types are not supported ({getattr(tp, '__name__', tp)})")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return {}
    if tp in (str, int, float, bool, type(None)):
        return {"type": {str: "string", int: "integer", float: "number", bool: "boolean",
                         type(None): "null"}[tp]}
    if _is_pydantic(tp):
        return tp.model_json_schema()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        fields = [f for f in dataclasses.fields(tp) if f.init]
        props = {}
        for f in fields:
            sub = _schema_of(hints[f.name], seen + (tp,))
            if "$defs" in sub:
                raise ConstraintError(f"{tp.__name__}.{f.name}: a pydantic model inside a dataclass is not supported")
            props[f.name] = sub
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        return {"type": "object", "properties": props, "required": required}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(a, seen) for a in args]}
    if origin in (list, tuple) or tp in (list, tuple) or origin is typing.Sequence:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise ConstraintError("only tuple[X, ...] is supported among tuple types")
        return {"type": "array", "items": _schema_of(args[0], seen) if args else {}}
    if origin is dict or tp is dict:
        if args and args[0] is not str:
            raise ConstraintError("JSON object keys are strings: use dict[str, ...]")
        return {"type": "object", "additionalProperties": _schema_of(args[1], seen) if args else {}}
    raise ConstraintError(f"{getattr(tp, '__name__', tp)} cannot be written as JSON "
                          "(supported: dataclasses, pydantic models, enums, str/int/float/bool/None, "
                          "Optional, Union, Literal, list[...], dict[str, ...], tuple[X, ...])")


def _hints(tp: type) -> dict[str, Any]:
    """A dataclass's field types. Inside a query annotations are strings and the query's own names are out of
    reach, so they resolve among typing's names, builtins and the class's module."""
    try:
        return typing.get_type_hints(tp)
    except NameError:
        names = {**vars(builtins), **vars(typing), **vars(sys.modules.get(tp.__module__, typing))}
        hints = {}
        for f in dataclasses.fields(tp):
            try:
                hints[f.name] = eval(f.type, names) if isinstance(f.type, str) else f.type
            except Exception:
                raise ConstraintError(f"{tp.__name__}.{f.name}: the type {f.type!r} cannot be resolved "
                                      "(define the class at module level)") from None
        return hints


def build(tp: Any, obj: Any) -> Any:
    """The instance of `tp` that the parsed JSON `obj` describes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_pydantic(tp):
        try:
            return tp.model_validate(obj)
        except Exception as e:
            raise ConstraintError(f"{obj!r} is not a valid {tp.__name__}: {e}") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(obj)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        return tp(**{k: build(hints[k], v) for k, v in obj.items()})
    if tp is float:
        return float(obj)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if validate(_schema_of(a), obj) is None:
                return build(a, obj)
    if origin in (list, tuple, typing.Sequence) and args:
        items = [build(args[0], x) for x in obj]
        return tuple(items) if origin is tuple else items
    if origin is dict and args:
        return {k: build(args[1], v) for k, v in obj.items()}
    return obj
