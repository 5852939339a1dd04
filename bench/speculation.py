"""Speculative drafts on extraction queries: lmql_lite with drafts, without, and raw transformers greedy (issue 16).

Run:  flock /tmp/lmql-bench.lock python bench/speculation.py            table
      flock /tmp/lmql-bench.lock python bench/speculation.py --json     one JSON document
Options: --reps N (default 5), --threads N, --only name,name, --longest N, --shortest N, --draft N
(the lookup's longest and shortest text match in bytes, the most draft tokens per pass, to tune
them); --guesses: no timing, drafts forced on, the share of guesses kept, for boundary tokens
and for matches by length (what `speculate.Learned.PRIOR` is set from).

Each query copies from a document it is given (a name, a sentence, a JSON record, a span): the
text a prompt-lookup draft finds in the prompt. Per query, in one process, each repetition runs
back to back (order reversed every other repetition): lmql_lite with drafts (the default), lmql_lite
with `speculate=False`, and raw greedy transformers (bench/common.py `raw_manual`: a DynamicCache
loop, one pass per token) generating as many tokens as lmql_lite's holes hold (chosen + forced), from
the prompt text before the first hole. A ratio is the median of the per-repetition ratios. The
values with and without drafts must be identical (argmax); `identical` says whether they were.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path, HF_HUB_OFFLINE)
from common import log, median  # noqa: E402

DOCUMENT = ("Northwind Labs announced on Monday that Dr. Helena Vasquez-Moreau will lead its new research centre "
            "in Porto. The centre, which opens in September 2025, will employ 140 engineers and focus on battery "
            "recycling. \"We want every cell that leaves a car to come back as a new one,\" Vasquez-Moreau said at "
            "the launch. The project has a budget of 48 million euros, shared between the company and the city "
            "of Porto.")

SUITE: list[tuple[str, str, str]] = [
    ("name", "copy a name from a paragraph", r'''argmax
    "Article: {doc}\n"
    "Name of the person who will lead the research centre:[NAME]" where STOPS_AT(NAME, "\n") and len(TOKENS(NAME)) < 24
    return NAME.strip()
'''),
    ("quote", "quote a sentence", r'''argmax
    "Article: {doc}\n"
    "Q: Which sentence of the article gives the budget? Quote it word for word.\n"
    "A: \"[QUOTE]" where STOPS_BEFORE(QUOTE, '"') and len(TOKENS(QUOTE)) < 48
    return QUOTE.strip()
'''),
    ("record", "fill a JSON record from a document", r'''argmax
    "Article: {doc}\n"
    "The facts of the article as JSON:\n"
    "{{\n"
    '  "leader": "[LEADER]",\n' where STOPS_BEFORE(LEADER, '"') and len(TOKENS(LEADER)) < 16
    '  "city": "[CITY]",\n' where STOPS_BEFORE(CITY, '"') and len(TOKENS(CITY)) < 8
    '  "opens": "[OPENS]",\n' where STOPS_BEFORE(OPENS, '"') and len(TOKENS(OPENS)) < 8
    '  "focus": "[FOCUS]"\n' where STOPS_BEFORE(FOCUS, '"') and len(TOKENS(FOCUS)) < 12
    "}}"
    return {"leader": LEADER, "city": CITY, "opens": OPENS, "focus": FOCUS}
'''),
    ("span", "answer with a span of the text", r'''argmax
    "Article: {doc}\n"
    "Q: What did Vasquez-Moreau say at the launch? Answer with her words from the article.\n"
    "A: She said:[SPAN]" where STOPS_AT(SPAN, "\n") and len(TOKENS(SPAN)) < 40
    return SPAN.strip()
'''),
]


def prefix_ids(model, source: str) -> list[int]:
    """The prompt's tokens before the first hole's value (BOS included), as the raw side is given them."""
    _, prefix = common.prefix_of(source, doc=DOCUMENT)
    return list(model.bos_ids) + model.encode(prefix, special=True)


def measure(model, name: str, what: str, source: str, reps: int) -> dict:
    import lmql_lite

    def run(speculate):
        return lmql_lite.run(source, doc=DOCUMENT, trace=True, speculate=speculate)

    on, off = run(None), run(False)  # warm-up, and the values to compare
    tokens = off.trace.generated_tokens + off.trace.forced_tokens
    ids = prefix_ids(model, source)
    raw = lambda: common.raw_manual(model, ids, tokens)  # noqa: E731
    raw()
    times, _ = common.alternating([("on", lambda: run(None)), ("off", lambda: run(False)), ("raw", raw)], reps)
    ratio = lambda a, b: common.paired_ratio(times[a], times[b])  # noqa: E731
    t = on.trace
    return {
        "name": name, "what": what, "tokens": tokens, "passes": t.forward_passes, "passes_off": off.trace.forward_passes,
        "drafted": t.drafted_tokens, "accepted": t.accepted_tokens, "rejected": t.rejected_tokens,
        "identical": on.variables == off.variables and on.prompt == off.prompt,
        "value": on.value, "on_ms": median(times["on"]) * 1e3, "off_ms": median(times["off"]) * 1e3,
        "raw_ms": median(times["raw"]) * 1e3, "ratio": ratio("on", "raw"), "ratio_off": ratio("off", "raw"),
        "on_vs_off": ratio("on", "off"),
        "all_ms": {k: [x * 1e3 for x in v] for k, v in times.items()},
    }


def guesses(speculate, as_json: bool) -> int:
    """Every query of both suites with drafts forced on (flat pass costs, so every guess is sent), the
    guesses counted by strength (speculate.Learned.strength): the measurement behind Learned.PRIOR."""
    import lmql_lite
    learned = speculate.Learned(lambda width: 1.0)
    learned.CAP = float("inf")
    speculate.learned_for = lambda model: learned
    runs = [(name, source, {"doc": DOCUMENT}) for name, _, source in SUITE]
    runs += [(name, source, inputs) for name, _, source, inputs in common.SUITE]
    for name, source, inputs in runs:
        log(f"[speculation.py --guesses] {name} ...")
        lmql_lite.run(source, **inputs)
    rows = []
    for strength in sorted(learned.PRIOR):
        hits, trials = learned.observed(strength)
        if not trials:
            continue
        label = "boundary token" if strength == speculate.BOUNDARY else f"match of {2 ** (strength - 1)}-{2 ** strength - 1} bytes"
        rows.append({"strength": strength, "guess": label,
                     "guesses": round(trials), "kept": round(hits), "share": hits / trials if trials else None})
    if as_json:
        print(json.dumps({"machine": common.machine_note(), "guesses": rows}, indent=2))
        return 0
    print(common.table(("guess", "guesses", "kept", "share"),
                       [(r["guess"], r["guesses"], r["kept"], r["share"]) for r in rows],
                       ("{}", "{}", "{}", "{:.2f}")))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", help="comma-separated query names")
    ap.add_argument("--longest", type=int, help="the prompt lookup's longest text match, in bytes")
    ap.add_argument("--shortest", type=int, help="the prompt lookup's shortest text match, in bytes")
    ap.add_argument("--draft", type=int, help="draft tokens per pass at most")
    ap.add_argument("--guesses", action="store_true",
                    help="no timing: drafts forced on (every pass drafts what it can), over this suite and "
                         "bench/run.py's; how many guesses were kept: boundary tokens, and matches by their length")
    args = ap.parse_args()
    threads = common.set_threads(args.threads)
    from lmql_lite import speculate
    speculate.PromptLookup.LONGEST = args.longest or speculate.PromptLookup.LONGEST
    speculate.PromptLookup.SHORTEST = args.shortest or speculate.PromptLookup.SHORTEST
    if args.draft:  # tuning: the module's default, changed for this run
        made = speculate.for_options

        def for_options(options, model, spell):
            d = made(options, model, spell)
            if d is not None:
                d.longest = args.draft
            return d
        speculate.for_options = for_options
    if args.guesses:
        return guesses(speculate, args.json)
    model = common.default_model()
    model.vocabulary  # noqa: B018 (built once, outside the timed runs)
    doc = {"machine": common.machine_note(), "reps": args.reps, "threads": threads, "queries": [],
           "settings": {"longest": args.longest, "shortest": args.shortest, "draft": args.draft}}
    for name, what, source in common.only(SUITE, args.only):
        log(f"[speculation.py] {name} ...")
        doc["queries"].append(measure(model, name, what, source, args.reps))
    qs = doc["queries"]
    doc["median_ratio"] = median([q["ratio"] for q in qs])
    doc["median_ratio_off"] = median([q["ratio_off"] for q in qs])
    doc["all_identical"] = all(q["identical"] for q in qs)
    if args.json:
        print(json.dumps(doc, indent=2, default=repr))
        return 0
    print(common.table(
        ("query", "tokens", "passes", "passes off", "drafted", "accepted", "on ms", "off ms", "raw ms",
         "on/raw", "off/raw", "on/off", "identical"),
        [(q["name"], q["tokens"], q["passes"], q["passes_off"], q["drafted"], q["accepted"], q["on_ms"],
          q["off_ms"], q["raw_ms"], q["ratio"], q["ratio_off"], q["on_vs_off"], q["identical"]) for q in qs],
        ("{}", "{}", "{}", "{}", "{}", "{}", "{:.0f}", "{:.0f}", "{:.0f}", "{:.2f}", "{:.2f}", "{:.2f}", "{}")))
    print(f"median on/raw {doc['median_ratio']:.2f} (target <= 0.6), off/raw {doc['median_ratio_off']:.2f}; "
          f"values identical with and without drafts: {doc['all_identical']}")
    m = doc["machine"]
    print(f"torch threads {m['torch_threads']}, load average {m['loadavg_1_5_15']}, reps {args.reps}")
    for q in qs:
        print(f"  {q['name']}: {q['value']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
