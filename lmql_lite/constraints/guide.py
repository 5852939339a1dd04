"""The automaton guide: one hole's decoding state — which tokens may come next, the tokens taken, and the value at the end.

Token budgets (`len(TOKENS(X))`) are kept on top of the automaton. A token is allowed only if
the hole can still end from where it leads with an allowed token count. When every byte is a
token and the counts form one interval, byte distances decide that exactly (a text of n bytes
can be spelt in any number of tokens up to n); otherwise (a vocabulary missing single-byte
tokens, gaps like `!= 3`, both bounds at once) a breadth-first search over the token graph
decides it (`AutomatonGuide._can_end`), reusing the cached per-state masks.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from ..errors import ConstraintBudgetError, ConstraintError
from ..index import TokenIndex
from . import automata, grammar, holes, terms
from .base import Guide, Mask
from .holes import HolePlan, atom_language, longest_paths, plan_hole

_OPS = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
        ">=": operator.ge, ">": operator.gt}


DEFAULT_HOLE_TOKENS = 256  # the bound of a hole whose constraint sets no most tokens (docs/language.md)


def compile_guide(term: Any, var: str, index: TokenIndex, hole_type: Any = None,
                  bound: int | None = None) -> Guide:
    """A guide for hole `var` under `term` (None/True: unconstrained); ConstraintError if it can never be satisfied.

    `bound`: the most tokens of a hole whose constraint gives no upper limit (counted above the
    least it must have); None leaves such a hole unbounded. Compiling it, the token search
    included, is bounded by the budgets of `automata.budget()`.
    """
    try:
        with automata.budget():
            return _compile_guide(term, var, index, hole_type, bound)
    except ConstraintBudgetError as e:
        if e.message.startswith(f"{var}: "):
            raise
        raise ConstraintBudgetError(f"{var}: {e.message}") from None


def _compile_guide(term: Any, var: str, index: TokenIndex, hole_type: Any, bound: int | None) -> Guide:
    recursive = _recursive_grammar(term)
    if recursive is not None:
        return _grammar_guide(recursive, term, var, index, hole_type, bound)
    plan = plan_hole(term, var, hole_type)
    by_default = bound is not None and plan.counts.hi == math.inf
    if by_default:
        plan.counts = plan.counts & holes.Counts(((0, plan.counts.intervals[-1][0] + bound),))
    guide = AutomatonGuide(plan, index, by_default)
    counts = guide.plan.counts
    hi = counts.hi
    spelt = len(counts.intervals) == 1 and guide._spelt_ok(0, hi, counts.lo)
    if not spelt and not guide._can_end(0, 0):
        room = f"within {int(hi)} tokens" if hi != math.inf else "in this vocabulary's tokens"
        if by_default:
            room += f" (the default bound per hole; write len(TOKENS({var})) < n for another)"
        raise ConstraintError(f"{var} can never satisfy its constraint: no value can be written {room} "
                              f"under {guide.plan.term}")
    return guide


def _recursive_grammar(term: Any) -> Any:
    """The GRAMMAR atom of `term` whose grammar is not regular (llguidance matches it), or None."""
    atoms = term.parts if isinstance(term, (terms.And, terms.Or)) else (term,)
    for atom in atoms:
        inner = atom.part if isinstance(atom, terms.Not) else atom
        if isinstance(inner, (terms.And, terms.Or, terms.Not)):
            found = _recursive_grammar(inner)
            if found is not None:
                return found
        elif isinstance(inner, terms.Grammar) and grammar.regular_language(inner.text) is None:
            return inner
    return None


def _grammar_guide(atom: Any, term: Any, var: str, index: TokenIndex, hole_type: Any,
                   bound: int | None) -> "grammar.GrammarGuide":
    """A recursive grammar: alone, with token budgets (< or <=) and Python post-checks only."""
    if hole_type not in (None, str):
        raise ConstraintError(f"GRAMMAR({var}, ...) cannot be combined with the hole type {hole_type!r}")
    budget, checks = math.inf, []
    for part in term.parts if isinstance(term, terms.And) else (term,):
        if part is atom:
            continue
        if isinstance(part, terms.Compare) and isinstance(part.left, terms.Length) \
                and isinstance(part.left.of, terms.Tokens) and part.op in ("<", "<="):
            budget = min(budget, math.ceil(part.right) - 1 if part.op == "<" else math.floor(part.right))
        elif isinstance(part, terms.Predicate) or holes._is_post_check(part):
            checks.append(part)
        else:
            raise ConstraintError(f"{part}: a recursive GRAMMAR combines only with len(TOKENS({var})) < n and "
                                  "Python checks (its grammar has nested rules, so it is not a regular language)")
    if budget < 1:
        raise ConstraintError(f"{var} can never satisfy its constraint: no token budget for {term}")
    if budget == math.inf and bound is not None:
        budget = bound
    check = (lambda text: all(_holds(p, var, text, text, 0) for p in checks)) if checks else None
    return grammar.GrammarGuide(var, atom.text, index, term, budget, check)


class AutomatonGuide:
    """The Guide contract (`constraints.base.Guide`) over a byte automaton and the token index."""

    def __init__(self, plan: HolePlan, index: TokenIndex, default_bound: bool = False):
        self.plan, self.index = plan, index
        self.default_bound = default_bound  # the most tokens is DEFAULT_HOLE_TOKENS, not the user's
        self.state = 0
        self.tokens_used = 0
        self._text = bytearray()
        self._drop = 0           # bytes of a STOPS_BEFORE phrase to drop from the end
        self._finished = False
        self.ended_by = ""       # once finished: "end" (end of sequence), "stop" (a phrase), "complete", "budget"
        self._prefix = b""       # token healing: the first token must start with these bytes
        ends = [x for lo, hi in plan.counts.intervals for x in (lo, hi + 1) if x != math.inf]
        self._last_boundary = max(ends, default=0)  # from this many tokens on, every count is alike
        # (state, tokens taken, clamped past the last boundary) -> Mask
        self._seen = index.cache(self.automaton).setdefault(("masks", plan.counts), {})
        self._spelt_dist, self._spelt_longest = self._spelling()

    @property
    def automaton(self):
        return self.plan.automaton

    def copy(self) -> "AutomatonGuide":
        twin = AutomatonGuide.__new__(AutomatonGuide)  # not copy.copy: a draft copies the guide every pass
        twin.__dict__.update(self.__dict__, _text=bytearray(self._text))
        return twin

    # ---- the contract the interpreter calls ----------------------------------------------

    def heal(self, prefix: bytes) -> bool:
        """The first token must start with `prefix` (the prompt's last token, taken back); it is not the hole's text.

        Declined (False, nothing changes) when no first token could then lead to a value: healing
        must never make a satisfiable hole impossible (a one-token INT after `": `).
        """
        self._prefix = bytes(prefix)
        key = ("healed", self._prefix)
        if key not in self._seen:
            self._seen[key] = Mask(self._healed())
        if self._seen[key].count:
            return True
        self._prefix = b""
        return False

    def allowed(self) -> Mask:
        """The tokens that keep the hole satisfiable; EOS only where the value is complete (cached per state)."""
        if self._finished:
            return Mask.none(len(self.index))
        if self._prefix:  # healing: the first token, from the start state
            key = ("healed", self._prefix)
        else:
            key = (self.state, min(self.tokens_used, self._last_boundary + 1))
        mask = self._seen.get(key)
        if mask is None:
            mask = self._seen[key] = Mask(self._healed() if self._prefix else self._mask())
        if not mask.count:
            raise ConstraintError(f"no token can continue {self.plan.var} under {self.plan.term} "
                                  f"after {bytes(self._text)!r}")
        return mask

    def advance(self, token_id: int) -> None:
        """Consume one token (an end-of-sequence id ends the hole)."""
        if self._finished:
            raise ConstraintError(f"{self.plan.var} has already ended")
        a, counts = self.automaton, self.plan.counts
        if token_id in self.index.vocabulary.eos_ids:
            if self._prefix or not (a.accepting[self.state] and counts.allows(self.tokens_used)):
                raise ConstraintError(f"{self.plan.var} cannot end after {bytes(self._text)!r}")
            self._finished, self.ended_by = True, "end"
            return
        data = self.index.vocabulary.tokens[token_id]
        if self._prefix:
            if not data.startswith(self._prefix):
                raise ConstraintError(f"token {data!r} does not start with the healed prefix {self._prefix!r}")
            data, self._prefix = data[len(self._prefix):], b""
        k = self.tokens_used + 1
        armed = counts.allows(k)
        s = self.state
        accepting, stops, has_next = a.flags
        for i, b in enumerate(data):
            s = a.row(s)[b]
            if s < 0:
                raise ConstraintError(f"token {data!r} cannot continue {self.plan.var} under {self.plan.term}")
            if armed and stops[s]:
                data = data[: i + 1]  # the phrase ends the hole: the rest of the token is cut
                self._drop = a.drops[a.stop[s]]
                self._finished, self.ended_by = True, "stop"
                break
        self._text += data
        self.tokens_used = k
        self.state = s
        if not self._finished and accepting[s] and counts.allows(k):
            if not has_next[s]:
                self._finished, self.ended_by = True, "complete"
            elif k >= counts.hi:
                self._finished, self.ended_by = True, "budget"

    def is_finished(self) -> bool:
        return self._finished

    def forced(self) -> bytes:
        """The text every continuation must start with (b"" when there is a choice); whole UTF-8 characters only."""
        if self._finished or self._prefix or automata.ends_mid_character(self._text):
            return b""
        a = self.automaton
        armed = self.plan.counts.allows(self.tokens_used + 1)
        only, (accepting, stops, _) = a.only_next, a.flags
        s, out = self.state, bytearray()
        while not accepting[s] and len(out) < 256:
            byte = only[s]
            if byte < 0:
                break
            out.append(byte)
            s = a.row(s)[byte]
            if armed and stops[s]:
                break
        while automata.ends_mid_character(out):
            out.pop()
        hi = self.plan.counts.hi
        if out and hi != math.inf:
            # the forced text may take one token per byte, and the hole must still end in budget
            end = _walk(a, self.state, out)
            if len(out) + self._spelt_dist[end] > hi - self.tokens_used:
                return b""
        return bytes(out)

    def text(self) -> str:
        """The hole's text as it stays in the prompt (a STOPS_BEFORE phrase dropped)."""
        data = self._text[: len(self._text) - self._drop]
        return bytes(data).decode("utf-8", errors="replace")

    def value(self) -> Any:
        """The hole's value (int/float for numeric holes, the object for JSON holes); runs the post-checks."""
        text = self.text()
        value: Any = text
        if self.plan.convert is not None:
            try:
                value = self.plan.convert(text)
            except ConstraintError as e:
                raise ConstraintError(f"{self.plan.var}: {e.message}") from None
        if self.plan.check and not _holds(self.plan.term, self.plan.var, value, text, self.tokens_used):
            raise ConstraintError(f"{self.plan.var} = {value!r} does not satisfy {self.plan.term}")
        return value

    # ---- masks ---------------------------------------------------------------------------

    def _mask(self) -> np.ndarray:
        a, counts, index = self.automaton, self.plan.counts, self.index
        u, s = self.tokens_used, self.state
        k = u + 1
        armed = counts.allows(k)
        can_take = k <= counts.hi
        eos = bool(a.accepting[s]) and counts.allows(u)
        step = index.allowed(a, s, armed) if can_take else None
        spare = counts.hi - k          # tokens allowed after this one
        owed = counts.lo - k           # tokens required after this one
        live = step.targets[step.targets >= 0] if step is not None else None
        if step is None:
            how = None
        elif len(counts.intervals) > 1 or (owed > 0 and spare != math.inf):
            how = ("search", counts, min(k, self._last_boundary + 1))
        elif not self._spelt_ok(live, spare, owed).all():
            how = ("check", counts, spare, owed)  # some target is not decided by spelling it byte by byte
        else:
            how = None
        key = ("mask", s, armed, can_take, eos, how)
        cache = index.cache(a)
        mask = cache.get(key)
        if mask is not None:
            return mask
        if step is None:
            mask = np.zeros(len(index), bool)
        elif how is not None:
            ok = [t for t in step.targets.tolist() if t < 0 or self._ends_in_time(t, k)]
            mask = np.zeros(len(index), bool)
            mask[step.ids[np.isin(step.ends, ok)]] = True
        else:
            mask = step.mask.copy() if eos else step.mask
        if eos:
            mask[index.eos_ids] = True
        cache[key] = mask
        return mask

    def _healed(self) -> np.ndarray:
        """First-token mask under healing: tokens that start with the prefix and whose rest the constraint allows."""
        index, a, counts = self.index, self.automaton, self.plan.counts
        mask = np.zeros(len(index), bool)
        if counts.hi < 1:
            return mask
        step = index.walk(a, 0, counts.allows(1), self._prefix)
        ok = [t for t in step.targets.tolist() if t < 0 or self._ends_in_time(t, 1)]
        mask[step.ids[np.isin(step.ends, ok)]] = True
        return mask

    def _spelling(self) -> tuple[np.ndarray, np.ndarray]:
        """Per state, the fewest and the most bytes to an ending along bytes that are tokens by themselves.

        Such a text can be written in any number of tokens up to its length, so these bound the
        token distance from above (fewest) and the reachable token count from below (most).
        """
        cache = self.index.cache(self.automaton)
        if "spelling" not in cache:
            a = self.automaton
            table = a.table.copy()
            table[:, self.index.missing_bytes] = -1
            finals = a.accepting | a.stops
            dist = automata.distances(table, finals).astype(float)
            dist[dist < 0] = math.inf
            live = dist < math.inf
            longest = np.full(len(table), -math.inf)
            if live.any():
                kept = np.flatnonzero(live)
                renumber = np.full(len(table) + 1, -1, np.int32)
                renumber[kept] = np.arange(len(kept))
                longest[kept] = longest_paths(renumber[table[kept]], finals[kept])
            cache["spelling"] = (dist, longest)
        return cache["spelling"]

    def _spelt_ok(self, states, spare: float, owed: float):
        """Spelt byte by byte, can the hole end from `states` within `spare` tokens after at least `owed`?

        Each bound alone is decided by the fewest or the most bytes; both at once need one path
        whose length fits between them, which only the token search can tell (False here).
        """
        dist = self._spelt_dist[states]
        ok = (dist < math.inf) & (dist <= spare) & (self._spelt_longest[states] >= owed)
        return ok & (owed <= 0 or spare == math.inf)

    def _ends_in_time(self, state: int, k: int) -> bool:
        """`_can_end(state, k)`, answered from the spelling bounds where they decide."""
        counts, a = self.plan.counts, self.automaton
        spare, owed = counts.hi - k, counts.lo - k
        if len(counts.intervals) == 1 and self._spelt_ok(state, spare, owed):
            return True
        if a.bytedist[state] > spare * self.index.max_token_bytes or a.longest[state] < owed:
            return False
        return self._can_end(state, k)

    def _can_end(self, state: int, used: int) -> bool:
        """Can the hole end from `state`, `used` tokens in? Exact: a breadth-first search on the token graph.

        Layer j holds the states reachable with j more tokens; the hole can end in a layer whose
        count is allowed and that holds an accepting state, or on a token that completes a stop
        phrase. Past the last count boundary the layers only depend on the previous layer, so a
        repeated layer means nothing new can come.
        """
        a, index, counts = self.automaton, self.index, self.plan.counts
        last = self._last_boundary
        memo = index.cache(a).setdefault(("can end", counts), {})
        key = (state, min(used, last + 1))
        if key in memo:
            return memo[key]
        layer, n, seen, found = {state}, used, set(), False
        while layer and not found:
            if counts.allows(n) and a.accepting[list(layer)].any():
                found = True
                break
            if n >= counts.hi:
                break
            armed = counts.allows(n + 1)
            following: set[int] = set()
            for s in layer:
                targets = index.allowed(a, s, armed).targets
                found = found or bool(armed and len(targets) and targets[0] < 0)
                following.update(targets[targets >= 0].tolist())
            n += 1
            layer = frozenset(following)
            if n > last:
                if layer in seen:
                    break
                seen.add(layer)
        memo[key] = found
        return found


def _walk(a, state: int, data) -> int:
    for b in data:
        state = int(a.table[state, b])
    return state


def _holds(term: Any, var: str, value: Any, text: str, tokens: int) -> bool:
    """Evaluate `term` on a finished value: the post-check for parts no mask decides."""
    if isinstance(term, terms.And):
        return all(_holds(p, var, value, text, tokens) for p in term.parts)
    if isinstance(term, terms.Or):
        return any(_holds(p, var, value, text, tokens) for p in term.parts)
    if isinstance(term, terms.Not):
        return not _holds(term.part, var, value, text, tokens)
    if isinstance(term, (terms.StopsAt, terms.StopsBefore)):
        return True
    if isinstance(term, terms.Predicate):
        return term.check(var, value)
    if isinstance(term, terms.Compare):
        if isinstance(term.left, terms.Length):
            n = tokens if isinstance(term.left.of, terms.Tokens) else len(text)
            return _OPS[term.op](n, term.right)
        if not isinstance(term.right, str):
            number = value
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    return False
            try:
                return _OPS[term.op](number, term.right)
            except TypeError:
                return False
    return atom_language(term).accepts(text.encode("utf-8"))
