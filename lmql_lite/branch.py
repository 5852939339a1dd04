"""One result being decoded: the query's running generators (nested queries too), the events they yield, forks, and errors at the query's lines."""
from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import decoders, decorators, events, runtime
from .constraints import terms
from .decoders import Choice, Row
from .errors import ConstraintError, LmqlError, QueryArgumentError, QueryRuntimeError
from .filling import Filling, Watch, locate
from .prompt import Prompt
from .result import Result, Trace


@dataclass
class Frame:
    """A running query generator: the top-level query, or a nested one inside a hole."""
    gen: Iterator
    program: Any
    variables: dict[str, Any] = field(default_factory=dict)
    marker: tuple[int, int] | None = None   # where in the prompt a nested query began
    hole: runtime.Hole | None = None        # the hole a nested query fills


_START = object()  # the value "sent" to start a generator


class Branch:
    """One result: runs the query's Python until it needs the model, then fills holes token by token."""

    def __init__(self, runner, start: Callable[[], Iterator], program: Any, row: int):
        self.runner = runner
        self.start = start                 # makes the top-level generator (again, for a fork)
        self.row = row                     # the batch row it decodes in
        self.frames = [Frame(start(), program)]
        self.sent: list[Any] = []          # values sent to the top generator, to replay it for a fork
        # What the result reports, filled in as decoding goes (variables: the top-level query's).
        self.outcome = Result(prompt="", variables=self.frames[0].variables,
                              trace=Trace(tokens=[] if runner.record_tokens else None,
                                          events=[] if runner.watching else None))
        self.prompt = Prompt(runner.model, self.outcome.trace, self._emit, self._forget)
        self.filling: Filling | None = None
        self.done = False
        self._resume_value: Any = _START

    def _emit(self, text: str, kind: str) -> None:
        self.runner.emit(self, text, kind)

    def report(self, kind: type, **fields: Any) -> None:
        """An event of this branch (events.py) for the runner's sink; only called while the runner is watching."""
        self.runner.report(self, kind(row=self.row, **fields))

    def _forget(self, n: int) -> None:
        self.runner.batch.truncate(self.row, n)

    @property
    def trace(self) -> Trace:
        return self.outcome.trace

    # ---- running until the model is needed ---------------------------------------------

    def settle(self) -> None:
        """Run until the branch needs logits for a hole, or ends."""
        while not self.done:
            f = self.filling
            if f is None:
                self._resume()
            elif f.finished():
                self._finish_hole()
            elif self.runner.served:
                return  # the hole waits for its request (Runner.run sends all rows' at once)
            elif f.budget_spent():
                f.end_early()
            elif not (f.fast_forward() or f.only_choice()):
                return

    def needs_logits(self) -> bool:
        return not self.done and self.filling is not None

    def decode_row(self) -> Row:
        """What the decoder sees of this branch."""
        mask = self.filling.mask() if self.needs_logits() else None
        return Row(self.row, mask, self.outcome.logprob, self._spell)

    def _spell(self, token: int | None) -> tuple[str, bytes]:
        """The text this branch spells once it takes `token` (None: as it is)."""
        hole = self.filling.spelt(token) if self.filling is not None else b""
        return self.prompt.text(), hole

    def accept(self, filled) -> None:
        """A served model's text for the hole being filled."""
        self.filling.accept(filled)
        self.outcome.logprob += self.filling.logprob

    def take(self, choice: Choice) -> None:
        """The decoder's token for the hole being filled."""
        self.filling.take(choice.token, choice.logprob, "chosen", choice.allowed)
        self.outcome.logprob += choice.logprob
        if self.filling.finished():
            self._finish_hole()

    def _resume(self) -> None:
        value, self._resume_value = self._resume_value, None
        frame = self.frames[-1]
        running = runtime.running(self.prompt.text)  # what `context.prompt` reads
        try:
            event = next(frame.gen) if value is _START else frame.gen.send(value)
        except StopIteration as stop:
            self._frame_returned(stop.value)
            return
        except LmqlError:
            raise
        except Exception as e:
            raise self._runtime_error(e) from e
        finally:
            runtime.reset(running)
        if len(self.frames) == 1:
            self.sent.append(value)
        if isinstance(event, runtime.Text):
            self.prompt.append(event.text)
        elif isinstance(event, runtime.Role):
            self.prompt.open_role(event.role)
        elif isinstance(event, runtime.Hole):
            self._start_hole(event)
        else:
            raise QueryRuntimeError(f"a query yielded {event!r}; queries must not use 'yield' themselves")

    def _frame_returned(self, value: Any) -> None:
        frame = self.frames.pop()
        if not self.frames:
            self.prompt.close_role()
            self.done, self.outcome.value = True, value
            self._emit("", "end")
            return
        if not frame.program.returns:  # no `return`: a macro (LMQL), its prompt stays and is the hole's value
            value = self.frames[-1].variables[frame.hole.name] = "".join(self.prompt.pieces[frame.marker[0]:])
            self._resume_value = value
            return
        # A nested query's text is replaced by its return value.
        self.prompt.rewind(frame.marker)
        self.frames[-1].variables[frame.hole.name] = value
        self.prompt.append(str(value), kind="value")
        self._resume_value = value

    def _runtime_error(self, e: Exception) -> LmqlError:
        """An exception of the query's own Python, positioned at the query line it came from."""
        programs = {f.program.filename: f.program for f in self.frames}
        line = column = None
        for tb in traceback.extract_tb(e.__traceback__):
            if tb.filename in programs:
                line, program = tb.lineno, programs[tb.filename]
                column = tb.colno + 1 if getattr(tb, "colno", None) is not None else None
        message = f"{type(e).__name__}: {e}"
        if line is None:
            return QueryRuntimeError(message)
        text = program.source_line(line)
        if column is None and text is not None:  # Python < 3.11: the statement's first column
            column = len(text) - len(text.lstrip()) + 1
        return QueryRuntimeError(message, file=program.filename, line=line, column=column, source_line=text)

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
        elif hole.distribution is not None:
            self._score_distribution(hole)
        elif not self._fixed_by_pre(hole):
            try:
                self.filling = Filling.begin(hole, self._resolver(hole), self.prompt, self.runner,
                                             self.frames[-1].program)
                self.outcome.logprob += self.filling.logprob  # nonzero where the run cache replayed the hole
            except LmqlError:
                raise
            except Exception as e:
                raise self._runtime_error(e) from e
            if self.runner.watching:
                self.filling.watch = Watch(self.report, self.trace.forward_passes,
                                           any(decorators.kind(fn) == "post" for fn in hole.decorators))
                self.report(events.Hole, name=hole.name, constraint=hole.constraint, line=hole.line,
                            column=hole.column)

    def _fixed_by_pre(self, hole: runtime.Hole) -> bool:
        """Run the hole's `@lmql.decorators.pre` functions; one that returns a value fixes the hole to it."""
        from . import decorators
        for fn in hole.decorators:
            if decorators.kind(fn) != "pre":
                continue
            variable = decorators.Variable(hole.name)
            try:
                value = fn(variable)
            except Exception as e:
                raise self._runtime_error(e) from e
            if value is not variable and value != variable:
                self.prompt.append(str(value), "value")
                self.frames[-1].variables[hole.name] = value
                self._resume_value = value
                return True
        return False

    def _finish_hole(self) -> None:
        filling = self.filling
        try:
            _, value = filling.finish()
        except LmqlError:
            raise
        except Exception as e:
            raise self._runtime_error(e) from e
        self.filling = None
        self.frames[-1].variables[filling.hole.name] = value
        self.outcome.logprobs[filling.hole.name] = filling.logprob
        self._resume_value = value

    def _start_nested(self, hole: runtime.Hole) -> None:
        call = hole.type if isinstance(hole.type, runtime.Nested) else runtime.Nested(hole.type)
        self.prompt.flush()
        try:
            gen, program = call.query.__lmql_start__(*call.args, **call.kwargs)
        except LmqlError:
            raise
        except Exception as e:
            raise self._runtime_error(e) from e
        self.frames.append(Frame(gen, program, marker=self.prompt.mark(), hole=hole))
        self._resume_value = _START

    def _score_distribution(self, hole: runtime.Hole) -> None:
        """`distribution X in [...]`: score every value from the same prefix; X gets the most likely."""
        try:
            values = list(hole.distribution())
        except Exception as e:
            raise self._runtime_error(e) from e
        if not values or not all(isinstance(v, str) and v for v in values):
            raise locate(ConstraintError(f"distribution {hole.name} needs a non-empty list of "
                                         f"non-empty strings, got {values!r}"), hole, self.frames[-1].program)
        self.prompt.flush()
        encode = self.runner.model.encode
        scores = dict(zip(values, self.runner.score(self, [encode(v) for v in values])))
        best = max(values, key=scores.get)
        out = self.outcome
        out.distribution, out.distribution_logprobs = decoders.normalise(scores), scores
        if self.runner.watching:
            self.report(events.Distribution, name=hole.name, scores=dict(out.distribution))
        out.logprobs[hole.name] = scores[best]
        out.logprob += scores[best]
        self.prompt.healable = False
        self.prompt.tokens += encode(best)  # the value's own tokens, fed with the next pass
        self.prompt.value(best, hole.name)
        self.frames[-1].variables[hole.name] = best
        self._resume_value = best

    # ---- forks and the result ----------------------------------------------------------

    def fork(self) -> "Branch":
        """A copy with its own generator, rebuilt by replaying the values this branch was sent."""
        if len(self.frames) > 1:
            raise QueryArgumentError("beam decoding does not support nested queries")
        twin = copy.copy(self)
        gen = self.start()
        for value in self.sent:
            (next(gen) if value is _START else gen.send(value))
        twin.frames = [Frame(gen, self.frames[0].program, dict(self.outcome.variables))]
        twin.sent = list(self.sent)
        twin.outcome = copy.copy(self.outcome)
        twin.outcome.variables = twin.frames[0].variables
        twin.outcome.logprobs = dict(self.outcome.logprobs)
        twin.outcome.trace = copy.deepcopy(self.outcome.trace)
        twin.prompt = self.prompt.copy(twin.outcome.trace, twin._emit, twin._forget)
        if self.filling is not None:
            twin.filling = self.filling.copy(twin.prompt)
            if self.filling.watch is not None:
                twin.filling.watch = self.filling.watch.copy(twin.report)
        return twin

    def decoded(self) -> str:
        """The prompt so far, with the hole being filled as far as it got (for a run that stops early)."""
        if self.filling is None:
            return self.prompt.text()
        hole = self.filling.spelt(None).removeprefix(self.filling.heal_prefix)
        return self.prompt.text() + hole.decode("utf-8", errors="replace")

    def result(self) -> Result:
        out = self.outcome
        return Result(prompt=self.prompt.text(), variables=dict(out.variables), value=out.value,
                      distribution=out.distribution, distribution_logprobs=out.distribution_logprobs,
                      logprobs=dict(out.logprobs), logprob=out.logprob, trace=out.trace, spans=self.prompt.spans())

