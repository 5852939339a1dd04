"""GGUF models in-process on llama.cpp (llama-cpp-python's low-level ctypes API): the fast CPU engine.

The engine only feeds tokens and hands back logits: the decode loop and the masks stay ours (no
logits-processor hook, no `Llama.generate`). A batch's rows are llama.cpp sequences of one
context, each in its own key/value stream, so `select` copies and removes sequences and `truncate`
removes a sequence's tail; a step feeds every row's new tokens in one `llama_decode`.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

import llama_cpp.llama_cpp as ll

from .. import cache
from ..errors import ModelError
from ..index import Vocabulary
from . import check_name, usable_cores
from .default import DEFAULT_NAME, default_gguf
from .hf_tokenizer import ChatRoles, END_OF_TEXT, chat_markers

FIRST_CELLS = 512  # key/value cells per sequence in a new context; it grows (doubling) when a row needs more
PIECE = 512  # the most tokens one llama_decode is given (llama.cpp's batch and micro-batch size)
MIN_SEQUENCES = 4  # sequences a new context has room for at least: a row and its copies (scoring, beams) fit
SPECIAL_ATTRIBUTES = ll.LLAMA_TOKEN_ATTR_CONTROL | ll.LLAMA_TOKEN_ATTR_UNKNOWN | ll.LLAMA_TOKEN_ATTR_UNUSED

_log = logging.getLogger("lmql_lite.llamacpp")
GGML_LOG_LEVEL_ERROR = 3  # ggml.h: enum ggml_log_level


@ll.llama_log_callback
def _forward_log(level: int, text: bytes, user_data) -> None:
    # llama.cpp reports every load step at INFO; only its errors reach Python's logging.
    if level == GGML_LOG_LEVEL_ERROR:
        _log.error("%s", text.decode("utf-8", errors="replace").rstrip())


ll.llama_log_set(_forward_log, ctypes.c_void_p(0))
ll.llama_backend_init()


def load_model(name: str | None = None, *, device: str = "auto", dtype: str = "auto",
               threads: int | None = None) -> "LlamaCppModel":
    """The default model (None) or a `.gguf` file, loaded by llama.cpp (no conversion), on the CPU in
    the file's own precision; `threads` (None: every core this process may use) compute each decode."""
    check_name(name)
    if device not in ("auto", "cpu") or dtype != "auto":
        raise ModelError(f"the llama.cpp engine runs on the CPU in the GGUF file's own precision: device={device!r} "
                         f"dtype={dtype!r} need engine='transformers' (--engine transformers)")
    if name is None:
        return LlamaCppModel(default_gguf(), DEFAULT_NAME, threads)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelError(f"model {name!r}: the llama.cpp engine runs .gguf files; for a model folder or hub id "
                         "use engine='transformers' (--engine transformers)")
    return LlamaCppModel(path, name, threads)


class LlamaCppModel(ChatRoles):
    """A GGUF model and its tokenizer on llama.cpp, as the interpreter sees them (see `models.base.LanguageModel`)."""

    batch_exact = False  # a token fed after a prompt and fed alone differ by up to 1.0 in their logits

    def __init__(self, path: Path, name: str, threads: int | None = None):
        self.name = name
        self.path = path
        self.threads = threads or usable_cores()
        params = ll.llama_model_default_params()
        params.use_mmap = True
        self._model = ll.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise ModelError(f"model {name!r}: llama.cpp could not load {path}: not a valid GGUF file, or a "
                             "model architecture this llama.cpp does not know")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.context_limit = ll.llama_model_n_ctx_train(self._model)  # the longest row the model was trained for
        self.bos_ids = [ll.llama_vocab_bos(self._vocab)] if ll.llama_vocab_get_add_bos(self._vocab) else []
        self._contexts: list[_Context] = []  # contexts of earlier batches, reused once those are gone

    def __del__(self, _free=ll.llama_model_free):  # bound now: module globals are gone at interpreter exit
        model = getattr(self, "_model", None)
        if model:
            self._contexts.clear()
            _free(model)

    def fingerprint(self) -> str:
        """The run cache's model identity: the SHA-256 of the GGUF file (read once, see `cache.file_digest`)."""
        return "gguf:" + cache.file_digest(self.path)

    @functools.cached_property
    def vocabulary(self) -> Vocabulary:
        return self._tables[0]

    @functools.cached_property
    def _tables(self) -> tuple[Vocabulary, tuple[bytes, ...]]:
        # (the vocabulary: plain bytes, special tokens b""; every token written out, for decode).
        size = ll.llama_vocab_n_tokens(self._vocab)
        plain, written, special, eos = [], [], set(), set()
        for i in range(size):
            attributes = ll.llama_vocab_get_attr(self._vocab, i)
            text = self._piece(i, True)
            written.append(text)
            if attributes & SPECIAL_ATTRIBUTES or ll.llama_vocab_is_eog(self._vocab, i):
                special.add(i)
                plain.append(b"")
                if text.decode("utf-8", "replace") in END_OF_TEXT:
                    eos.add(i)
            else:
                plain.append(self._piece(i, False))
        # The GGUF's end-of-sequence and end-of-turn ids and the usual end-of-text names, as the
        # transformers engine reads them (llama.cpp's wider end-of-generation set also takes in
        # tokens such as `<reponame>` by name).
        eos |= {ll.llama_vocab_eos(self._vocab), ll.llama_vocab_eot(self._vocab)}
        eos = {i for i in eos if 0 <= i < size}
        return Vocabulary(tuple(plain), frozenset(eos), frozenset(special | eos)), tuple(written)

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = ll.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
        if n < 0:  # a longer piece: -n bytes
            buffer = ctypes.create_string_buffer(-n)
            n = ll.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`, no BOS/EOS added; with `special`, marker text (`<|im_start|>`) becomes its token."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        ids = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(self._vocab, data, len(data), ids, capacity, False, special)
        if n < 0:
            capacity = -n
            ids = (ll.llama_token * capacity)()
            n = ll.llama_tokenize(self._vocab, data, len(data), ids, capacity, False, special)
        return list(ids[:n])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`: the vocabulary's bytes, special tokens written out."""
        written = self._tables[1]
        return b"".join(written[i] for i in ids).decode("utf-8", errors="replace")


    @functools.cached_property
    def _chat_markers(self) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
        template = ll.llama_model_chat_template(self._model, None)
        bos = self.decode(self.bos_ids)
        return chat_markers(_ChatTemplate((template or b"").decode("utf-8", "replace"), bos,
                                          self.decode([ll.llama_vocab_eos(self._vocab)])), bos=bos)

    def batch(self, rows: int = 1) -> "LlamaCppBatch":
        """A new, empty batch of `rows` sequences sharing one key/value cache."""
        batch = LlamaCppBatch(self, rows)
        return batch

    def context(self, owner, cells: int, sequences: int) -> "_Context":
        """A context with at least `cells` key/value cells and `sequences` sequences for `owner`: one
        an earlier, finished batch used (cleared), or a new one."""
        for context in self._contexts:
            if context.owner() is None and context.cells >= cells and context.sequences >= sequences:
                context.clear()
                context.owner = weakref.ref(owner)
                return context
        context = _Context(self, cells, sequences)
        context.owner = weakref.ref(owner)
        self._contexts.append(context)
        return context

    def release(self, context: "_Context") -> None:
        """Forget a context a batch outgrew."""
        if context in self._contexts:
            self._contexts.remove(context)


class _ChatTemplate:
    """A GGUF's chat template with the one method `hf_tokenizer.chat_markers` calls, rendered as transformers renders templates."""

    def __init__(self, template: str, bos: str, eos: str):
        self.chat_template = template
        self._names = {"bos_token": bos, "eos_token": eos}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False) -> str:
        return _compiled_template(self.chat_template).render(messages=messages, add_generation_prompt=False,
                                                              **self._names)


@functools.cache
def _compiled_template(text: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(text)


class _Context:
    """One llama.cpp context: up to `sequences` sequences, each in its own key/value stream of `cells` cells.

    A decode takes at most `piece` tokens (`_run` splits longer feeds), which bounds the memory
    a decode's intermediate results take.
    Not a unified cache: in llama.cpp 0.3.36's unified cache, a sequence whose cells are not in
    the order of its positions (a token placed in a cell another sequence freed, below that
    sequence's earlier cells) gets wrong logits, off by up to 1.2 on the default model (caught by
    tests/contract). In a stream of its own a sequence's cells stay in position order: a
    truncated tail frees the highest cells, and the next tokens fill them again.
    """

    def __init__(self, model: LlamaCppModel, cells: int, sequences: int):
        params = ll.llama_context_default_params()
        params.n_ctx = cells * sequences
        params.n_batch = params.n_ubatch = self.piece = min(cells * sequences, PIECE)
        params.n_seq_max = sequences
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = model.threads
        params.no_perf = True
        self._pointer = ll.llama_init_from_model(model._model, params)
        if not self._pointer:
            raise ModelError(f"model {model.name!r}: llama.cpp could not make a context of {cells} tokens "
                             f"and {sequences} sequences (out of memory?)")
        self.memory = ll.llama_get_memory(self._pointer)
        self.cells, self.sequences = cells, sequences
        self.owner = lambda: None

    @property
    def pointer(self):
        return self._pointer

    def clear(self) -> None:
        # The cells' metadata only: a cell no sequence holds is never read, so its stale data need
        # not be zeroed (zeroing every layer's buffers cost about 5 ms per run on the default model).
        ll.llama_memory_clear(self.memory, False)

    def move(self, seq: int, into: "_Context") -> bool:
        """Copy sequence `seq`'s cached tokens into the same sequence of context `into`; False when
        llama.cpp could not (it loads a sequence's state only into a context of as many streams)."""
        if into.sequences != self.sequences:
            return False
        size = ll.llama_state_seq_get_size(self._pointer, seq)
        if not size:
            return True
        state = (ctypes.c_uint8 * size)()
        ll.llama_state_seq_get_data(self._pointer, state, size, seq)
        return ll.llama_state_seq_set_data(into.pointer, state, size, seq) != 0

    def __del__(self, _free=ll.llama_free):  # bound now: module globals are gone at interpreter exit
        if getattr(self, "_pointer", None):
            _free(self._pointer)
            self._pointer = None


class _Feed:
    """A `llama_batch` over numpy arrays we own: tokens, positions, one sequence id each, and which give logits."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.ones = np.ones(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        int_p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_pointers = (int_p * capacity)(*(ctypes.cast(base + 4 * i, int_p) for i in range(capacity)))

    def batch(self, n: int) -> ll.llama_batch:
        def pointer(array, kind):
            return array.ctypes.data_as(ctypes.POINTER(kind))

        return ll.llama_batch(n_tokens=n, token=pointer(self.token, ll.llama_token), embd=None,
                              pos=pointer(self.pos, ll.llama_pos), n_seq_id=pointer(self.ones, ctypes.c_int32),
                              seq_id=self._seq_pointers, logits=pointer(self.logits, ctypes.c_int8))


class LlamaCppBatch:
    """Rows of token sequences as llama.cpp sequences of one context (see `models.base.Batch`).

    Row r is sequence `_seq[r]`, holding `_rows[r]` at positions 0..len-1. `_last` keeps the
    logits after each row's last token while `_fresh` says they are still that row's. A copied
    sequence (`llama_memory_seq_cp` between streams) is in `_copied` until the next decode: its
    cells are marked at once, but llama.cpp copies their data at the start of that decode.
    """

    def __init__(self, model: LlamaCppModel, rows: int):
        self._model = model
        self._width = len(model.vocabulary)
        self._context = model.context(self, FIRST_CELLS, max(MIN_SEQUENCES, _power_of_two(rows)))
        self._copied: set[int] = set()
        self._rows: list[list[int]] = [[] for _ in range(rows)]
        self._seq = list(range(rows))
        self._last = np.zeros((rows, self._width), dtype=np.float32)
        self._fresh = [False] * rows
        self._feed = _Feed(64)
        self.forward_passes = 0
        self.tokens_fed = 0

    def step(self, feeds: Sequence[Sequence[int]], only=None) -> np.ndarray:
        """Feed each row its new tokens (possibly none) in one llama_decode; the logits (rows, vocab)
        after each row's last token. `only` is ignored: llama.cpp computes every logit anyway."""
        self._check(feeds)
        self._decode(self._inputs(feeds), last_only=True)
        return self._last.copy()

    def step_all(self, feeds: Sequence[Sequence[int]], last: Sequence[int] | None = None) -> list[np.ndarray]:
        """Like `step` (one pass, each token fed once), but per row the logits after every token fed,
        (len(feed), vocab), or after the last `last[r]` of them only: llama.cpp computes the
        logits of the positions flagged; a row fed nothing gets (1, vocab), those after its last token."""
        self._check(feeds)
        inputs = self._inputs(feeds)
        out = self._decode(inputs, last_only=False, tail=last)
        return [logits.copy() if feed else self._last[row][None].copy()
                for row, (feed, logits) in enumerate(zip(feeds, out))]

    def score(self, row: int, continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Log-probabilities of each continuation's tokens after `row`, in one pass over copies of the row.

        A continuation's last token needs no logits after it, so a copy is fed all but that token,
        and only continuations of two or more tokens take a copy. The logits after the row's last
        token are the row's own while fresh; else each copy feeds that token again first."""
        continuations = [list(c) for c in continuations]
        rows = len(self._rows)
        start = len(self._rows[row])
        fresh = list(self._fresh[:rows])
        first = self._last[row].astype(np.float64) if fresh[row] or not start else None
        copied = [i for i, c in enumerate(continuations) if first is None or len(c) > 1]
        out: dict[int, np.ndarray] = {}
        if copied:
            self.select(list(range(rows)) + [row] * len(copied))
            feeds = [[] for _ in range(rows)]
            for at, i in enumerate(copied, rows):
                c = continuations[i]
                feeds.append(self._back_up(at) + c[:-1] if first is None else c[:-1])
            try:
                logits = self._decode(feeds, last_only=False, rows=range(rows, rows + len(copied)))
            finally:
                self.select(list(range(rows)))
                self._fresh = fresh
            out = {i: logits[at] for at, i in enumerate(copied, rows)}
        scores = []
        for i, continuation in enumerate(continuations):
            if not continuation:
                scores.append(np.zeros(0))
                continue
            after = out.get(i, np.zeros((0, self._width), dtype=np.float32)).astype(np.float64)
            if first is not None:  # the logits after the row's last token, then after each fed token
                head = first if start else np.zeros(self._width)  # no logits before the first token: all alike
                after = np.concatenate([head[None], after])
            steps = after[:len(continuation)]
            steps = steps - steps.max(axis=1, keepdims=True)
            logprobs = steps - np.log(np.exp(steps).sum(axis=1, keepdims=True))
            scores.append(logprobs[np.arange(len(continuation)), continuation])
        return scores

    def truncate(self, row: int, n: int) -> None:
        """Forget all but the first `n` tokens of `row`: remove its tail from the key/value cache."""
        tokens = self._rows[row]
        if n >= len(tokens):
            return
        ll.llama_memory_seq_rm(self._context.memory, self._seq[row], n, -1)
        del tokens[n:]
        self._fresh[row] = False

    def select(self, rows: Sequence[int]) -> None:
        """Replace the rows by `rows` of the current ones: a row taken again is a copied sequence
        (llama.cpp copies its cells at the next decode; nothing is recomputed), a row left out is removed."""
        rows = list(rows)
        if len(rows) > self._context.sequences:
            self._grow(self._context.cells, _power_of_two(len(rows)))
        first: dict[int, int] = {}  # old row -> where it is first taken (it keeps its sequence there)
        for at, r in enumerate(rows):
            first.setdefault(r, at)
        for r, seq in enumerate(self._seq):
            if r not in first:
                ll.llama_memory_seq_rm(self._context.memory, seq, -1, -1)
        kept = {self._seq[r] for r in first}
        free = iter(sorted(set(range(self._context.sequences)) - kept))
        seq = []
        for at, r in enumerate(rows):
            if first[r] == at:
                seq.append(self._seq[r])
            else:
                target = next(free)
                ll.llama_memory_seq_rm(self._context.memory, target, -1, -1)
                ll.llama_memory_seq_cp(self._context.memory, self._seq[r], target, -1, -1)
                self._copied.add(target)
                seq.append(target)
        self._seq = seq
        self._rows = [list(self._rows[r]) for r in rows]
        self._last = self._last[rows] if rows else np.zeros((0, self._width), dtype=np.float32)
        self._fresh = [self._fresh[r] for r in rows]

    def tokens(self, row: int) -> list[int]:
        """The token ids `row` holds."""
        return list(self._rows[row])

    def _check(self, feeds) -> None:
        if len(feeds) != len(self._rows):
            raise ValueError(f"step() got {len(feeds)} feeds for {len(self._rows)} rows")

    def _inputs(self, feeds) -> list[list[int]]:
        # A row fed nothing whose last logits are gone (truncated) gets its last token again.
        return [list(feed) or ([] if self._fresh[row] else self._back_up(row)) for row, feed in enumerate(feeds)]

    def _back_up(self, row: int) -> list[int]:
        # Forget the row's last token, to feed it again for the logits after it.
        tokens = self._rows[row]
        if not tokens:
            return []
        token = tokens[-1]
        self.truncate(row, len(tokens) - 1)
        return [token]

    def _decode(self, feeds: list[list[int]], last_only: bool, rows=None, tail=None) -> list[np.ndarray]:
        """Feed the tokens (one llama_decode unless they outgrow the context's batch); keep each fed
        row's last logits in `_last`, and give per row the logits after each token fed (all of them for
        `rows`, every row when None; only the last one with `last_only`; the last `tail[r]` of row r's)."""
        total = sum(map(len, feeds))
        if total == 0:
            return [np.zeros((0, self._width), dtype=np.float32) for _ in feeds]
        longest = max(len(tokens) + len(feed) for tokens, feed in zip(self._rows, feeds))
        if longest > self._model.context_limit:
            raise ModelError(f"model {self._model.name!r}: a sequence of {longest} tokens is longer than the "
                             f"model's context of {self._model.context_limit} tokens")
        if longest > self._context.cells:
            self._grow(_power_of_two(longest))
        # per row, how many of its last positions get logits
        wanted = [0 if not feed else 1 if last_only or rows is not None and r not in rows
                  else len(feed) if tail is None else min(len(feed), max(tail[r], 1)) for r, feed in enumerate(feeds)]
        if self._feed.capacity < total:
            self._feed = _Feed(max(total, 2 * self._feed.capacity))
        feed = self._feed
        at = 0
        for r, tokens in enumerate(feeds):
            n = len(tokens)
            if not n:
                continue
            start = len(self._rows[r])
            feed.token[at:at + n] = tokens
            feed.pos[at:at + n] = np.arange(start, start + n)
            feed.seq[at:at + n] = self._seq[r]
            feed.logits[at:at + n - wanted[r]] = 0
            feed.logits[at + n - wanted[r]:at + n] = 1
            at += n
        logits = self._run(feed, total)
        self._copied.clear()
        self.forward_passes += 1
        self.tokens_fed += total
        if last_only and all(feeds):  # one logits row per row, in order: they are the new `_last`
            self._last = logits
        out, at = [], 0
        for r, tokens in enumerate(feeds):
            n = len(tokens)
            if not n:
                out.append(np.zeros((0, self._width), dtype=np.float32))
                continue
            k = wanted[r]
            out.append(logits[at:at + k])
            if self._last is not logits:
                self._last[r] = logits[at + k - 1]
            self._rows[r].extend(tokens)
            self._fresh[r] = True
            at += k
        return out

    def _run(self, feed: _Feed, total: int) -> np.ndarray:
        """Decode the feed's first `total` tokens (in pieces of the context's batch size); the logits
        of the positions flagged, in order, (n, vocab) float32 (a copy: llama.cpp reuses its buffer)."""
        out = np.empty((int(np.count_nonzero(feed.logits[:total])), self._width), dtype=np.float32)
        step, got = self._context.piece, 0
        for start in range(0, total, step):
            n = min(step, total - start)
            part = feed if start == 0 else _shifted(feed, start, n)
            code = ll.llama_decode(self._context.pointer, part.batch(n))
            if code != 0:
                raise ModelError(f"model {self._model.name!r}: llama_decode failed (code {code}) "
                                 f"on {n} tokens in {len(self._rows)} rows")
            for i in np.flatnonzero(part.logits[:n]):  # by batch index: llama.cpp may compute them out of order
                data = ll.llama_get_logits_ith(self._context.pointer, int(i))
                out[got] = np.ctypeslib.as_array(data, shape=(self._width,))
                got += 1
        return out

    def _grow(self, cells: int, sequences: int | None = None) -> None:
        """Move every row into a larger context: each sequence's cached tokens copied where llama.cpp
        can (as many streams, no copy pending), else fed again."""
        sequences = sequences or self._context.sequences
        if sequences > 256:
            raise ModelError(f"model {self._model.name!r}: llama.cpp runs at most 256 rows in one batch, "
                             f"{sequences} were asked for")
        old = self._context
        new = self._model.context(self, max(cells, old.cells), sequences)
        again = [r for r, seq in enumerate(self._seq) if seq in self._copied or not old.move(seq, new)]
        self._copied.clear()
        self._context = new
        self._model.release(old)
        if again:
            feeds = [[] for _ in self._rows]
            for r in again:
                ll.llama_memory_seq_rm(new.memory, self._seq[r], -1, -1)
                feeds[r], self._rows[r] = self._rows[r], []
            self._decode(feeds, last_only=True)


def _shifted(feed: _Feed, start: int, n: int) -> _Feed:
    part = _Feed(n)
    for name in ("token", "pos", "seq", "logits"):
        getattr(part, name)[:n] = getattr(feed, name)[start:start + n]
    return part


def _power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
