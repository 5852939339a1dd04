"""Runs compiled queries on a model: the one decode loop, where program, constraints and model meet.

Each result being decoded is a `Branch` (branch.py) with one row of a shared `Batch`, so `n`
samples, many inputs, beam search and nested queries all cost one batched forward pass per step.
Every decoder goes through the same loop (`Runner.run`):

1. settle: every branch runs its Python until it needs the model (a hole to fill) or ends;
   text the guide forces (fast-forward) and lone allowed tokens are appended without a pass;
2. forward: one pass over all rows, each fed the tokens it queued → numpy logits (rows, vocab);
3. step: the decoder picks the next rows from the masked logits, (parent_row, token, logprob);
4. apply: rows the decoder dropped or continued twice are selected (forks), then each takes its token.

With speculative drafts (speculate.py), a pass may also feed each row a draft after its queued
tokens; steps 3 and 4 then repeat at each draft position while the decoder agrees with it
(`_verify`), and the rejected positions are truncated.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np

from . import decoders, runcache, speculate, stops
from . import events as events_
from .branch import Branch
from .deadline import Expired
from .decoders import Choice
from .errors import ModelError, QueryArgumentError
from .index import TokenIndex
from .options import DecoderOptions
from .result import Result

__all__ = ["Runner", "run_program"]


class Runner:
    """Decodes a set of branches together over one batch."""

    def __init__(self, model, index: TokenIndex, options: DecoderOptions,
                 on_text: Callable[[int, str, str], None] | None = None, record_tokens: bool = False,
                 events: Callable[[events_.Event], None] | None = None, detail: int = 0, cache: Any = None):
        self.model = model
        self.index = index
        self.options = options
        self.decoder = decoders.for_options(options)
        self.on_text = on_text
        self.record_tokens = record_tokens
        self.events = events               # the event sink (events.py); None: no events are made
        self.detail = detail               # > 0: token events carry p_raw and the top `detail` alternatives
        self.cache = cache                 # the run cache setting (runcache.from_setting)
        self.replays: runcache.Replays | None = None
        self.eos_id = min(model.vocabulary.eos_ids) if model.vocabulary.eos_ids else None
        self.eos_ids = np.array(sorted(model.vocabulary.eos_ids), np.int64)
        self.after_text = _after_text(model.vocabulary)
        # A model on a server (models/remote.py) fills each hole with one request, not token by token.
        self.served = callable(getattr(model, "fill", None))
        self.spell = speculate.Spellings(model.encode)  # forced text → its tokens (fast-forward, drafts)
        self.drafter = speculate.for_options(options, model, self.spell)  # None: one token per pass
        self._batch = None
        self.branches: list[Branch] = []

    @property
    def batch(self):
        """The model batch, one row per branch; made when first needed (a query may need no forward pass)."""
        if self._batch is None:
            self._batch = self.model.batch(len(self.branches))
        return self._batch

    @property
    def watching(self) -> bool:
        """Whether the run makes events (a sink, or `trace=True`): results then keep theirs (trace.events)."""
        return self.events is not None or self.record_tokens

    def emit(self, branch: Branch, text: str, kind: str) -> None:
        if self.on_text is not None:
            self.on_text(branch.row, text, kind)
        # A filled hole's text comes with its hole_end event; the result's with the api's result event.
        if self.watching and kind != "end" and not (kind == "value" and branch.filling is not None):
            self.report(branch, events_.Text(branch.row, text, branch.prompt.role, kind))

    def report(self, branch: Branch, event: events_.Event) -> None:
        """One event of `branch`: kept on its result's trace, and given to the sink."""
        branch.trace.events.append(event)
        if self.events is not None:
            self.events(event)

    def run(self, starts: list[tuple[Callable[[], Iterator], Any]]) -> list[Result]:
        if not self.options.decoder.batches_inputs and len(starts) != 1:
            raise QueryArgumentError(f"{self.options.name} decoding runs one input at a time")
        if self.served and self.options.name == "beam":
            raise ModelError(f"beam decoding needs every row's logits under our masks, which {self.model.name} "
                             "(a model on a server) does not give; use argmax or sample")
        self._batch = None
        self.replays = runcache.Replays.for_run(self.cache, self.model, self.options, self.decoder, len(starts))
        self.branches = [Branch(self, start, program, row) for row, (start, program) in enumerate(starts)]
        try:
            while active := self._settle():
                stops.check()  # Ctrl-C or SIGTERM that a finalizer swallowed (stops.py)
                if self.served:
                    self._ask(active)                                # one request per row's hole, all at once
                    continue
                if drafts := self._drafts(active):
                    self._verify(active, drafts)                     # several tokens from one pass
                    continue
                logits = self._forward(active, masked=not self.detail)  # (rows, vocab) float32
                if self.detail:
                    self._look(active, logits)                       # the unmasked distribution, for events
                t0 = time.perf_counter()
                rows = [b.decode_row() for b in self.branches]       # each row's mask (None: complete)
                logits = self._with_ends(logits, rows)               # a value's end: every token that leaves it
                choices = self.decoder.step(logits, rows)            # the next rows: (parent_row, token, logprob)
                spent = (time.perf_counter() - t0) / len(active)
                for b in active:
                    b.trace.mask_seconds += spent
                self._apply(choices)                                 # fork/select rows, take the tokens
        except (Expired, KeyboardInterrupt) as stop:  # a timeout or Ctrl-C: keep what each row had decoded
            stop.decoded = [b.decoded() for b in self.branches]
            raise
        finally:
            # The branches and the runner refer to each other, so the batch would wait for the cycle
            # collector: let it go now, and its engine state (a llama.cpp context) serve the next run.
            self._batch = None
        return self.decoder.rank([b.result() for b in self.branches])

    def _settle(self) -> list[Branch]:
        """Let every branch run until it needs the model; the branches that now need logits."""
        for b in self.branches:
            b.settle()
        return [b for b in self.branches if b.needs_logits()]

    def _ask(self, active: list[Branch]) -> None:
        """A served model fills each active row's hole: the requests go at once (a server batches them), the texts are taken in row order."""
        if len(active) == 1:
            replies = [active[0].filling.ask(active[0].row)]
        else:
            with ThreadPoolExecutor(max_workers=min(len(active), self.SERVED_REQUESTS)) as pool:
                replies = list(pool.map(lambda b: b.filling.ask(b.row), active))
        for b, filled in zip(active, replies):
            b.accept(filled)

    SERVED_REQUESTS = 16  # requests in flight at once to a server

    def _forward(self, active: list[Branch], masked: bool = True) -> np.ndarray:
        """One forward pass: each active branch feeds the tokens it queued.  → (rows, vocab)

        With `masked`, a branch whose mask allows few tokens asks for their logits only (the
        others may come back -inf); the decoders never look past the mask.
        """
        one_prompt = self._one_prompt(active)  # asked before the rows' queues are taken
        feeds: list[list[int]] = [[] for _ in self.branches]
        only: list[np.ndarray | None] = [None] * len(self.branches)
        for b in active:
            feeds[b.row] = b.prompt.queued()
            b.trace.forward_passes += 1
            b.trace.tokens_fed += len(feeds[b.row])
            if masked:
                only[b.row] = self._few_allowed(b)
        rows = len(feeds)
        if one_prompt:
            # n samples of one prompt: encode the prompt once, then copy its cache to every row.
            self.batch.select([0])
            logits = self.batch.step(feeds[:1], only=only[:1])
            self.batch.select([0] * rows)
            return np.broadcast_to(logits, (rows, logits.shape[1]))
        if self.drafter is None or any(o is not None for o in only):
            return self.batch.step(feeds, only=only)
        return self._timed(self.batch.step, feeds)  # a pass with every logit: what a draft's pass is weighed against

    def _timed(self, step: Callable, feeds: list[list[int]]):
        """`step(feeds)`, its seconds recorded by the widest feed for the drafter's pass costs."""
        t0 = time.perf_counter()
        out = step(feeds)
        self.drafter.learned.costs.record(max(map(len, feeds)), time.perf_counter() - t0)
        return out

    # ---- speculative drafts -------------------------------------------------------------

    def _drafts(self, active: list[Branch]) -> dict[Branch, list[int]]:
        """Each active branch's draft for this pass, after what it queued (a prompt too: `step_all(last=)`
        computes the draft's logits only); none when no row has one."""
        d = self.drafter
        if d is None or self._one_prompt(active):
            return {}  # n rows of one prompt: `_forward` encodes it once and copies it
        if d.queued_limit is not None and any(len(b.prompt.tokens) - b.prompt.fed > d.queued_limit for b in active):
            return {}  # a prompt, on a model whose batched passes round otherwise (`Drafter.queued_limit`)
        drafts = {b: d.draft(b.filling, b.prompt.tokens, b.filling.room() - 1, len(b.prompt.tokens) - b.prompt.fed,
                             sparse=self._few_allowed(b) is not None)
                  for b in active}
        return {b: draft for b, draft in drafts.items() if draft}

    def _one_prompt(self, active: list[Branch]) -> bool:
        """Whether this is the first pass of several rows that all queue the same prompt (`argmax(n=)`,
        `sample(n=)`): `_forward` encodes it once and copies it to every row."""
        if len(self.branches) < 2 or self.batch.forward_passes or len(active) < len(self.branches):
            return False
        first = active[0].prompt
        return all(b.prompt.tokens[b.prompt.fed:] == first.tokens[first.fed:] for b in active)

    def _verify(self, active: list[Branch], drafts: dict[Branch, list[int]]) -> None:
        """One pass over each row's queued tokens and its draft; the decoder chooses at each position in turn.

        A branch goes on while its tokens are a prefix of what its row was fed: then the logits
        after its last token are at hand. It stops at the first choice that differs from the draft,
        or when its hole ends; the row then forgets every position the branch did not keep.
        """
        feeds: list[list[int]] = [[] for _ in self.branches]
        wanted = [1] * len(self.branches)  # per row, the logits after its last token queued and after each draft token
        fillings = {b: b.filling for b in active}  # the holes drafted for (a hole may end in the pass)
        for b in active:
            draft = drafts.get(b, [])
            feeds[b.row] = b.prompt.queued() + draft
            wanted[b.row] = 1 + len(draft)
            b.trace.forward_passes += 1
            b.trace.tokens_fed += len(feeds[b.row])
            b.trace.drafted_tokens += len(draft)
        out = self._timed(lambda feeds: self.batch.step_all(feeds, last=wanted), feeds)  # per row (≤ wanted, vocab)
        # per branch: (the index in its row of the token whose logits are out[row][0], where its draft begins)
        held = {}
        for b in active:
            begins = len(b.prompt.tokens)
            held[b] = (begins + len(drafts.get(b, [])) - len(out[b.row]), begins)
        going = list(active)
        while going:
            t0 = time.perf_counter()
            logits = np.zeros((len(self.branches), out[0].shape[1]), np.float32)
            rows = []
            for b in self.branches:
                at = self._position(b, held[b][0], len(out[b.row])) if b in going else None
                if at is None:
                    going = [g for g in going if g is not b]
                    rows.append(decoders.Row(b.row, None))
                    continue
                logits[b.row] = out[b.row][at]
                row_tokens = self.batch.tokens(b.row)
                draft = row_tokens[len(b.prompt.tokens)] if len(b.prompt.tokens) < len(row_tokens) else None
                rows.append(dataclasses.replace(b.decode_row(), draft=draft))
            if not going:
                break
            if self.detail:
                self._look(going, logits)                            # the unmasked distribution, for events
            logits = self._with_ends(logits, rows)
            choices = self.decoder.step(logits, rows)
            spent = (time.perf_counter() - t0) / len(going)
            for b in going:
                b.trace.mask_seconds += spent
            self._apply(choices)
            for b in going:
                b.settle()
        for b in active:
            self._keep(b, held[b][1], fillings[b] if b in drafts else None)

    def _position(self, b: Branch, first: int, n: int) -> int | None:
        """Where in its row's logits the logits after `b`'s last token are; None when they are not there."""
        tokens, fed = b.prompt.tokens, self.batch.tokens(b.row)
        at = len(tokens) - 1 - first
        if not b.needs_logits() or not 0 <= at < n or len(tokens) > len(fed) or fed[:len(tokens)] != tokens:
            return None
        return at

    def _keep(self, b: Branch, drafted_from: int, drafted_for=None) -> None:
        """Truncate `b`'s row to the tokens it kept; count the draft tokens kept (and tell the drafter,
        for `drafted_for`: the filling whose draft it was)."""
        tokens, fed = b.prompt.tokens, self.batch.tokens(b.row)
        common = 0
        for mine, theirs in zip(tokens, fed):
            if mine != theirs:
                break
            common += 1
        self.batch.truncate(b.row, common)
        b.prompt.fed = common
        accepted = min(max(common - drafted_from, 0), len(fed) - drafted_from)
        b.trace.accepted_tokens += accepted
        if drafted_for is not None:
            self.drafter.kept(drafted_for, accepted)

    def _look(self, active: list[Branch], logits: np.ndarray) -> None:
        """Each active branch's unmasked distribution and its `detail` likeliest ids, before the mask and ends touch the logits."""
        k = min(self.detail, logits.shape[1])
        for b in active:
            row = logits[b.row].astype(np.float64)
            p = np.exp(row - row.max())
            p /= p.sum()
            top = np.argpartition(-p, k - 1)[:k]
            b.filling.watch.look = (p, top[np.argsort(-p[top], kind="stable")], b.filling.mask().array)

    def _few_allowed(self, b: Branch) -> np.ndarray | None:
        """The ids `b`'s mask allows, when they are few (an eighth of the vocabulary at most), else None.

        None too where the value may end: its end's score needs every logit (`_with_ends`).
        """
        mask = b.filling.mask()
        if mask.count > len(mask) // 8 or mask.array[self.eos_ids].any():
            return None
        return mask.ids

    def _with_ends(self, logits: np.ndarray, rows) -> np.ndarray:
        """Each row's end-of-sequence logit made the model's whole probability of leaving the value there.

        The same rule for every decoder (docs/language.md, "Where a value ends"); each branch
        keeps the model's own pick among the leaving tokens, to say in the trace why it ended.
        """
        if not logits.flags.writeable:
            logits = logits.copy()
        for b, r in zip(self.branches, rows):
            if r.mask is not None:
                b.filling.wish = decoders.with_end(logits[r.row], r.mask, self.eos_ids, self.after_text)
        return logits

    def _apply(self, choices: list[Choice]) -> None:
        """Make the rows the decoder chose the batch's rows, then give each its token."""
        parents = [c.row for c in choices]
        if parents != list(range(len(self.branches))):
            # Rows dropped, reordered or continued twice (beam): a row's second continuation is a fork.
            used: set[int] = set()
            branches = []
            for parent in parents:
                b = self.branches[parent]
                branches.append(b.fork() if parent in used else b)
                used.add(parent)
            self.batch.select(parents)
            for row, b in enumerate(branches):
                b.row = row
            self.branches = branches
        for b, choice in zip(self.branches, choices):
            if choice.token is not None:
                b.take(choice)

    SCORE_CHUNK = 32  # candidates per batched pass: memory is that of 32 extra rows, however long the list

    def score(self, branch: Branch, candidates: list[list[int]]) -> list[float]:
        """Total log-probability of each candidate continuing `branch`'s prompt (`distribution`), SCORE_CHUNK at a time."""
        if self.served:
            return self.model.score(branch.prompt.tokens, candidates)
        if self.replays is not None:
            return self.replays.scores(branch.prompt.tokens, candidates, lambda: self._score(branch, candidates))
        return self._score(branch, candidates)

    def _score(self, branch: Branch, candidates: list[list[int]]) -> list[float]:
        self._forward([branch], masked=False)  # the row holds its whole prompt, and its logits
        totals = []
        for at in range(0, len(candidates), self.SCORE_CHUNK):
            chunk = candidates[at:at + self.SCORE_CHUNK]
            passes, fed = self.batch.forward_passes, self.batch.tokens_fed
            totals += [float(s.sum()) for s in self.batch.score(branch.row, chunk)]
            branch.trace.forward_passes += self.batch.forward_passes - passes  # none when every candidate is one token
            branch.trace.tokens_fed += self.batch.tokens_fed - fed
        return totals


@functools.lru_cache(maxsize=8)
def _after_text(vocab) -> np.ndarray:
    """(vocab,) bool: the tokens that may follow a complete text (not special, not a UTF-8 continuation byte)."""
    return np.array([i not in vocab.special_ids and bool(t) and not 0x80 <= t[0] < 0xC0
                     for i, t in enumerate(vocab.tokens)])


def run_program(program, model, index: TokenIndex, options: DecoderOptions,
                starts: list[tuple[Callable[[], Iterator], Any]], *, on_text=None,
                record_tokens: bool = False, events=None, detail: int = 0, cache: Any = None) -> list[Result]:
    """Decode each start (a generator factory and its program) on `model`; one result each (n for beam).

    `events` receives the run's events (events.py) as they happen; `detail` > 0 adds p_raw and
    the top `detail` alternatives to token events (a full softmax per token: only when asked).
    `cache`: the run cache (a folder, True for the default one; None: `LMQL_LITE_CACHE_RUNS` decides).
    """
    return Runner(model, index, options, on_text=on_text, record_tokens=record_tokens, events=events,
                  detail=detail, cache=cache).run(starts)
