"""Batch throughput: one query over many inputs with run_batch at batch size 1, 4, 8, against raw
transformers batched greedy generation (left-padded `generate`) of the same prompts (issue 5).

Run: python bench/batch.py [--quick] [--json] [--threads N] [--inputs 32] [--tokens 16] [--sizes 1,4,8]

Every input gets exactly --tokens new tokens on both sides (the hole is `len(TOKENS(D)) == N`, raw
uses min_new_tokens = max_new_tokens = N), so tokens per second compare like with like.
Target (DESIGN.md §5): lmql_lite batch 8 >= 4x the tokens per second of batch 1.
--quick: 16 inputs, 8 tokens (a smoke run).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUERY = r'''argmax
    "Here is a short fact about {animal}:[FACT]" where len(TOKENS(FACT)) == {tokens}
    return FACT
'''
PREFIX = "Here is a short fact about {animal}:"
ANIMALS = ["cats", "dogs", "horses", "owls", "sharks", "bees", "eagles", "frogs", "wolves", "whales", "ants",
           "crows", "lions", "tigers", "otters", "bats", "snails", "foxes", "camels", "penguins", "koalas",
           "parrots", "salmon", "spiders", "turtles", "zebras", "goats", "moles", "seals", "ravens", "lizards",
           "bears", "hedgehogs", "squids", "beavers", "geese"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 inputs, 8 tokens: a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--inputs", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--sizes", default="1,4,8")
    args = ap.parse_args()
    if args.quick:
        args.inputs, args.tokens = 16, 8
    threads = common.set_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    import lmql_lite
    model = common.default_model()
    animals = [ANIMALS[i % len(ANIMALS)] for i in range(args.inputs)]
    inputs = [{"animal": a} for a in animals]
    prompts = [PREFIX.format(animal=a) for a in animals]
    query = QUERY.replace("{tokens}", str(args.tokens))

    # Warm-up: compile the query, visit its mask states, touch both batched paths once.
    list(lmql_lite.run_batch(query, inputs[:max(sizes)], batch_size=max(sizes)))
    common.raw_batch_generate(model, prompts[:max(sizes)], 2)

    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        results = [r for _, r in lmql_lite.run_batch(query, inputs, batch_size=size)]
        lm = time.perf_counter() - t0
        lm_tokens = sum(r.trace.generated_tokens + r.trace.forced_tokens for r in results)
        t0 = time.perf_counter()
        raw_tokens = 0
        for start in range(0, len(prompts), size):
            out = common.raw_batch_generate(model, prompts[start:start + size], args.tokens)
            raw_tokens += args.tokens * out.shape[0]
        raw = time.perf_counter() - t0
        rows.append({"batch_size": size, "lmql_s": lm, "lmql_tokens": lm_tokens, "lmql_tok_s": lm_tokens / lm,
                     "raw_s": raw, "raw_tokens": raw_tokens, "raw_tok_s": raw_tokens / raw})
        print(f"[batch.py] batch {size}: lmql_lite {lm_tokens / lm:.1f} tok/s, raw {raw_tokens / raw:.1f} tok/s",
              file=sys.stderr, flush=True)
    base = rows[0]
    for r in rows:
        r["lmql_speedup"] = r["lmql_tok_s"] / base["lmql_tok_s"]
        r["raw_speedup"] = r["raw_tok_s"] / base["raw_tok_s"]
        r["ratio"] = r["raw_tok_s"] / r["lmql_tok_s"]  # time ratio lmql ÷ raw for the same tokens
    doc = {"threads": threads, "inputs": args.inputs, "tokens_per_input": args.tokens, "rows": rows,
           "machine": common.machine_note()}
    last = rows[-1]
    doc["lmql_speedup_last_over_first"] = last["lmql_speedup"]
    doc["raw_speedup_last_over_first"] = last["raw_speedup"]
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(common.table(("batch size", "lmql s", "lmql tok/s", "lmql speed-up", "raw s", "raw tok/s", "raw speed-up",
                        "time ratio lmql÷raw"),
                       [(r["batch_size"], r["lmql_s"], r["lmql_tok_s"], r["lmql_speedup"], r["raw_s"], r["raw_tok_s"],
                         r["raw_speedup"], r["ratio"]) for r in rows],
                       ("{}", "{:.2f}", "{:.1f}", "{:.2f}x", "{:.2f}", "{:.1f}", "{:.2f}x", "{:.2f}")))
    print(f"{args.inputs} inputs x {args.tokens} tokens; speed-up = tokens/s over batch size {base['batch_size']}; "
          f"torch threads {threads}; load average {doc['machine']['loadavg_1_5_15']}")
    print(f"batch {last['batch_size']} over batch {base['batch_size']}: lmql_lite {last['lmql_speedup']:.2f}x "
          f"(target >= 4x), raw transformers {last['raw_speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
