"""Query text → `nodes.Query`: the Lark grammar for the statements, a small scanner for prompt strings."""
from __future__ import annotations

import ast
import bisect
import dataclasses
import difflib
import functools
import hashlib
import importlib.resources
import io
import keyword
import re
import threading
import tokenize
import warnings
from pathlib import Path

import lark
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedToken
from lark.indenter import PythonIndenter

from . import cache, nodes, options
from .errors import LmqlError, LmqlSyntaxError

ROLES = frozenset({"system", "user", "assistant"})
MAX_NESTING = 100  # brackets; CPython's own parser stops at 200

_PROMPT_CALL = "__lmql_prompt__"


def parse(source: str, filename: str = "<query>") -> nodes.Query:
    """Parse a query; any problem with the text raises `LmqlSyntaxError` with its position."""
    if isinstance(source, (bytes, bytearray)):
        try:
            source = bytes(source).decode("utf-8")
        except UnicodeDecodeError as e:
            line = bytes(source)[:e.start].count(b"\n") + 1
            raise LmqlSyntaxError("the query is not valid UTF-8 text", file=filename, line=line, column=1) from None
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    try:
        return _Builder(source, filename).build()
    except LmqlError as e:
        error = e
    except RecursionError:
        error = LmqlSyntaxError("nesting too deep", line=1, column=1)
    except MemoryError:
        error = LmqlSyntaxError("query too large or nesting too deep", line=1, column=1)
    except Exception as e:  # a bug of ours; still the user's text caused it, so say where
        error = LmqlSyntaxError(f"internal error in the parser ({type(e).__name__}: {e})", line=1, column=1)
    lines = source.split("\n")
    if error.line is not None:
        error.line = min(max(error.line, 1), len(lines))
        error.column = max(error.column or 1, 1)
        if error.source_line is None:
            error.source_line = lines[error.line - 1]
    raise error.locate(file=filename) from None


def parse_cached(source: str, filename: str) -> nodes.Query:
    """`parse`, with the result kept in the user's cache (`<cache>/queries/`) for a query file.

    Keyed by the text, the file name and this parser's own code (grammar, parser, nodes), so a
    query file run again in a new process skips Lark, whose tables take about half a second to
    load. The entry is JSON that can only build `nodes` dataclasses (see `cache.loads`). Text that
    does not parse is never stored. Meant for query files, whose number is bounded: queries built
    in Python at run time are cached in their process only (`api.load`).
    """
    folder = cache.subfolder("queries")
    if folder is None:
        return parse(source, filename)
    digest = hashlib.sha256(_code_fingerprint())
    digest.update(repr((filename, source)).encode("utf-8", "surrogatepass"))
    path = folder / f"{digest.hexdigest()[:32]}.json"
    payload = cache.load(path, "query")
    if payload is not None:
        try:
            query = cache.loads(payload, _NODE_CLASSES)
        except (ValueError, TypeError):
            query = None
        if isinstance(query, nodes.Query) and query.source == source and query.filename == filename:
            return query
        cache.note(path, "damaged (not the parse of this query)")
    query = parse(source, filename)
    cache.save(path, "query", cache.dumps(query, _NODE_CLASSES))
    return query


_NODE_CLASSES = {name: cls for name, cls in vars(nodes).items()
                 if isinstance(cls, type) and cls.__module__ == nodes.__name__ and hasattr(cls, "__dataclass_fields__")}


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> bytes:
    parts = [_grammar_text(), lark.__version__]
    for module in (__file__, nodes.__file__):
        try:
            parts.append(Path(module).read_text(encoding="utf-8"))
        except OSError:
            parts.append(module)
    return hashlib.sha256("\0".join(parts).encode("utf-8")).digest()


# --- the Lark parser, built once per process (and cached on disk between processes) -----------

class _Indenter(PythonIndenter):
    """Python's INDENT/DEDENT tokens, plus bracket checks that point at the offending bracket.

    Two liberties LMQL takes: the whole query may be indented (`base`, the first line's indentation,
    is the top level), and a line that ends in `and`/`or` goes on on the next line (never valid
    Python, so no Python changes meaning). `joined` lists the offsets of the line breaks so joined,
    for the expression text to mark them as continuations.
    """

    PAIRS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
    base = 0     # the indentation of the query's first line
    end = 0      # the length of the text
    joined: list[int] = []

    def process(self, stream):
        self.paren_level = 0
        self.indent_level = [self.base]
        self.joined = []
        return self._process(stream)

    def _process(self, stream):
        opened: list[lark.Token] = []
        token = previous = None
        for token in stream:
            if token.type == self.NL_type:
                if opened:
                    continue
                if _is_bool_op(previous):
                    self.joined.append(token.start_pos)
                    continue
                yield from self._handle_newline(token)
                continue
            previous = token
            yield token
            if token.type in self.PAIRS:
                opened.append(token)
                if len(opened) > MAX_NESTING:
                    raise _error("nesting too deep", token.line, token.column)
            elif token.type in self.CLOSE_PAREN_types:
                if not opened:
                    raise _error(f"unbalanced '{token}'", token.line, token.column)
                if self.PAIRS[opened[-1].type] != token.type:
                    raise _error(f"'{token}' does not match '{opened[-1]}' at line {opened[-1].line}",
                                 token.line, token.column)
                opened.pop()
        if opened:
            raise _error(f"unbalanced '{opened[-1]}': it is never closed", opened[-1].line, opened[-1].column)
        while len(self.indent_level) > 1:
            self.indent_level.pop()
            yield _token_after(self.DEDENT_type, "", token)

    def _handle_newline(self, token):
        yield token
        indent_str = token.rsplit("\n", 1)[1]
        indent = indent_str.count(" ") + indent_str.count("\t") * self.tab_len
        if indent < self.base:
            if token.end_pos < self.end:
                raise _error("this line is indented less than the query's first line", token.end_line, token.end_column)
            indent = self.base  # the end of the query
        if indent > self.indent_level[-1]:
            self.indent_level.append(indent)
            yield _token_after(self.INDENT_type, indent_str, token)
            return
        while indent < self.indent_level[-1]:
            self.indent_level.pop()
            yield _token_after(self.DEDENT_type, indent_str, token)
        if indent != self.indent_level[-1]:
            raise _error("unindent does not match any outer indentation level", token.end_line, token.end_column)


def _is_bool_op(token: lark.Token | None) -> bool:
    return token is not None and token.type in ("AND", "OR") and str(token) in ("and", "or")


def _token_after(kind: str, value: str, token: lark.Token | None) -> lark.Token:
    """An INDENT or DEDENT token placed where `token` (a newline, or the last token) ends."""
    if token is None:
        return lark.Token(kind, value, 0, 1, 1, 1, 1, 0)
    return lark.Token(kind, value, token.end_pos, token.end_line, token.end_column,
                      token.end_line, token.end_column, token.end_pos)


_LARK: lark.Lark | None = None
_LARK_OPTIONS = dict(parser="lalr", start=["plain_query", "decoded_query"], propagate_positions=True,
                     maybe_placeholders=True)
_LARK_OBJECTS = ("postlex", "lexer_callbacks", "tree_class", "transformer", "_plugins", "cache")  # passed when loading


_PARSING = threading.RLock()  # held while the one Lark parser is built or parses


def _parser() -> lark.Lark:
    """Lark's LALR parser for grammar/lmql.lark, its tables kept between processes as data.

    Not Lark's own `cache=`, which unpickles the file (before checking its hash): a planted cache
    file would run code. Building the tables takes 1.5-2.5 s; loading them about 0.3 s.
    """
    with _PARSING:
        return _LARK or _built()


def _built() -> lark.Lark:
    """The parser loaded from its saved tables, or built (and its tables saved); `_PARSING` held."""
    global _LARK
    if _LARK is None:
        folder = cache.subfolder("")
        text = _grammar_text()
        key = hashlib.sha256(f"{lark.__version__}\0{sorted(_LARK_OPTIONS.items())}\0{text}".encode()).hexdigest()
        path = None if folder is None else folder / f"grammar-{key[:32]}.json"
        payload = None if path is None else cache.load(path, "lark")
        if payload is not None:
            try:
                tables = cache.loads(payload)
                _LARK = lark.Lark._load_from_dict(tables["data"], tables["memo"], postlex=_Indenter())
            except Exception:  # well-formed JSON that Lark cannot rebuild a parser from
                cache.note(path, "damaged (not Lark tables)")
        if _LARK is None:
            _LARK = lark.Lark(text, postlex=_Indenter(), **_LARK_OPTIONS)
            if path is not None:
                _save_tables(_LARK, path)
    return _LARK


def _save_tables(parser: lark.Lark, path: Path) -> None:
    data, memo = parser.memo_serialize([lark.lexer.TerminalDef, lark.grammar.Rule])
    data["options"] = {k: v for k, v in data["options"].items() if k not in _LARK_OBJECTS}
    try:
        payload = cache.dumps({"data": data, "memo": memo})
    except TypeError:  # a Lark version whose tables hold more than plain data: build them each time
        return
    cache.save(path, "lark", payload)


def _grammar_text() -> str:
    """grammar/lmql.lark: shipped inside the wheel as `lmql_lite.grammar`, or next to the package in a checkout.

    Read as a resource rather than with Lark.open_from_package, which quietly builds an empty
    grammar from a namespace package (the shipped folder has no __init__.py).
    """
    try:
        return importlib.resources.files("lmql_lite.grammar").joinpath("lmql.lark").read_text(encoding="utf-8")
    except (ImportError, OSError):
        return (Path(__file__).resolve().parent.parent / "grammar" / "lmql.lark").read_text(encoding="utf-8")


# --- errors ---------------------------------------------------------------------------------

def _error(message: str, line: int | None, column: int | None) -> LmqlSyntaxError:
    return LmqlSyntaxError(message, line=line, column=column)


_TOKEN_WORDS = {
    "_NEWLINE": "end of line", "_INDENT": "an indented block", "_DEDENT": "end of the block",
    "$END": "end of the query", "NAME": "a name", "STRING": "a string", "LONG_STRING": "a string",
    "DEC_NUMBER": "a number", "FLOAT_NUMBER": "a number", "HEX_NUMBER": "a number",
    "OCT_NUMBER": "a number", "BIN_NUMBER": "a number", "IMAG_NUMBER": "a number",
}


def _describe_terminal(name: str) -> str:
    short = name.split("__")[-1] if name.startswith("python__") else name
    if short in _TOKEN_WORDS:
        return _TOKEN_WORDS[short]
    try:
        pattern = _parser().get_terminal(name).pattern
    except (KeyError, AttributeError):
        return name
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"'{pattern.value}'"
    return name.lower()


def _describe_token(token: lark.Token) -> str:
    if token.type.endswith("_NEWLINE"):
        return "end of line"
    if token.type.endswith("_INDENT"):
        return "indent"
    if token.type.endswith("_DEDENT"):
        return "dedent"
    if token.type == "$END":
        return "end of the query"
    text = str(token)
    if len(text) > 30:
        text = text[:27] + "..."
    return f"'{text}'"


def _expected(names) -> str:
    """A short 'expected ...' tail; LALR's long lists (every operator) say nothing useful."""
    words = sorted({_describe_terminal(n) for n in names})
    if "a name" in words:  # the soft keywords are names too
        words = [w for w in words if w not in ("'match'", "'case'")]
    if len(words) <= 6:
        return " — expected " + ", ".join(words) if words else ""
    if "a name" in words and "a string" in words:
        return " — expected an expression"
    return ""


def _from_lark(e: Exception, text: str) -> LmqlSyntaxError:
    """A Lark exception as an `LmqlSyntaxError` at the right place."""
    last = _end_position(text)
    if isinstance(e, UnexpectedCharacters):
        char = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        if char in "\"'":
            return _error("unterminated string", e.line, e.column)
        if char == "\\":
            return _error("unexpected '\\' (a line continuation must end its line)", e.line, e.column)
        return _error(f"unexpected character {char!r}", e.line, e.column)
    if isinstance(e, UnexpectedToken):
        token = e.token
        if token.type == "$END" or not token.line or token.end_pos >= len(text) and not str(token).strip():
            return _error("unexpected end of the query" + _expected(e.expected), *last)
        return _error(f"unexpected {_describe_token(token)}" + _expected(e.expected), token.line, token.column)
    if isinstance(e, UnexpectedEOF):
        return _error("unexpected end of the query" + _expected(e.expected), *last)
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    return _error(f"syntax error: {message}", getattr(e, "line", None) or last[0], getattr(e, "column", None) or last[1])


def _end_position(text: str) -> tuple[int, int]:
    """Just after the last non-blank character: where 'unexpected end of the query' points."""
    lines = text.rstrip().split("\n")
    return len(lines), len(lines[-1]) + 1


# --- the decoder line -----------------------------------------------------------------------

def _indent_of(line: str) -> int:
    """A line's indentation as the indenter counts it."""
    lead = line[:len(line) - len(line.lstrip(" \t\f"))]
    return lead.count(" ") + lead.count("\t") * _Indenter.tab_len


def _base_indent(text: str) -> int:
    """The indentation of the first line holding code: a query indented as a whole starts there."""
    for line in text.split("\n"):
        if line.strip() and not line.lstrip().startswith("#"):
            return _indent_of(line)
    return 0


def _decoder_line(text: str) -> tuple[int, str] | None:
    """(offset, name) of the decoder clause's line, or None when the query has none.

    The decoder line is the first top-level line that is a decoder name, bare or called, alone or
    followed by a string, before any prompt statement; lines before it are Python (LMQL's prologue:
    imports, assignments, definitions). A name the prologue already uses (`from random import
    sample`) stays Python. A name that is no decoder is still taken as one (and reported as unknown)
    where Python could not mean it: followed by a string or an indented block, or a near-miss of a
    decoder name (`sampel(n=2)`) that the query never defines.
    """
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    seen: set[str] = set()
    tokens: list[tokenize.TokenInfo] = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(text).readline):
            tokens.append(t)
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # the lines before the problem decide; Lark reports the problem with its position
    skip = (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENCODING)
    level, top, i = 0, None, 0
    while i < len(tokens):
        t = tokens[i]
        if t.type == tokenize.INDENT:
            level += 1
        elif t.type == tokenize.DEDENT:
            level -= 1
        if t.type in skip or t.type in (tokenize.INDENT, tokenize.DEDENT):
            i += 1
            continue
        if t.type == tokenize.ENDMARKER:
            return None
        # t starts a logical line; its tokens run to the next NEWLINE
        j = i
        while j < len(tokens) and tokens[j].type not in (tokenize.NEWLINE, tokenize.ENDMARKER):
            j += 1
        line = tokens[i:j]
        top = level if top is None else top
        if level == top and (t.type == tokenize.STRING or tokenize.tok_name.get(t.type) == "FSTRING_START"):
            return None  # a prompt statement: the body has begun
        if level == top and t.type == tokenize.NAME and t.string not in seen and not keyword.iskeyword(t.string):
            shape = _decoder_shape(line)
            if shape is not None:
                name = t.string.lower() if t.string.lower() in options.NAMES else t.string
                followed = shape == "string" or any(u.type == tokenize.INDENT for u in tokens[j:j + 3])
                close = difflib.get_close_matches(name, options.NAMES, 1, cutoff=0.75)
                if name in options.NAMES or followed or close and shape == "call":
                    return starts[t.start[0] - 1], name
        seen.update(u.string for u in line if u.type == tokenize.NAME)
        i = j
    return None


def _decoder_shape(line: list) -> str | None:
    """'bare', 'call' or 'string' when a logical line reads `name`, `name(...)`, optionally then a string."""
    k = 1
    if k < len(line) and line[k].type == tokenize.OP and line[k].string == "(":
        depth = 0
        while k < len(line):
            if line[k].type == tokenize.OP and line[k].string in "([{":
                depth += 1
            elif line[k].type == tokenize.OP and line[k].string in ")]}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        k += 1
        shape = "call"
    else:
        shape = "bare"
    rest = [u for u in line[k:] if u.type not in (tokenize.COMMENT, tokenize.NL)]
    if not rest:
        return shape
    if rest[0].type == tokenize.STRING or tokenize.tok_name.get(rest[0].type) == "FSTRING_START":
        return "string"
    return None


# --- building the nodes ---------------------------------------------------------------------

def _span(node) -> tuple[int, int]:
    if isinstance(node, lark.Token):
        return node.start_pos, node.end_pos
    return node.meta.start_pos, node.meta.end_pos


def _kind(tree: lark.Tree) -> str:
    return str(tree.data).rsplit("__", 1)[-1]


class _Builder:
    def __init__(self, source: str, filename: str):
        self.source = source
        self.filename = filename
        self.text = source if source.endswith("\n") else source + "\n"
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        self.joined: set[int] = set()  # offsets of line breaks joined after/before `and`/`or`
        self.inline_distribution: nodes.Distribution | None = None  # `"..." distribution X in [...]`

    def pos(self, offset: int) -> nodes.Pos:
        line = bisect.bisect_right(self.line_starts, offset)
        return nodes.Pos(line, offset - self.line_starts[line - 1] + 1)

    def error(self, message: str, offset: int) -> LmqlSyntaxError:
        p = self.pos(offset)
        return LmqlSyntaxError(message, line=p.line, column=p.column)

    def build(self) -> nodes.Query:
        self.check_characters()
        found = _decoder_line(self.text)
        edits: list[tuple[int, int, str]] = []
        prompts: list[nodes.Prompt] = []
        prologue_lines = 0
        if found is None:
            tree = self.parse(self.text, "plain_query")
        else:
            at = found[0]
            prologue_lines = self.text.count("\n", 0, at)
            if prologue_lines:
                prologue = self.parse(self.text[:at] + _blank(self.text[at:]), "plain_query")
                self.prompts(prologue, edits, prompts)
            tree = self.parse(_blank(self.text[:at]) + self.text[at:], "decoded_query")
        self.prompts(tree, edits, prompts)
        decoder = model = where = distribution = None
        for child in tree.children:
            if not isinstance(child, lark.Tree):
                continue
            kind = _kind(child)
            if kind == "decoder":
                decoder = self.decoder(child)
            elif kind == "from_clause":
                model = self.expr(child.children[0])
            elif kind == "where_clause":
                where = self.expr(child.children[0])
            elif kind == "distribution_clause":
                distribution = self.distribution(child.children[0], self.inline_distribution)
            else:
                continue
            edits.append((*_span(child), ""))
        distribution = self.inline_distribution or distribution
        body = self.body(edits)
        query = nodes.Query(body=body, prompts=tuple(prompts), decoder=decoder, model=model, where=where,
                            distribution=distribution, filename=self.filename, source=self.source,
                            prologue_lines=prologue_lines)
        blocks = query.blocks()
        query = dataclasses.replace(query, body_indented=blocks[-1][2])
        self.check_body(blocks)
        return query

    def parse(self, text: str, start: str) -> lark.Tree:
        with _PARSING:  # the postlexer's state (indentation, joined lines) is one parse's at a time
            parser = _parser()
            parser.options.postlex.base = _base_indent(text)
            parser.options.postlex.end = len(text)
            try:
                tree = parser.parse(text, start=start)
            except LmqlError:
                raise
            except (LarkError, AssertionError, IndexError, KeyError) as e:
                raise _from_lark(e, text) from None
            self.joined.update(parser.options.postlex.joined)
        return tree

    def distribution(self, tree: lark.Tree, known: nodes.Distribution | None) -> nodes.Distribution:
        var, values = tree.children
        if known is not None:
            raise self.error("a query has one distribution clause", var.start_pos)
        return nodes.Distribution(str(var), self.expr(values), self.pos(var.start_pos))

    def check_characters(self) -> None:
        m = re.search(r"[\x00\ud800-\udfff]", self.source)
        if m:
            what = "NUL character" if m.group() == "\x00" else "invalid character (not UTF-8 text)"
            raise self.error(f"{what} in the query", m.start())

    # Prompt statements: every bare string statement but a docstring, and `"..." where C`.
    def prompts(self, tree: lark.Tree, edits: list, prompts: list[nodes.Prompt]) -> None:
        docstrings = set()
        for sub in tree.iter_subtrees():
            if _kind(sub) in ("funcdef", "classdef"):
                suite = sub.children[-1]
                first = suite.children[0] if isinstance(suite, lark.Tree) and suite.children else None
                if isinstance(first, lark.Tree) and _kind(first) == "simple_stmt":
                    first = first.children[0]
                docstrings.add(id(first))
        for sub in tree.iter_subtrees_topdown():
            kind = _kind(sub)
            where = None
            if kind in ("prompt_stmt", "line_prompt"):
                strings, *rest = sub.children
                for child in rest:
                    if isinstance(child, lark.Tree) and _kind(child) == "distribution":
                        self.inline_distribution = self.distribution(child, self.inline_distribution)
                    elif child is not None:
                        where = child
            elif kind == "expr_stmt" and id(sub) not in docstrings and len(sub.children) == 1 \
                    and _strings(sub.children[0]) is not None:
                strings = _strings(sub.children[0])
            else:
                continue
            tokens = [s.children[0] for s in (strings.children if _kind(strings) == "string_concat" else [strings])]
            parts = []
            for token in tokens:
                parts.extend(self.prompt_parts(token))
            start, end = _span(sub)
            prompts.append(nodes.Prompt(tuple(_merge_text(parts)), self.pos(start),
                                        self.expr(where) if where is not None else None))
            edits.append((start, end, f"{_PROMPT_CALL}({len(prompts) - 1}"))

    def decoder(self, tree: lark.Tree) -> nodes.Decoder:
        name, arguments = tree.children
        args, kwargs = [], []
        for arg in arguments.children if arguments is not None else ():
            key, value = arg.children
            if key is None:
                if kwargs:
                    raise self.error("positional argument follows keyword argument", _span(value)[0])
                args.append(self.expr(value))
            else:
                kwargs.append((str(key), self.expr(value)))
        # LMQL reads decoder names case-insensitively (ARGMAX); an unknown name is kept as written
        written = str(name)
        known = written.lower() if written.lower() in options.NAMES else written
        return nodes.Decoder(known, self.pos(name.start_pos), tuple(args), tuple(kwargs))

    def expr(self, node) -> nodes.Expr:
        start, end = _span(node)
        code, offsets = [], []
        for k in range(start, end):
            if k in self.joined:  # a line continued after `and`/`or`: a backslash makes it one line for Python
                code.append("\\")
                offsets.append(k)
            code.append(self.text[k])
            offsets.append(k)
        offsets.append(end)
        return self.python_expr("".join(code), offsets)

    def python_expr(self, code: str, offsets: list[int]) -> nodes.Expr:
        """An `Expr` for `code`, whose character i sits at source offset `offsets[i]`; checked by Python."""
        lead = len(code) - len(code.lstrip())
        code = code.strip()
        offsets = offsets[lead:]
        if not code:
            raise self.error("expected an expression", offsets[0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ast.parse(code, mode="eval")
        except SyntaxError as e:
            index = _index_of(code, e.lineno, e.offset)
            message = (e.msg or "invalid syntax").replace("f-string: ", "")
            raise self.error(message, offsets[min(index, len(offsets) - 1)]) from None
        except (RecursionError, MemoryError):
            raise self.error("nesting too deep", offsets[0]) from None
        except ValueError as e:
            raise self.error(str(e), offsets[0]) from None
        return nodes.Expr(code, self.pos(offsets[0]))

    # The contents of one string literal: text, {interpolation}, [holes], {:role}.
    def prompt_parts(self, token: lark.Token) -> list:
        raw = str(token)
        prefix = re.match(r"[a-zA-Z]*", raw).group().lower()
        if "b" in prefix:
            raise self.error("a byte string cannot be a prompt", token.start_pos)
        quote = raw[len(prefix):len(prefix) + 3] if raw[len(prefix):len(prefix) + 3] in ('"""', "'''") else raw[len(prefix)]
        start = token.start_pos + len(prefix) + len(quote)
        body = raw[len(prefix) + len(quote):len(raw) - len(quote)]
        if "r" in prefix:
            text, offsets = body, list(range(start, start + len(body) + 1))
        else:
            text, offsets = self.unescape(body, start)
        return _PromptScanner(self, text, offsets).parts()

    def unescape(self, body: str, start: int) -> tuple[str, list[int]]:
        """Resolve backslash escapes as Python does; offsets[i] is decoded char i's source offset."""
        chars, offsets = [], []
        i = 0
        for m in re.finditer(r"\\(\n|N\{[^}\n]*\}?|x[0-9a-fA-F]{0,2}|u[0-9a-fA-F]{0,4}|U[0-9a-fA-F]{0,8}|[0-7]{1,3}|.|$)", body):
            for k in range(i, m.start()):
                chars.append(body[k])
                offsets.append(start + k)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    decoded = ast.literal_eval('"' + m.group() + '"') if m.group() != "\\\n" else ""
            except (SyntaxError, ValueError):
                raise self.error(f"invalid escape sequence {m.group()!r}", start + m.start()) from None
            for c in decoded:
                chars.append(c)
                offsets.append(start + m.start())
            i = m.end()
        for k in range(i, len(body)):
            chars.append(body[k])
            offsets.append(start + k)
        offsets.append(start + len(body))
        return "".join(chars), offsets

    def body(self, edits: list[tuple[int, int, str]]) -> str:
        """The source with clauses blanked and prompt statements replaced, lines and columns kept."""
        out, last = [], 0
        for start, end, call in sorted(edits):
            if start < last:  # a prompt inside a blanked clause cannot happen; be safe
                continue
            out.append(self.text[last:start])
            original = self.text[start:end]
            if not call:
                out.append(re.sub(r"[^\n]", " ", original))
            else:
                newlines = original.count("\n")
                last_line = original.rsplit("\n", 1)[-1]
                replacement = call + "\n" * newlines + ")"
                width = len(replacement.rsplit("\n", 1)[-1])
                out.append(replacement + " " * max(len(last_line) - width, 0))
            last = end
        out.append(self.text[last:])
        body = "".join(out)
        return body if self.source.endswith("\n") else body[:-1]  # drop the newline parse() added

    def check_body(self, blocks: list[tuple[str, int]]) -> None:
        """The body must be Python, as the compiler will parse it; report what Lark let through."""
        for code, shift, _ in blocks:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ast.parse(code)
            except SyntaxError as e:
                line = min(max((e.lineno or 1) - shift, 1), len(self.line_starts))
                column = e.offset or 1
                source_line = self.text.split("\n")[line - 1]
                raise LmqlSyntaxError(e.msg or "invalid syntax", line=line,
                                      column=min(max(column, 1), len(source_line) + 1)) from None
            except (RecursionError, MemoryError):
                raise self.error("nesting too deep", 0) from None
            except ValueError as e:
                raise self.error(str(e), 0) from None


def _blank(text: str) -> str:
    """`text` with everything but line breaks turned into spaces: offsets, lines and columns kept."""
    return re.sub(r"[^\n]", " ", text)


def _strings(node) -> lark.Tree | None:
    """The string or adjacent strings of an expression statement that is a prompt: `"a"`, `("a" "b")`."""
    if isinstance(node, lark.Tree) and _kind(node) == "paren" and len(node.children) == 1:
        node = node.children[0]
    if isinstance(node, lark.Tree) and _kind(node) in ("string", "string_concat"):
        return node
    return None


def _index_of(code: str, lineno: int | None, offset: int | None) -> int:
    """The index in `code` of a SyntaxError's 1-based (lineno, offset)."""
    lines = code.split("\n")
    lineno = min(max(lineno or 1, 1), len(lines))
    return sum(len(l) + 1 for l in lines[:lineno - 1]) + max((offset or 1) - 1, 0)


def _merge_text(parts: list) -> list:
    merged = []
    for part in parts:
        if isinstance(part, nodes.Text) and merged and isinstance(merged[-1], nodes.Text):
            merged[-1] = nodes.Text(merged[-1].text + part.text)
        elif not (isinstance(part, nodes.Text) and not part.text):
            merged.append(part)
    return merged


_IDENT = re.compile(r"[^\W\d]\w*")
_DECORATOR = re.compile(r"@\s*([^\W\d][\w.]*)")


class _PromptScanner:
    """Scans decoded prompt text; `offsets[i]` is the source offset of character i (for positions)."""

    def __init__(self, builder: _Builder, text: str, offsets: list[int]):
        self.b, self.s, self.offsets = builder, text, offsets

    def error(self, message: str, index: int) -> LmqlSyntaxError:
        return self.b.error(message, self.offsets[min(index, len(self.offsets) - 1)])

    def pos(self, index: int) -> nodes.Pos:
        return self.b.pos(self.offsets[min(index, len(self.offsets) - 1)])

    def expr(self, a: int, b: int) -> nodes.Expr:
        return self.b.python_expr(self.s[a:b], self.offsets[a:b + 1])

    def parts(self) -> list:
        s, parts, text, i = self.s, [], [], 0
        while i < len(s):
            c, nxt = s[i], s[i + 1:i + 2]
            if c in "{[" and nxt == c or c in "}]" and nxt == c:
                text.append(c)
                i += 2
                continue
            if c in "}]":
                double = c * 2
                raise self.error(f"unbalanced '{c}' (write '{double}' for a literal '{c}')", i)
            if c not in "{[":
                text.append(c)
                i += 1
                continue
            parts.append(nodes.Text("".join(text)))
            text = []
            if c == "[":
                end = self.closing(i, "]")
                parts.append(self.hole(i, end))
            elif nxt == ":":
                end = self.closing(i, "}")
                parts.append(self.role(i, end))
            else:
                end = self.closing(i, "}")
                parts.append(self.interp(i, end))
            i = end + 1
        parts.append(nodes.Text("".join(text)))
        return parts

    def closing(self, i: int, closer: str) -> int:
        """Index of the bracket closing the one at i, skipping nested brackets and string literals."""
        s, stack, k = self.s, [closer], i + 1
        pairs = {"(": ")", "[": "]", "{": "}"}
        while k < len(s):
            c = s[k]
            if c in "'\"":
                k = self.skip_string(k)
                continue
            if c in pairs:
                stack.append(pairs[c])
                if len(stack) > MAX_NESTING:
                    raise self.error("nesting too deep", k)
            elif c in ")]}":
                if c != stack[-1]:
                    if len(stack) == 1:
                        raise self.error(f"unbalanced '{s[i]}': '{c}' closes it", k)
                    raise self.error(f"'{c}' does not match the bracket opened before it", k)
                stack.pop()
                if not stack:
                    return k
            k += 1
        raise self.error(f"unbalanced '{s[i]}': it is never closed in this string", i)

    def skip_string(self, k: int) -> int:
        s = self.s
        quote = s[k:k + 3] if s[k:k + 3] in ('"""', "'''") else s[k]
        j = k + len(quote)
        while j < len(s):
            if s[j] == "\\":
                j += 2
                continue
            if s.startswith(quote, j):
                return j + len(quote)
            j += 1
        raise self.error("unterminated string inside the prompt's brackets", k)

    def role(self, i: int, end: int) -> nodes.Role:
        name = self.s[i + 2:end].strip()
        if name not in ROLES:
            raise self.error(f"unknown chat role {name!r} (use system, user or assistant)", i + 2)
        return nodes.Role(name, self.pos(i))

    def interp(self, i: int, end: int) -> nodes.Interp:
        s, depth, k = self.s, 0, i + 1
        expr_end, conversion, spec = end, None, None
        while k < end:
            c = s[k]
            if c in "'\"":
                k = self.skip_string(k)
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif depth == 0 and c == "!" and s[k + 1:k + 2] != "=":
                expr_end = k
                conversion = s[k + 1:k + 2]
                after = k + 2
                if conversion not in ("r", "s", "a") or s[after:after + 1] not in (":", "}"):
                    raise self.error("conversion must be !r, !s or !a", k)
                if s[after:after + 1] == ":":
                    spec = s[after + 1:end]
                break
            elif depth == 0 and c == ":":
                expr_end = k
                spec = s[k + 1:end]
                break
            k += 1
        if not s[i + 1:expr_end].strip():
            raise self.error("empty expression in '{}' (write '{{' for a literal '{')", i)
        return nodes.Interp(self.expr(i + 1, expr_end), conversion, spec)

    def hole(self, i: int, end: int) -> nodes.Hole:
        s, k = self.s, i + 1
        decorators = []
        while True:
            while k < end and s[k].isspace():
                k += 1
            if k >= end or s[k] != "@":
                break
            m = _DECORATOR.match(s, k, end)
            if not m:
                raise self.error("expected a function name after '@'", k + 1)
            stop = m.end()
            if stop < end and s[stop] == "(":
                stop = self.closing(stop, ")") + 1
            decorators.append(self.expr(k + 1, stop))
            k = stop
        m = _IDENT.match(s, k, end)
        if not m:
            what = "missing variable name in '[]'" if k >= end else f"a hole needs a variable name, not {s[k:end].strip()!r}"
            raise self.error(what + " (write '[[' for a literal '[')", k if k < end else i)
        name = m.group()
        if keyword.iskeyword(name):
            raise self.error(f"{name!r} is a Python keyword, not a variable name", k)
        k = m.end()
        while k < end and s[k].isspace():
            k += 1
        hole_type = None
        if k < end:
            if s[k] != ":":
                raise self.error(f"unexpected {s[k]!r} after the hole's name (expected ':' or ']')", k)
            if not s[k + 1:end].strip():
                raise self.error("missing type after ':'", k + 1)
            hole_type = self.expr(k + 1, end)
        return nodes.Hole(name, self.pos(i), hole_type, tuple(decorators))
