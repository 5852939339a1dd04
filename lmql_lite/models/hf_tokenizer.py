"""Hugging Face tokenizers as the interpreter needs them: the vocabulary as bytes, chat markers from a chat template, and a model's tokenizer side.

Torch-free, so every engine that loads a Hugging Face tokenizer (transformers, llama.cpp with
a tokenizer folder, a serving engine's client) shares it.
"""
from __future__ import annotations

import functools
import itertools
import re
from typing import Any, Sequence

from ..errors import ModelError
from ..index import Vocabulary

# Models without a chat template get this rendering of `{:role}` messages.
PLAIN_ROLE_MARKERS = {"system": ("System: ", "\n"), "user": ("User: ", "\n"), "assistant": ("Assistant: ", "\n")}

# Tokens that end a document in common vocabularies; a hole may end with them too.
END_OF_TEXT = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


def vocabulary_from_tokenizer(tokenizer, width: int | None = None, *, eos_ids: Sequence[int] = ()) -> Vocabulary:
    """The tokenizer's tokens as bytes, padded (or cut) to `width`, the model's logits width.

    Byte-level BPE (GPT-2 style) and SentencePiece style (▁ for space, <0xNN> byte fallback) are
    detected from the tokenizer; special tokens, and ids past the tokenizer, map to b"".
    End-of-sequence ids: the tokenizer's, `eos_ids` (from the model's configs) and the usual
    end-of-text tokens (END_OF_TEXT) when the vocabulary has them as special tokens.
    """
    size = len(tokenizer)
    width = size if width is None else width
    backend = getattr(tokenizer, "backend_tokenizer", None)
    ids = range(min(size, width))
    pieces = list(map(backend.id_to_token, ids)) if backend is not None else tokenizer.convert_ids_to_tokens(list(ids))
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items() if i < width}
    special = {i for i, t in added.items() if t.special} | {i for i in tokenizer.all_special_ids if i < width}
    special |= {i for i, p in enumerate(pieces) if p is None} | set(range(size, width))
    plain = ["" if i in special or i in added else p for i, p in enumerate(pieces)]
    tokens = _pieces_to_bytes(tokenizer, plain)
    for i, t in added.items():
        tokens[i] = b"" if i in special else t.content.encode("utf-8")
    tokens += [b""] * (width - len(tokens))
    eos = {i for i in eos_ids if 0 <= i < width}
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id < width:
        eos.add(tokenizer.eos_token_id)
    eos |= {i for i in special if i < len(pieces) and pieces[i] in END_OF_TEXT}
    return Vocabulary(tuple(tokens), frozenset(eos), frozenset(special | eos))


def _pieces_to_bytes(tokenizer, pieces: list[str]) -> list[bytes]:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    described = decoder.__getstate__().decode() if decoder is not None else ""
    if "ByteLevel" in described or (not described and any("Ġ" in p for p in pieces)):
        table = str.maketrans({u: chr(b) for b, u in _bytes_to_unicode().items()})
        try:
            # One character is one byte: translate everything at once, then cut at the piece lengths.
            data = "".join(pieces).translate(table).encode("latin-1")
        except UnicodeEncodeError:  # pieces outside the byte alphabet: take those as text
            return [_byte_level_piece(p, table) for p in pieces]
        ends = list(itertools.accumulate(map(len, pieces)))
        return [data[end - len(p):end] for p, end in zip(pieces, ends)]
    if "ByteFallback" in described or "Metaspace" in described or "▁" in described or any("▁" in p for p in pieces):
        byte = re.compile(r"<0x([0-9A-Fa-f]{2})>")
        return [bytes([int(m.group(1), 16)]) if (m := byte.fullmatch(p)) else p.replace("▁", " ").encode("utf-8")
                for p in pieces]
    return [p.encode("utf-8") for p in pieces]


def _byte_level_piece(piece: str, table) -> bytes:
    try:
        return piece.translate(table).encode("latin-1")
    except UnicodeEncodeError:
        return piece.encode("utf-8")


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible map from bytes to printable characters, which byte-level BPE vocabularies are written in.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


class ChatRoles:
    """`role_markers` and `chat_preamble` for an engine's model, read from its `_chat_markers`
    (what `chat_markers` gives for the model's template)."""

    _chat_markers: tuple[dict[str, tuple[str, str]], dict[str, str]]

    def role_markers(self, role: str) -> tuple[str, str]:
        """(text that opens, text that closes) a chat message of `role`: system, user or assistant.

        Derived from the model's chat template; special tokens in them are encoded with
        `encode(text, special=True)`. Models without a usable template get PLAIN_ROLE_MARKERS.
        """
        markers = self._chat_markers[0]
        if role not in markers:
            raise ModelError(f"unknown chat role {role!r}: use system, user or assistant")
        return markers[role]

    def chat_preamble(self, first_role: str) -> str:
        """Text the chat template puts before the first message when it is of `first_role` (a default system message)."""
        return self._chat_markers[1].get(first_role, "")


class TokenizerSide(ChatRoles):
    """The tokenizer side of a model (see `models.base.LanguageModel`) over a Hugging Face tokenizer:
    `bos_ids`, `encode`, `decode` and the chat markers; the model gives `vocabulary`."""

    tokenizer: Any
    vocabulary: Vocabulary

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # What the tokenizer puts before a text by default (it may also append an EOS: ignored).
        with_special = tokenizer("a").input_ids
        without = tokenizer("a", add_special_tokens=False).input_ids
        starts = [i for i in range(len(with_special) - len(without) + 1) if with_special[i:i + len(without)] == without]
        self.bos_ids = list(with_special[: starts[0]]) if starts and without else []

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`, no special tokens added; with `special`, special tokens written in the text (chat markers) become their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not special)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`: the vocabulary's bytes, special tokens written out (a served model's text prompt sends them so)."""
        return b"".join(self._decoded_bytes[i] for i in ids).decode("utf-8", errors="replace")

    @functools.cached_property
    def _decoded_bytes(self) -> tuple[bytes, ...]:
        pieces = list(self.vocabulary.tokens)
        for i in self.vocabulary.special_ids:
            # A vocabulary as wide as the logits may have ids past the tokenizer: those decode to nothing.
            content = self.tokenizer.convert_ids_to_tokens(i) if i < len(self.tokenizer) else None
            pieces[i] = (content or "").encode("utf-8")
        return tuple(pieces)

    @functools.cached_property
    def _chat_markers(self) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        return chat_markers(self.tokenizer, bos="".join(self.tokenizer.convert_ids_to_tokens(self.bos_ids)))


def chat_markers(tokenizer, bos: str = "") -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Per role, the (open, close) text around a message's content, and the preamble a conversation starting with a role gets.

    Rendering [system A], [system A, user B], [system A, user B, assistant C] with the template
    gives each role's close (the text after its content when last) and open (the text between
    the previous message's close and its content); always starting with a system message keeps
    a default system message out of the markers; `bos` (the text of the BOS the model adds itself)
    is left out of the first open marker. Falls back to PLAIN_ROLE_MARKERS when the
    template is missing or does not render consistently.
    """
    if not getattr(tokenizer, "chat_template", None):
        return dict(PLAIN_ROLE_MARKERS), {}
    content = {"system": "LMQLSYSTEMTEXT", "user": "LMQLUSERTEXT", "assistant": "LMQLASSISTANTTEXT"}
    roles = ["system", "user", "assistant"]
    try:
        renders = [_render(tokenizer, [(r, content[r]) for r in roles[: i + 1]]) for i in range(3)]
        markers = {}
        for i, (role, text) in enumerate(zip(roles, renders)):
            start = text.index(content[role])
            close = text[start + len(content[role]):]
            if i == 0:
                opening = text[:start].removeprefix(bos)
            else:
                previous = content[roles[i - 1]]
                between = text[text.index(previous) + len(previous):start]
                if not between.startswith(markers[roles[i - 1]][1]):
                    return dict(PLAIN_ROLE_MARKERS), {}
                opening = between[len(markers[roles[i - 1]][1]):]
            markers[role] = (opening, close)
        preambles = {}
        for role in ("user", "assistant"):
            try:
                text = _render(tokenizer, [(role, content[role])])
            except Exception:
                continue
            before = text[: text.index(content[role])].removeprefix(bos)
            if before.endswith(markers[role][0]):
                preambles[role] = before[: len(before) - len(markers[role][0])]
        return markers, preambles
    except Exception:  # templates raise on conversations they do not support (no system role...)
        return dict(PLAIN_ROLE_MARKERS), {}


def _render(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False)
