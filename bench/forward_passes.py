"""Fast-forward: hole tokens vs forward passes for choice, regex-with-literals and == holes (issue 5).

Run: python bench/forward_passes.py [--quick] [--json] [--threads N]

A decoder without fast-forward needs one forward pass per hole token (the prompt goes in with the
first). lmql_lite appends tokens the constraint forces (the rest of " positive" once " pos" is
chosen, the "-" of a date, a `==` value) without asking the model, so `passes` must be below
`tokens` for these holes. Wall times are single runs after a warm-up (use bench/run.py for timing).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CASES = [
    ("choice (3 labels)", r'''argmax
    "Review: The soup was cold and the waiter ignored us.\nSentiment:[LABEL]" where LABEL in [" very positive", " neutral and balanced", " extremely negative"]
''', {}),
    ("choice (5 cities)", r'''argmax
    "Q: Which city is the capital of France?\nA:[CITY]" where CITY in [" Paris, France", " Lyon, France", " Marseille, France", " Toulouse, France", " Nice, France"]
''', {}),
    (r"regex date \d{4}-\d{2}-\d{2}", r'''argmax
    "Text: The invoice from March 3rd, 2021 lists 14 items.\nThe date in YYYY-MM-DD form: [DATE]" where REGEX(DATE, r"\d{4}-\d{2}-\d{2}")
''', {}),
    (r"regex phone \(\d{3}\) \d{3}-\d{4}", r'''argmax
    "Call us at our office. Phone: [PHONE]" where REGEX(PHONE, r"\(\d{3}\) \d{3}-\d{4}")
''', {}),
    (r"regex ID-\d{4}-[A-Z]{2}-OK", r'''argmax
    "Order reference:[REF]" where REGEX(REF, r" ID-\d{4}-[A-Z]{2}-OK")
''', {}),
    ("== value", r'''argmax
    "Q: What is the answer to life, the universe and everything?\nA:[ANSWER]" where ANSWER == " The answer is forty-two, as the supercomputer Deep Thought computed."
''', {}),
    ("free text (no fast-forward)", r'''argmax
    "Once upon a time,[STORY]" where len(TOKENS(STORY)) == 12
''', {}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="same as the default (one measured run per case)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    threads = common.set_threads(args.threads)
    import lmql_lite
    common.default_model()
    rows = []
    for label, source, inputs in CASES:
        try:
            lmql_lite.run(source, **inputs)  # warm-up: compiles the query, visits the mask states
            dt, r = common.timed(lambda: lmql_lite.run(source, trace=True, **inputs))
        except Exception as e:
            rows.append({"case": label, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]})
            continue
        t = r.trace
        tokens = t.generated_tokens + t.forced_tokens
        value = next(iter(r.variables.values()), None)
        rows.append({"case": label, "value": value, "tokens": tokens, "chosen": t.generated_tokens,
                     "forced": t.forced_tokens, "forward_passes": t.forward_passes,
                     "saved": tokens - t.forward_passes, "wall_ms": dt * 1e3,
                     "pattern": "".join("c" if rec.how == "chosen" else "f" for rec in (t.tokens or []))})
    if args.json:
        print(json.dumps({"threads": threads, "cases": rows}, indent=1))
        return 0
    print(common.table(("hole", "value", "tokens", "chosen", "forced", "passes", "passes saved", "wall ms",
                        "c=chosen f=forced"),
                       [(r["case"], repr(r.get("value"))[:40], r.get("tokens"), r.get("chosen"), r.get("forced"),
                         r.get("forward_passes"), r.get("saved"), r.get("wall_ms"), r.get("pattern"))
                        for r in rows],
                       ("{}", "{}", "{}", "{}", "{}", "{}", "{}", "{:.0f}", "{}")))
    print("tokens = hole tokens (chosen + forced); passes = forward passes of the whole run (the prompt goes in "
          "with the first);\na decoder without fast-forward needs as many passes as tokens. "
          f"torch threads {threads}.")
    for r in rows:
        if "error" in r:
            print(f"  {r['case']}: FAILED: {r['error']}")
    bad = [r["case"] for r in rows if "error" not in r and "free text" not in r["case"] and r["saved"] <= 0]
    if bad:
        print("fast-forward did not cut passes below tokens for: " + ", ".join(bad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
