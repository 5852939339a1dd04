"""lmql_lite's own time per token outside the model's forward pass, split by where it goes (issue 16).

Run:  python bench/overhead.py                      table: free60, record, person (a dataclass JSON hole)
      python bench/overhead.py --only free60,choice3 --reps 5
      python bench/overhead.py --json               one JSON document (per query: ms per token by part)
Options: --reps N (instrumented runs per query after one warm-up, default 5; the median run is
      reported), --threads N, --no-speculate (speculate=False).

Each query of bench/common.SUITE (or `person`, below) runs on the default model with every part
below timed by wrapping it (perf_counter, main thread). Each part's time is its own: time inside a
nested timed part counts for that part only, so the parts add up to the run's wall time.

  forward    the model's forward (hooks on the causal LM and its body, as bench/run.py)
  batch      TransformersBatch.step/step_all/score outside the forward: input tensors, the output
             layer on the allowed rows (OutputHead), logits to numpy
  logprob    decoders.log_softmax_at, top_logprob: the chosen token's log-probability
  decide     the rest of Decoder.step: masking (logits + bias), argmax or the draw
  ends       decoders.with_end: the end-of-value score
  forced     speculate.forced_tokens outside the guide: spelling the forced text (the tokenizer)
  guide      Guide.allowed/advance/copy/forced (masks per state, the automaton or grammar)
  drafts     speculate.Drafter.draft outside the parts above (prompt lookup)
  other      everything else: the interpreter, the query's Python, prompt text, results

`outside/tok` is (wall - forward) / tokens, tokens = generated + forced hole tokens. The
instrumentation itself costs about a microsecond per wrapped call (counted in its part).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path, HF_HUB_OFFLINE)
from common import median  # noqa: E402

PARTS = ("forward", "batch", "logprob", "decide", "ends", "forced", "guide", "drafts", "other")


@dataclass
class Person:
    name: str
    age: int
    tags: list[str]


PERSON = '''argmax
    "Write a JSON record for a fictional software engineer who loves hiking and chess, with a name, an age and a list of tags for her hobbies.\\n"
    "[P: Person]"
    return P
'''


class Clock:
    """Exclusive time per part: a stack of open parts, each charged its time minus its children's."""

    def __init__(self):
        self.own = dict.fromkeys(PARTS, 0.0)
        self.calls = dict.fromkeys(PARTS, 0)
        self._stack: list[list] = []  # [part, start, time in children]

    def enter(self, part: str) -> None:
        self._stack.append([part, time.perf_counter(), 0.0])

    def leave(self) -> None:
        part, start, children = self._stack.pop()
        spent = time.perf_counter() - start
        self.own[part] += spent - children
        self.calls[part] += 1
        if self._stack:
            self._stack[-1][2] += spent

    def reset(self) -> None:
        self.own = dict.fromkeys(PARTS, 0.0)
        self.calls = dict.fromkeys(PARTS, 0)

    def wrap(self, owner, name: str, part: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None:  # an older lmql_lite (measured for a before/after) may lack it
            return

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(part)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
        setattr(owner, name, timed)


def instrument(clock: Clock, module) -> None:
    """Wrap every part of lmql_lite that `PARTS` names, and hook the model's forward."""
    from lmql_lite import decoders, filling, speculate
    from lmql_lite.constraints import grammar, guide
    from lmql_lite.models import transformers as engine
    for name in ("step", "step_all", "score"):
        clock.wrap(engine.TransformersBatch, name, "batch")
    clock.wrap(decoders, "log_softmax_at", "logprob")
    clock.wrap(decoders, "top_logprob", "logprob")
    for cls in (decoders.Argmax, decoders.Sample, decoders.Beam):
        if "step" in vars(cls):
            clock.wrap(cls, "step", "decide")
    clock.wrap(decoders, "with_end", "ends")
    clock.wrap(speculate, "forced_tokens", "forced")
    filling.forced_tokens = speculate.forced_tokens
    for cls in (guide.AutomatonGuide, grammar.GrammarGuide):
        for name in ("allowed", "advance", "copy", "forced"):
            clock.wrap(cls, name, "guide")
    clock.wrap(speculate.Drafter, "draft", "drafts")
    bodies = [module] + ([module.base_model] if getattr(module, "base_model", module) is not module else [])
    depth = [0]

    def pre(*_):
        if depth[0] == 0:
            clock.enter("forward")
        depth[0] += 1

    def post(*_):
        depth[0] -= 1
        if depth[0] == 0:
            clock.leave()
    for m in bodies:
        m.register_forward_pre_hook(pre)
        m.register_forward_hook(post)


def query_runner(name: str, model, options: dict):
    import lmql_lite
    from lmql_lite import api
    if name == "person":
        compiled = api.load(PERSON)
        return lambda: api.run_compiled(compiled, {}, model=model, scope={"Person": Person}, **options)
    suite = {n: (s, i) for n, _, s, i in common.SUITE}
    if name not in suite:
        raise SystemExit(f"unknown query {name!r}: choose from person, {', '.join(suite)}")
    source, inputs = suite[name]
    return lambda: lmql_lite.run(source, **inputs, **options)


def measure(name: str, model, clock: Clock, reps: int, options: dict) -> dict:
    run = query_runner(name, model, options)
    result = run()  # warm-up: compiles the query, builds its masks
    tokens = result.trace.generated_tokens + result.trace.forced_tokens
    runs = []
    for _ in range(reps):
        clock.reset()
        wall, _ = common.timed(run)
        parts = dict(clock.own)
        parts["other"] = wall - sum(parts.values())
        runs.append({"wall": wall, "parts": parts})
    runs.sort(key=lambda r: r["wall"] - r["parts"]["forward"])
    mid = runs[len(runs) // 2]
    per_token = {p: s * 1e3 / max(tokens, 1) for p, s in mid["parts"].items()}
    outside = [(r["wall"] - r["parts"]["forward"]) * 1e3 / max(tokens, 1) for r in runs]
    return {"name": name, "tokens": tokens, "generated": result.trace.generated_tokens,
            "forced": result.trace.forced_tokens, "passes": result.trace.forward_passes,
            "wall_ms": mid["wall"] * 1e3, "outside_ms_per_token": median(outside),
            "outside_range": [min(outside), max(outside)], "ms_per_token": per_token,
            "value": repr(result.value)[:80]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="free60,record,person", help="comma-separated query names (suite names or person)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-speculate", action="store_true", help="speculate=False")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    threads = common.set_threads(args.threads)
    options = {"speculate": False} if args.no_speculate else {}
    model = common.default_model()
    model.vocabulary  # noqa: B018 (built once, outside the timed runs)
    clock = Clock()
    instrument(clock, model.module)
    rows = [measure(name, model, clock, args.reps, options) for name in args.only.split(",")]
    doc = {"machine": common.machine_note(), "threads": threads, "reps": args.reps, "options": options,
           "queries": rows}
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    header = ["query", "tokens", "passes", "wall ms", "outside/tok", *[p for p in PARTS]]
    table = [[r["name"], f"{r['tokens']} ({r['generated']}+{r['forced']})", r["passes"], f"{r['wall_ms']:.0f}",
              f"{r['outside_ms_per_token']:.3f}", *[f"{r['ms_per_token'][p]:.3f}" for p in PARTS]] for r in rows]
    print(f"ms per token, median of {args.reps} runs; torch threads {threads}; "
          f"load average {doc['machine']['loadavg_1_5_15']}")
    print(common.table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
