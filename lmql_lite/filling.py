"""The hole being filled: its guide, token healing, budgets, fast-forward, the tokens taken, and its final text and value."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import decorators, events, runtime
from .constraints import compile_guide, terms
from .constraints.guide import DEFAULT_HOLE_TOKENS
from .constraints.base import Guide, Mask
from .errors import ConstraintError, LmqlError
from .prompt import Prompt
from .result import CUT, HoleEnd, TokenRecord
from .speculate import forced_tokens


@dataclass
class Watch:
    """What a watched hole keeps for its events (events.py): the sink, and what token events need."""
    report: Callable[..., None]        # Branch.report(kind, **fields)
    passes: int                        # the row's forward passes when the hole began
    post: bool                         # a post-processing decorator rewrites the value: no text before the end
    look: tuple | None = None          # (p_raw (vocab,), the likeliest ids, the mask) of the coming token
    undecoded: bytes = b""             # the end of an incomplete UTF-8 character, held back
    taken: int = 0                     # tokens taken

    def copy(self, report: Callable[..., None]) -> "Watch":
        return dataclasses.replace(self, report=report)


class Filling:
    """One hole of one result, from its first token to its value."""

    def __init__(self, hole: runtime.Hole, guide: Guide, prompt: Prompt, runner, program, heal_prefix: bytes):
        self.hole, self.guide, self.prompt = hole, guide, prompt
        self.runner = runner               # the model, its vocabulary and the decoder options
        self.program = program             # the query the hole is in (errors point into it)
        self.heal_prefix = heal_prefix     # prompt bytes the hole's first token re-spells (healing)
        self.start = len(prompt.tokens)    # the hole's first token
        self.logprob = 0.0
        self.clock = time.perf_counter()   # when the hole's last token was taken (for --trace)
        self.wish: int | None = None       # the model's own pick among the tokens that would end the value
        self.cut = ""                      # "max_len" or "max_tokens" when one of them ended the hole
        self.watch: Watch | None = None    # while the runner is watching: the hole's events
        self.record: tuple[str, list] | None = None  # (run cache key, [(token, logprob, how, allowed)...]) to keep

    @classmethod
    def begin(cls, hole: runtime.Hole, resolve: Callable[[str], Any], prompt: Prompt, runner, program) -> "Filling":
        """The hole's guide from its constraint (with `resolve` giving the values known now), healing handed to it."""
        prompt.flush()
        try:
            term = hole.where(resolve) if hole.where else None
            if term is terms.UNKNOWN:
                term = None
            if term is False:
                raise ConstraintError(f"the constraint on {hole.name} is false before decoding starts")
            bound = DEFAULT_HOLE_TOKENS if runner.options.max_tokens is None else None
            guide = compile_guide(None if term is True else term, hole.name, runner.index, hole_type=hole.type,
                                  bound=bound)
        except LmqlError as e:
            raise locate(e, hole, program)
        last = prompt.tokens[-1:]
        # A served model cannot re-spell the prompt's last token under our mask: no healing there.
        prefix = prompt.take_back() if runner.options.healing and not runner.served else b""
        prompt.healable = False
        if prefix and not guide.heal(prefix):  # healing would leave no value: the token goes back
            prompt.tokens += last
            prompt.trace.prompt_tokens += 1
            prefix = b""
        filling = cls(hole, guide, prompt, runner, program, prefix)
        if len(prompt.tokens) >= runner.options.max_len:
            raise filling.locate(ConstraintError(f"max_len={runner.options.max_len} is reached by the "
                                                 f"prompt before {hole.name} can be decoded"))
        filling.check_room()
        if runner.replays is not None:  # the run cache: replay the hole, or record it to keep
            runner.replays.begin(filling, term)
        return filling

    def check_room(self) -> None:
        """ConstraintError before decoding when max_len (or max_tokens) leaves fewer tokens than the hole needs."""
        options, plan = self.runner.options, getattr(self.guide, "plan", None)
        if plan is None:
            return
        room = options.max_len - len(self.prompt.tokens)
        if options.max_tokens is not None:
            room = min(room, options.max_tokens)
        widest = self.runner.index.max_token_bytes
        needed = max(plan.counts.lo, -(-int(self.guide.automaton.bytedist[0]) // widest) if widest else 0)
        if needed > room:
            limits = f"max_len={options.max_len}" + (f" and max_tokens={options.max_tokens}"
                                                     if options.max_tokens is not None else "")
            raise self.locate(ConstraintError(f"{self.hole.name} needs at least {needed} tokens under {plan.term}, "
                                              f"but {limits} leave{'s' if options.max_tokens is None else ''} "
                                              f"room for {room} after the prompt"))

    def copy(self, prompt: Prompt) -> "Filling":
        twin = Filling.__new__(Filling)
        twin.__dict__.update(self.__dict__, prompt=prompt, guide=self.guide.copy(), record=None)
        return twin

    def locate(self, e: LmqlError) -> LmqlError:
        return locate(e, self.hole, self.program)

    def mask(self) -> Mask:
        """The guide's mask; a hole that nothing can continue is an error at the hole."""
        try:
            return self.guide.allowed()
        except LmqlError as e:
            raise self.locate(e)

    def finished(self) -> bool:
        return self.guide.is_finished()

    def spelt(self, token: int | None) -> bytes:
        """The hole's bytes so far, and `token`'s after them."""
        vocab = self.runner.model.vocabulary.tokens
        return b"".join(vocab[t] for t in self.prompt.tokens[self.start:]) + (vocab[token] if token is not None else b"")

    # ---- what needs no forward pass ----------------------------------------------------

    def room(self) -> int:
        """Tokens the hole may still take before a budget (max_len, max_tokens) ends it."""
        options, used = self.runner.options, len(self.prompt.tokens)
        room = options.max_len - used
        if options.max_tokens is not None:
            room = min(room, options.max_tokens - (used - self.start))
        return room

    def budget_spent(self) -> bool:
        options, used = self.runner.options, len(self.prompt.tokens)
        if used >= options.max_len:
            return True
        return options.max_tokens is not None and used - self.start >= options.max_tokens

    def end_early(self) -> None:
        """A token budget is spent: end the hole if its text is acceptable, else fail."""
        eos = self.runner.eos_id
        if eos is None or not self.mask()[eos]:
            raise self.locate(ConstraintError(
                f"{self.hole.name} reached its token budget before its value satisfied the constraint"))
        options = self.runner.options
        self.cut = "max_len" if len(self.prompt.tokens) >= options.max_len else "max_tokens"
        self.guide.advance(eos)

    def fast_forward(self) -> bool:
        """Append the text the guide forces, without a forward pass; True if anything was appended.

        Unless the forced text completes the hole, its last token is held back: the text that
        follows may merge with it (a forced " " before "neutral" is better written " neutral").
        """
        ids, finishes = forced_tokens(self.guide, self.runner.spell)
        if not ids:
            return False
        if not finishes:
            ids = ids[:-1]
        appended = False
        for tok in ids:
            if self.finished() or self.budget_spent():
                break
            self.take(tok, 0.0, "forced", 0)
            appended = True
        return appended

    def only_choice(self) -> bool:
        """Take the token when the mask allows exactly one (a healed ':' re-spelt, an end of sequence)."""
        mask = self.mask()
        if mask.count != 1:
            return False
        self.take(int(mask.ids[0]), 0.0, "forced", 1)
        return True

    def replay(self, taken: list) -> bool:
        """Take the tokens a run cache entry kept, if the guide allows each of them in turn (False: none taken)."""
        probe = self.guide.copy()
        try:
            for tok, _, _, _ in taken:
                if probe.is_finished() or not probe.allowed()[tok]:
                    return False
                probe.advance(tok)
        except (LmqlError, IndexError, TypeError, ValueError):
            return False
        for tok, logprob, how, allowed in taken:
            self.take(tok, logprob, "cached" if how == "chosen" else how, allowed)
        self.prompt.trace.cached_tokens += len(taken)
        return True

    # ---- a model on a server -----------------------------------------------------------

    def ask(self, row: int):
        """The served model's text for the hole, from one request (changes nothing here: requests of several rows run at once)."""
        model, options = self.runner.model, self.runner.options
        room = options.max_len - len(self.prompt.tokens)
        if options.max_tokens is not None:
            room = min(room, options.max_tokens)
        try:
            return model.fill(self.prompt.tokens, self.guide, options, row, room)
        except LmqlError as e:
            raise self.locate(e)

    def accept(self, filled) -> None:
        """The server's text taken through the guide token by token, as a value decoded here would be; ConstraintError if it fails."""
        model = self.runner.model
        server = f"{model.dialect.name} ({model.name})"
        try:
            for tok in model.encode(filled.text):
                if self.guide.is_finished():  # a stop phrase ended it: what follows is not the value's
                    break
                self.take(tok, 0.0, "served", 0)
            if not self.guide.is_finished():
                self.take(min(model.vocabulary.eos_ids), 0.0, "served", 0)
                if filled.closing:  # the trace says the model wrote a character that cannot continue the value
                    self.wish = (model.encode(filled.closing) or [None])[0]
        except ConstraintError as e:
            why = "it ran out of tokens" if filled.finish == "length" else "it does not satisfy the constraint"
            raise self.locate(ConstraintError(f"{server} returned {filled.text!r} for {self.hole.name}, and {why} "
                                              f"({e.message})")) from None
        self.logprob = filled.logprob
        self.prompt.trace.notes.append(f"{self.hole.name}: filled by {server} in one request "
                                       f"(enforced there: {filled.how}), checked here")

    # ---- tokens and the end ------------------------------------------------------------

    def take(self, tok: int, logprob: float, how: str, allowed: int) -> None:
        """Append one token (chosen by the decoder or forced) to the hole."""
        trace = self.prompt.trace
        if self.record is not None:
            self.record[1].append((tok, logprob, how, allowed))
        healed = bool(self.heal_prefix) and len(self.prompt.tokens) == self.start  # the token re-spells the prompt's
        seconds = 0.0
        if trace.tokens is not None or self.watch is not None:
            now = time.perf_counter()
            seconds, self.clock = now - self.clock, now
        if trace.tokens is not None:
            text = self.runner.model.vocabulary.tokens[tok].decode("utf-8", errors="replace")
            trace.tokens.append(TokenRecord(self.hole.name, tok, text, allowed, how, logprob, seconds))
        if how == "forced":
            trace.forced_tokens += 1
        else:
            trace.generated_tokens += 1
        self.logprob += logprob
        if how == "forced":
            self.wish = None
        if tok not in self.runner.model.vocabulary.eos_ids:
            self.prompt.tokens.append(tok)
        self.guide.advance(tok)
        if self.watch is not None:
            self.report_token(tok, logprob, how, healed, allowed, seconds)
        for fn in self.hole.decorators:
            if decorators.kind(fn) == "streaming":
                fn(self.guide.text(), runtime.context)

    def report_token(self, tok: int, logprob: float, how: str, healed: bool, allowed: int, seconds: float) -> None:
        """The token event of the token just taken (only while the runner is watching)."""
        w, vocab = self.watch, self.runner.model.vocabulary
        data = vocab.tokens[tok]
        p = p_raw = None
        top: tuple[events.Alternative, ...] = ()
        if how != "forced":
            p = math.exp(logprob)
            if w.look is not None:
                probs, ids, mask = w.look
                p_raw = float(probs[tok])
                top = tuple(events.Alternative(int(i), _text_of(vocab.tokens[i]), float(probs[i]), bool(mask[i]))
                            for i in (list(ids) + ([tok] if tok not in ids else [])))
        w.look = None
        # The text this token adds to the value as it will stand, whole UTF-8 characters only; the
        # last token's (and a post-processed value's) comes with the hole_end event instead.
        shown = ""
        if tok not in vocab.eos_ids and not self.guide.is_finished() and not w.post:
            head, w.undecoded = _split_incomplete(w.undecoded + data[len(self.heal_prefix) if healed else 0:])
            shown = head.decode("utf-8", errors="replace")
        w.taken += 1
        w.report(events.Token, hole=self.hole.name, id=tok, text=_text_of(data), how="healed" if healed else how,
                 p=p, p_raw=p_raw, allowed=1 if how == "forced" else allowed, vocab=len(vocab.tokens), top=top,
                 ms=seconds * 1000, shown=shown, heal=_text_of(self.heal_prefix) if healed else "")

    def finish(self) -> tuple[str, Any]:
        """(text, value) of the finished hole, decorators applied; the row's tokens spell exactly the text."""
        try:
            text, value = self.guide.text(), self.guide.value()
            for fn in reversed(self.hole.decorators):
                if decorators.kind(fn) == "post":
                    value = fn(value)
                    text = str(value)
        except LmqlError as e:
            raise self.locate(e)
        self.prompt.reconcile(self.start, self.heal_prefix + text.encode())
        reason, message = self.why_ended()
        self.prompt.trace.ends.append(HoleEnd(self.hole.name, reason, f"ended: {message}"))
        if reason in CUT:
            self.prompt.trace.notes.append(f"{self.hole.name}: ended at {message}")
        self.prompt.value(text, self.hole.name)
        if self.watch is not None:
            w = self.watch
            w.report(events.HoleEnd, name=self.hole.name, value=value, text=text, reason=reason, tokens=w.taken,
                     passes=self.prompt.trace.forward_passes - w.passes)
        if self.record is not None:
            self.runner.replays.finish(self)
        return text, value

    def why_ended(self) -> tuple[str, str]:
        """(reason, message) for the finished hole (docs/language.md, "Where a value ends")."""
        guide, vocab = self.guide, self.runner.model.vocabulary
        if self.cut:
            return self.cut, f"{self.cut}={getattr(self.runner.options, self.cut)}"
        how, wish = guide.ended_by, self.wish
        if how == "end":
            if wish is None or wish in vocab.eos_ids:
                return "end", "the model ended it"
            text, following = vocab.tokens[wish], self.hole.following.encode()
            shown = repr(text.decode("utf-8", errors="replace"))
            if following and (following.startswith(text) or text.startswith(following)):
                return "following text", f"the model wrote the following text {shown}"
            return "not a continuation", f"the model's next token {shown} cannot continue the value"
        if how == "stop":
            return "stop", "a stop phrase"
        if how == "budget" and getattr(guide, "default_bound", False):
            return "default bound", f"the default bound of {DEFAULT_HOLE_TOKENS} tokens per hole"
        if how == "budget":
            return "budget", f"its token budget ({guide.tokens_used} tokens)"
        return "complete", "its constraint allows no longer value"


def _text_of(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _split_incomplete(data: bytes) -> tuple[bytes, bytes]:
    """(whole UTF-8 characters, the start of an incomplete one at the end)."""
    for back in range(1, min(4, len(data)) + 1):
        lead = data[-back]
        if lead & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
            continue
        need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
        return (data[:-back], data[-back:]) if need > back else (data, b"")
    return data, b""


def locate(e: LmqlError, hole: runtime.Hole, program) -> LmqlError:
    """`e`, positioned at `hole` in `program` when it has no position yet."""
    return e.locate(file=program.filename, line=hole.line, column=hole.column,
                    source_line=program.source_line(hole.line))
