"""Runs compiled queries on a model: the one place where program, constraints and model meet.

Each result being decoded is a `Branch`: a running query generator, its prompt, its tokens and
the guide of the hole it is filling. All branches share one `Batch` (one row each), so sampling
`n` results or running many inputs costs one batched forward pass per step. A step:

1. settle: every branch runs its Python until it needs the model (a hole to decode) or ends;
   forced text (fast-forward) is appended without asking the model;
2. forward: one pass over all rows, each fed the tokens it queued since the last pass;
3. choose: the decoder picks each branch's next token from the masked logits.
"""
from __future__ import annotations

import copy
import difflib
import functools
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import decoders, runtime
from .compiler import DECODERS
from .constraints import compile_guide, terms
from .constraints.guide import DEFAULT_HOLE_TOKENS
from .decoders import DecoderOptions
from .errors import ConstraintError, LmqlError, QueryArgumentError, QueryRuntimeError
from .index import TokenIndex


@dataclass
class TokenRecord:
    """One token of a hole, for `--trace`."""
    variable: str
    token: int
    text: str
    allowed: int          # tokens the mask allowed at this step (0 for forced tokens)
    how: str              # "chosen" or "forced"
    logprob: float        # under the masked distribution the decoder chose from
    seconds: float        # since the previous token of the hole (or its start): forward pass and choice


@dataclass
class HoleEnd:
    """Why a hole's value ended, for the trace and `--json` (docs/language.md, "Where a value ends")."""
    variable: str
    reason: str    # end, following text, not a continuation, stop, complete, budget, default bound, max_len, max_tokens
    message: str


_CUT = ("budget", "default bound", "max_len", "max_tokens")  # reasons that cut a value the model might have gone on with


@dataclass
class Trace:
    forward_passes: int = 0    # passes this result's row took part in
    tokens_fed: int = 0        # tokens that went through the model for this result
    prompt_tokens: int = 0     # tokens of prompt text (chat markers included)
    generated_tokens: int = 0  # hole tokens chosen by the decoder
    forced_tokens: int = 0     # hole tokens appended without a choice (fast-forward)
    mask_seconds: float = 0.0  # time spent building and applying masks
    notes: list[str] = field(default_factory=list)
    tokens: list[TokenRecord] | None = None
    ends: list[HoleEnd] = field(default_factory=list)


@dataclass
class Result:
    prompt: str
    variables: dict[str, Any]
    value: Any = None
    distribution: dict[str, float] | None = None            # value → probability
    distribution_logprobs: dict[str, float] | None = None   # value → total log-probability
    logprobs: dict[str, float] = field(default_factory=dict)
    logprob: float = 0.0
    trace: Trace = field(default_factory=Trace)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "variables": _jsonable(self.variables),
                "distribution": self.distribution, "value": _jsonable(self.value),
                "ends": [{"variable": e.variable, "reason": e.reason, "message": e.message}
                         for e in self.trace.ends],
                "notes": list(self.trace.notes)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    import dataclasses
    if dataclasses.is_dataclass(x):
        return _jsonable(dataclasses.asdict(x))
    if hasattr(x, "model_dump"):
        return _jsonable(x.model_dump())
    return repr(x)


@dataclass
class Frame:
    """A running query generator: the top-level query, or a nested one inside a hole."""
    gen: Iterator
    program: Any
    variables: dict[str, Any] = field(default_factory=dict)
    marker: tuple[int, int] | None = None   # (prompt pieces, tokens) where a nested query began
    hole: runtime.Hole | None = None        # the hole a nested query fills


_START = object()


class Branch:
    """One result being decoded."""

    def __init__(self, runner: "Runner", start: Callable[[], Iterator], program: Any, row: int):
        self.runner = runner
        self.start = start
        self.row = row
        self.frames = [Frame(start(), program)]
        self.variables = self.frames[0].variables  # the top-level query's, kept after it returns
        self.sent: list[Any] = []          # values sent to the top generator, to replay it for a fork
        self.prompt: list[str] = []
        self.tokens: list[int] = list(runner.model.bos_ids)
        self.fed = 0                       # how many of self.tokens the batch row holds
        self.text = ""                     # prompt text not tokenized yet
        self.role: str | None = None
        self.chatted = False               # a chat role was opened
        self.healable = False              # the last token came from prompt text
        self.hole: runtime.Hole | None = None
        self.guide = None
        self.hole_start = 0
        self.heal_prefix = b""             # prompt bytes the hole's first token re-spells (healing)
        self.end_wish: int | None = None   # the model's own pick among the tokens that would end the value
        self.hole_logprob = 0.0
        self.clock = 0.0                   # when the hole's last token was taken (for --trace)
        self.done = False
        self.value: Any = None
        self.logprob = 0.0
        self.logprobs: dict[str, float] = {}
        self.distribution = self.distribution_logprobs = None
        self.trace = Trace(tokens=[] if runner.record_tokens else None)
        self.trace.prompt_tokens = len(self.tokens)
        self._resume_value: Any = _START

    # ---- running the query's Python ----------------------------------------------------

    def settle(self) -> None:
        """Run until the branch needs logits for a hole, or ends."""
        while not self.done:
            if self.guide is None:
                self._resume()
                continue
            if self._budget_spent():
                self._end_hole_early()
                continue
            if self._fast_forward() or self._only_choice():
                continue
            return

    def needs_logits(self) -> bool:
        return not self.done and self.guide is not None

    def _resume(self) -> None:
        value, self._resume_value = self._resume_value, None
        frame = self.frames[-1]
        try:
            event = next(frame.gen) if value is _START else frame.gen.send(value)
        except StopIteration as stop:
            self._frame_returned(stop.value)
            return
        except LmqlError:
            raise
        except Exception as e:
            raise self._runtime_error(e) from e
        if len(self.frames) == 1:
            self.sent.append(value)
        if isinstance(event, runtime.Text):
            self._append_text(event.text)
        elif isinstance(event, runtime.Role):
            self._open_role(event.role)
        elif isinstance(event, runtime.Hole):
            self._start_hole(event)
        else:
            raise QueryRuntimeError(f"a query yielded {event!r}; queries must not use 'yield' themselves")

    def _frame_returned(self, value: Any) -> None:
        frame = self.frames.pop()
        if not self.frames:
            self._close_role()
            self.done, self.value = True, value
            self.runner.emit(self, "", "end")
            return
        # A nested query's text is replaced by its return value.
        pieces, ntokens = frame.marker
        del self.prompt[pieces:]
        self._truncate(ntokens)
        self.text = ""
        self.frames[-1].variables[frame.hole.name] = value
        self._append_text(str(value), kind="value")
        self._resume_value = value

    def _at_hole(self, e: LmqlError, hole: runtime.Hole | None = None) -> LmqlError:
        """`e`, positioned at the hole being decoded when it has no position yet."""
        hole, program = hole or self.hole, self.frames[-1].program
        return e.locate(file=program.filename, line=hole.line, column=hole.column,
                        source_line=program.source_line(hole.line))

    def _runtime_error(self, e: Exception) -> LmqlError:
        programs = {f.program.filename: f.program for f in self.frames}
        line = None
        for tb in traceback.extract_tb(e.__traceback__):
            if tb.filename in programs:
                line, program = tb.lineno, programs[tb.filename]
        message = f"{type(e).__name__}: {e}"
        if line is None:
            return QueryRuntimeError(message)
        return QueryRuntimeError(message, file=program.filename, line=line, column=1,
                                 source_line=program.source_line(line))

    # ---- prompt text and tokens --------------------------------------------------------

    def _append_text(self, text: str, kind: str = "prompt") -> None:
        if text:
            self.prompt.append(text)
            self.text += text
            self.runner.emit(self, text, kind)

    def _flush_text(self) -> None:
        if self.text:
            ids = self.runner.model.encode(self.text)
            self.tokens += ids
            self.trace.prompt_tokens += len(ids)
            self.healable = bool(ids)
            self.text = ""

    def _append_special(self, text: str) -> None:
        """Chat markers: special tokens that belong to the prompt but not to its visible text."""
        self._flush_text()
        ids = self.runner.model.encode(text, special=True) if text else []
        self.tokens += ids
        self.trace.prompt_tokens += len(ids)
        self.healable = False
        self.prompt.append(text)
        self.runner.emit(self, text, "role")

    def _open_role(self, role: str) -> None:
        first = self.role is None and not self.chatted
        self._close_role()
        self.role, self.chatted = role, True
        if first:  # the template's default system message, when the chat starts with another role
            self._append_special(self.runner.model.chat_preamble(role))
        self._append_special(self.runner.model.role_markers(role)[0])

    def _close_role(self) -> None:
        if self.role is not None:
            self._append_special(self.runner.model.role_markers(self.role)[1])
            self.role = None

    def _truncate(self, n: int) -> None:
        """Forget every token after the first n."""
        del self.tokens[n:]
        if self.fed > n:
            self.runner.batch.truncate(self.row, n)
            self.fed = n

    # ---- holes -------------------------------------------------------------------------

    def _resolver(self, hole: runtime.Hole) -> Callable[[str], Any]:
        variables = self.frames[-1].variables

        def resolve(name: str) -> Any:
            if name == hole.name:
                return terms.Var(name)
            if name in hole.later or name not in variables:
                return terms.UNKNOWN
            return variables[name]
        return resolve

    def _start_hole(self, hole: runtime.Hole) -> None:
        if isinstance(hole.type, runtime.Nested) or runtime.is_query_function(hole.type):
            self._start_nested(hole)
            return
        if hole.distribution is not None:
            self._score_distribution(hole)
            return
        self._flush_text()
        try:
            term = hole.where(self._resolver(hole)) if hole.where else None
            if term is terms.UNKNOWN:
                term = None
            if term is False:
                raise ConstraintError(f"the constraint on {hole.name} is false before decoding starts")
            bound = DEFAULT_HOLE_TOKENS if self.runner.options.max_tokens is None else None
            guide = compile_guide(None if term is True else term, hole.name, self.runner.index,
                                  hole_type=hole.type, bound=bound)
        except LmqlError as e:
            raise self._at_hole(e, hole)
        except Exception as e:
            raise self._runtime_error(e) from e
        self.heal_prefix = b""
        if self.runner.options.healing and self.healable and len(self.tokens) > len(self.runner.model.bos_ids):
            prefix = self.runner.model.vocabulary.tokens[self.tokens[-1]]
            if prefix and guide.heal(prefix):
                self._truncate(len(self.tokens) - 1)
                self.trace.prompt_tokens -= 1
                self.heal_prefix = prefix
        self.healable = False
        self.hole, self.guide = hole, guide
        self.hole_start = len(self.tokens)
        self.hole_logprob = 0.0
        self.clock = time.perf_counter()
        if len(self.tokens) >= self.runner.options.max_len:
            raise self._at_hole(ConstraintError(f"max_len={self.runner.options.max_len} is reached by the "
                                                f"prompt before {hole.name} can be decoded"))

    def _budget_spent(self) -> bool:
        options = self.runner.options
        if len(self.tokens) >= options.max_len:
            return True
        return options.max_tokens is not None and len(self.tokens) - self.hole_start >= options.max_tokens

    def _end_hole_early(self) -> None:
        """A token budget is spent: end the hole if its text is acceptable, else fail."""
        eos = self.runner.eos_id
        if eos is None or not self.guide.allowed()[eos]:
            raise self._at_hole(ConstraintError(
                f"{self.hole.name} reached its token budget before its value satisfied the constraint"))
        options = self.runner.options
        reason = "max_len" if len(self.tokens) >= options.max_len else "max_tokens"
        self.guide.advance(eos)
        self._finish_hole(f"{reason}={getattr(options, reason)}", reason)

    def _fast_forward(self) -> bool:
        """Append the text the guide forces, without a forward pass; True if anything was appended.

        Unless the forced text completes the hole, its last token is held back: the text that
        follows may merge with it (a forced " " before "neutral" is better written " neutral").
        """
        forced = self.guide.forced()
        if not forced:
            return False
        try:
            text = forced.decode("utf-8")
        except UnicodeDecodeError:
            return False
        ids = self.runner.model.encode(text)
        probe = self.guide.copy()
        for tok in ids:
            if not probe.allowed()[tok]:
                return False  # the tokenizer spells it in a way the guide does not allow
            probe.advance(tok)
        if not probe.is_finished():
            ids = ids[:-1]
        appended = False
        for tok in ids:
            if self.guide is None or self._budget_spent():
                break
            self._take(tok, 0.0, "forced", 0)
            appended = True
        return appended

    def allowed(self) -> np.ndarray:
        """The guide's mask (vocab,); a hole that nothing can continue is an error at the hole."""
        try:
            return self.guide.allowed()
        except LmqlError as e:
            raise self._at_hole(e)

    def _only_choice(self) -> bool:
        """Take the token when the mask allows exactly one (a healed ':' re-spelt, an end of sequence)."""
        allowed = self.allowed()
        if self.guide.allowed_count != 1:
            return False
        self._take(int(np.flatnonzero(allowed)[0]), 0.0, "forced", 1)
        return True

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """The logits (vocab,) under the mask, the value's end standing for every token that leaves it."""
        t0 = time.perf_counter()
        allowed = self.allowed()
        scores = decoders.masked(logits, allowed)
        self.end_wish = decoders.with_end(scores, logits.numpy(), allowed, self.runner.eos_ids,
                                          self.runner.after_text)
        self.trace.mask_seconds += time.perf_counter() - t0
        return scores

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> None:
        """Pick this branch's next token from its logits (vocab,) with the decoder's rule."""
        scores = self.scores(logits)
        if self.runner.options.name == "sample":
            tok, logprob = decoders.pick_sample(scores, self.runner.options, generator)
        else:
            tok = decoders.pick_argmax(scores)
            logprob = decoders.log_softmax_at(scores, tok)
        self._take(tok, logprob, "chosen", self.guide.allowed_count)

    def _take(self, tok: int, logprob: float, how: str, allowed: int) -> None:
        if self.trace.tokens is not None:
            now = time.perf_counter()
            text = self.runner.model.vocabulary.tokens[tok].decode("utf-8", errors="replace")
            self.trace.tokens.append(TokenRecord(self.hole.name, tok, text, allowed, how, logprob,
                                                 now - self.clock))
            self.clock = now
        if how == "forced":
            self.trace.forced_tokens += 1
        else:
            self.trace.generated_tokens += 1
        self.hole_logprob += logprob
        self.logprob += logprob
        wish, self.end_wish = self.end_wish, None
        if tok not in self.runner.model.vocabulary.eos_ids:
            self.tokens.append(tok)
        self.guide.advance(tok)
        if self.guide.is_finished():
            self._finish_hole(*self._why_ended(wish))

    def _why_ended(self, wish: int | None) -> tuple[str, str]:
        """(message, reason) for a hole its guide has just finished; `wish`: the model's pick when it ended."""
        guide, vocab = self.guide, self.runner.model.vocabulary
        how = guide.ended_by
        if how == "end":
            if wish is None or wish in vocab.eos_ids:
                return "the model ended it", "end"
            text, following = vocab.tokens[wish], self.hole.following.encode()
            if following and (following.startswith(text) or text.startswith(following)):
                return f"the model wrote the following text {text.decode(errors='replace')!r}", "following text"
            return (f"the model's next token {text.decode(errors='replace')!r} cannot continue the value",
                    "not a continuation")
        if how == "stop":
            return "a stop phrase", "stop"
        if how == "budget" and getattr(guide, "default_bound", False):
            return f"the default bound of {DEFAULT_HOLE_TOKENS} tokens per hole", "default bound"
        if how == "budget":
            return f"its token budget ({guide.tokens_used} tokens)", "budget"
        return "its constraint allows no longer value", "complete"

    def _finish_hole(self, message: str, reason: str) -> None:
        hole, guide = self.hole, self.guide
        try:
            text, value = guide.text(), guide.value()
            for fn in reversed(hole.decorators):
                value = fn(value)
                text = str(value)
        except LmqlError as e:
            raise self._at_hole(e)
        except Exception as e:
            raise self._runtime_error(e) from e
        self._reconcile(text)
        self.trace.ends.append(HoleEnd(hole.name, reason, f"ended: {message}"))
        if reason in _CUT:
            self.trace.notes.append(f"{hole.name}: ended at {message}")
        self.hole = self.guide = None
        self.prompt.append(text)
        self.runner.emit(self, text, "value")
        self.frames[-1].variables[hole.name] = value
        self.logprobs[hole.name] = self.hole_logprob
        self._resume_value = value

    def _reconcile(self, text: str) -> None:
        """Make the hole's tokens spell exactly its final text (a dropped stop phrase, a decorator)."""
        vocab = self.runner.model.vocabulary.tokens
        want = self.heal_prefix + text.encode()
        have = b"".join(vocab[t] for t in self.tokens[self.hole_start:])
        if have == want:
            return
        keep, length = 0, 0
        for t in self.tokens[self.hole_start:]:
            if not want.startswith(have[:length + len(vocab[t])]):
                break
            length += len(vocab[t])
            keep += 1
        self._truncate(self.hole_start + keep)
        rest = want[length:].decode("utf-8", errors="replace")
        if rest:
            ids = self.runner.model.encode(rest)
            self.tokens += ids
            self.trace.prompt_tokens += len(ids)

    def _start_nested(self, hole: runtime.Hole) -> None:
        call = hole.type if isinstance(hole.type, runtime.Nested) else runtime.Nested(hole.type)
        self._flush_text()
        try:
            gen, program = call.query.__lmql_start__(*call.args, **call.kwargs)
        except LmqlError:
            raise
        except Exception as e:
            raise self._runtime_error(e) from e
        self.frames.append(Frame(gen, program, marker=(len(self.prompt), len(self.tokens)), hole=hole))
        self._resume_value = _START

    def _score_distribution(self, hole: runtime.Hole) -> None:
        """`distribution X in [...]`: score every value from the same prefix; X gets the most likely."""
        try:
            values = list(hole.distribution())
        except Exception as e:
            raise self._runtime_error(e) from e
        if not values or not all(isinstance(v, str) and v for v in values):
            raise self._at_hole(ConstraintError(f"distribution {hole.name} needs a non-empty list of "
                                                f"non-empty strings, got {values!r}"), hole)
        self._flush_text()
        logprobs = self.runner.score(self, [self.runner.model.encode(v) for v in values])
        scores = dict(zip(values, logprobs))
        best = max(values, key=scores.get)
        self.distribution = decoders.normalise(scores)
        self.distribution_logprobs = scores
        self.logprobs[hole.name] = scores[best]
        self.logprob += scores[best]
        self.healable = False
        self.prompt.append(best)
        self.text = ""
        self.tokens += self.runner.model.encode(best)
        self.runner.emit(self, best, "value")
        self.frames[-1].variables[hole.name] = best
        self._resume_value = best

    def result(self) -> Result:
        return Result(prompt="".join(self.prompt), variables=dict(self.variables),
                      value=self.value, distribution=self.distribution,
                      distribution_logprobs=self.distribution_logprobs, logprobs=dict(self.logprobs),
                      logprob=self.logprob, trace=self.trace)


class Runner:
    """Decodes a set of branches together over one batch."""

    def __init__(self, model, index: TokenIndex, options: DecoderOptions,
                 on_text: Callable[[int, str, str], None] | None = None, record_tokens: bool = False):
        self.model = model
        self.index = index
        self.options = options
        self.on_text = on_text
        self.record_tokens = record_tokens
        self.eos_id = min(model.vocabulary.eos_ids) if model.vocabulary.eos_ids else None
        self.eos_ids = np.array(sorted(model.vocabulary.eos_ids), np.int64)
        self.after_text = _after_text(model.vocabulary)
        self._batch = None
        self.branches: list[Branch] = []

    @functools.cached_property
    def generator(self) -> torch.Generator:
        """The sampling decoder's random numbers (seeded by `seed` when given)."""
        seed = self.options.seed if self.options.seed is not None else torch.seed() % 2**63
        return torch.Generator().manual_seed(seed)

    @property
    def batch(self):
        """The model batch, one row per branch; made when first needed (a query may need no forward pass)."""
        if self._batch is None:
            self._batch = self.model.batch(len(self.branches))
        return self._batch

    def emit(self, branch: Branch, text: str, kind: str) -> None:
        if self.on_text is not None:
            self.on_text(branch.row, text, kind)

    def run(self, starts: list[tuple[Callable[[], Iterator], Any]]) -> list[Result]:
        self._batch = None
        self.branches = []
        for row, (start, program) in enumerate(starts):
            self.branches.append(Branch(self, start, program, row))
        if self.options.name == "beam":
            return self._run_beam()
        while active := self._settle():
            logits = self._forward(active)
            for b in active:
                b.choose(logits[b.row], self.generator if self.options.name == "sample" else None)
        return [b.result() for b in self.branches]

    def _settle(self) -> list[Branch]:
        """Let every branch run until it needs the model; the branches that now need logits."""
        for b in self.branches:
            b.settle()
        return [b for b in self.branches if b.needs_logits()]

    def _forward(self, active: list[Branch], masked: bool = True) -> torch.Tensor:
        """One forward pass: each active branch feeds the tokens it queued.  → (rows, vocab)

        With `masked`, a branch whose mask allows few tokens asks for their logits only (the
        others may come back -inf); the decoders never look past the mask.
        """
        feeds: list[list[int]] = [[] for _ in self.branches]
        only: list[np.ndarray | None] = [None] * len(self.branches)
        for b in active:
            feeds[b.row] = b.tokens[b.fed:]
            b.trace.forward_passes += 1
            b.trace.tokens_fed += len(feeds[b.row])
            b.fed = len(b.tokens)
            if masked:
                only[b.row] = self._few_allowed(b)
        rows = len(feeds)
        if rows > 1 and self.batch.forward_passes == 0 and all(f == feeds[0] for f in feeds):
            # n samples of one prompt: encode the prompt once, then copy its cache to every row.
            self.batch.select([0])
            logits = self.batch.step(feeds[:1], only=only[:1])
            self.batch.select([0] * rows)
            return logits.expand(rows, -1)
        return self.batch.step(feeds, only=only)

    def _few_allowed(self, b: Branch) -> np.ndarray | None:
        """The ids `b`'s mask allows, when they are few (an eighth of the vocabulary at most), else None."""
        allowed = b.allowed()
        if b.guide.allowed_count > len(allowed) // 8 or allowed[self.eos_ids].any():
            return None  # many tokens, or the value may end: its end's score needs every logit
        return decoders.allowed_ids(allowed)

    def score(self, branch: Branch, candidates: list[list[int]]) -> list[float]:
        """Total log-probability of each candidate continuing `branch`'s prompt, in one batched pass."""
        first = self._forward([branch], masked=False)[branch.row]
        rows = len(self.branches)
        self.batch.select(list(range(rows)) + [branch.row] * len(candidates))
        out = self.batch.step([[] for _ in range(rows)] + candidates, all_logits=True)
        self.batch.select(list(range(rows)))
        branch.trace.forward_passes += 1
        branch.trace.tokens_fed += sum(len(c) for c in candidates)
        return [decoders.continuation_logprob(first, out[rows + i], c) for i, c in enumerate(candidates)]

    # ---- beam search -------------------------------------------------------------------

    def _run_beam(self) -> list[Result]:
        """Keep the n most likely branches; each step extends every live one by its best tokens."""
        n = self.options.n
        if len(self.branches) != 1:
            raise QueryArgumentError("beam decoding runs one input at a time")
        while active := self._settle():
            logits = self._forward(active)
            candidates = []  # (total logprob, branch, token, token logprob, allowed count)
            for b in self.branches:
                if not b.needs_logits():
                    candidates.append((b.logprob, b, None, 0.0, 0))
                    continue
                scores = b.scores(logits[b.row])
                for tok, l in decoders.top_candidates(scores, n):
                    candidates.append((b.logprob + l, b, tok, l, b.guide.allowed_count))
            candidates.sort(key=lambda c: -c[0])
            # Two tokenizations of the same text are one result: keep the more likely.
            chosen, texts = [], set()
            for c in candidates:
                text = self._text_after(c[1], c[2])
                if text not in texts:
                    texts.add(text)
                    chosen.append(c)
                if len(chosen) == n:
                    break
            used: set[int] = set()
            new_branches = []
            for _, b, tok, l, count in chosen:
                nb = b if id(b) not in used else self._fork(b)
                used.add(id(b))
                new_branches.append((nb, b.row, tok, l, count))
            self.batch.select([old_row for _, old_row, *_ in new_branches])
            self.branches = []
            for row, (nb, _, tok, l, count) in enumerate(new_branches):
                nb.row = row
                self.branches.append(nb)
                if tok is not None:
                    nb._take(tok, l, "chosen", count)
        results, seen = [], set()
        for r in sorted((b.result() for b in self.branches), key=lambda r: -r.logprob):
            if r.prompt not in seen:  # several tokenizations of one text: one result, the likeliest
                seen.add(r.prompt)
                results.append(r)
        return results

    def _text_after(self, b: Branch, tok: int | None) -> tuple[str, bytes]:
        """The text branch `b` spells once it takes `tok` (None: as it is)."""
        vocab = self.model.vocabulary.tokens
        hole = b"".join(vocab[t] for t in b.tokens[b.hole_start:]) if b.guide is not None else b""
        return "".join(b.prompt), hole + (vocab[tok] if tok is not None else b"")

    def _fork(self, b: Branch) -> Branch:
        """A copy of branch `b` with its own generator, rebuilt by replaying the values `b` was sent."""
        if len(b.frames) > 1:
            raise QueryArgumentError("beam decoding does not support nested queries")
        nb = copy.copy(b)
        gen = b.start()
        for value in b.sent:
            (next(gen) if value is _START else gen.send(value))
        nb.frames = [Frame(gen, b.frames[0].program, dict(b.variables))]
        nb.variables = nb.frames[0].variables
        nb.sent = list(b.sent)
        nb.prompt = list(b.prompt)
        nb.tokens = list(b.tokens)
        nb.logprobs = dict(b.logprobs)
        nb.trace = copy.deepcopy(b.trace)
        if b.guide is not None:
            nb.guide = b.guide.copy()
        return nb


@functools.lru_cache(maxsize=8)
def _after_text(vocab) -> np.ndarray:
    """(vocab,) bool: the tokens that may follow a complete text (not special, not a UTF-8 continuation byte)."""
    return np.array([i not in vocab.special_ids and bool(t) and not 0x80 <= t[0] < 0xC0
                     for i, t in enumerate(vocab.tokens)])


def run_program(program, model, index: TokenIndex, options: DecoderOptions,
                starts: list[tuple[Callable[[], Iterator], Any]], *, on_text=None,
                record_tokens: bool = False) -> list[Result]:
    """Decode each start (a generator factory and its program) on `model`; one result each (n for beam)."""
    return Runner(model, index, options, on_text=on_text, record_tokens=record_tokens).run(starts)


def check_inputs(program, inputs: dict[str, Any]) -> None:
    """Every input the query reads is given; a QueryArgumentError names the missing ones."""
    missing = [n for n in program.inputs if n not in inputs]
    decoder = program.query.decoder is None and _misspelt_decoder(missing)
    if decoder:
        raise QueryArgumentError(f"'{decoder[0]}' is not a decoder; did you mean '{decoder[1]}'?",
                                 file=program.filename, line=1, column=1, source_line=program.source_line(1))
    if missing:
        names = ", ".join(missing)
        raise QueryArgumentError(f"the query needs input{'s' if len(missing) > 1 else ''} {names}: "
                                 f"pass {' '.join(f'--arg {m}=...' for m in missing)} on the command line "
                                 f"or {', '.join(f'{m}=...' for m in missing)} in Python",
                                 file=program.filename)


def _misspelt_decoder(names: list[str]) -> tuple[str, str] | None:
    """(name, decoder) when a would-be input is a misspelt decoder line such as `sampel(n=2)`."""
    for name in names:
        close = difflib.get_close_matches(name, DECODERS, 1, cutoff=0.75)
        if close:
            return name, close[0]
    return None
