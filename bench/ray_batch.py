"""Batch throughput on Ray workers: the plain in-process run_batch against `ray=True` with 1 and 2
workers, on the default model, over the same rows in the same run (issue 14).

Run: python bench/ray_batch.py [--json] [--inputs 16] [--tokens 8] [--batch-size 4] [--reps 1]

One local cluster (all of this machine's CPUs) serves every Ray run; each Ray run starts its own
workers, which load their own copy of the model, so two rates are given: over the whole run
(`rows/s`, worker start and model load included) and from the first row back to the last
(`rows/s after first`: the start left out; with several workers the others' rows done before the
first one arrived come in a burst, so it overstates the steady state). The plain run's model is
loaded before its clock starts.
Repetitions run the three configurations in alternating order, and medians are reported.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUERY = r'''argmax
    "Here is a short fact about {animal}:[FACT]" where len(TOKENS(FACT)) == {tokens}
    return FACT
'''
ANIMALS = ["cats", "dogs", "horses", "owls", "sharks", "bees", "eagles", "frogs", "wolves", "whales", "ants",
           "crows", "lions", "tigers", "otters", "bats"]
CONFIGS = (("plain", None), ("ray, 1 worker", 1), ("ray, 2 workers", 2))


def timed_run(query: str, inputs: list[dict], batch_size: int, workers: int | None) -> dict:
    import lmql_lite
    options = {} if workers is None else {"ray": True, "workers": workers}
    start = time.perf_counter()
    first = None
    values = {}
    for index, result in lmql_lite.run_batch(query, inputs, batch_size=batch_size, **options):
        first = first if first is not None else time.perf_counter()
        values[index] = result.variables["FACT"]
    end = time.perf_counter()
    rows = len(values)
    after = (rows - 1) / (end - first) if rows > 1 and end > first else None
    return {"seconds": end - start, "rows_s": rows / (end - start), "rows_s_after_first": after, "values": values}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    import ray

    import lmql_lite
    query = QUERY.replace("{tokens}", str(args.tokens))
    inputs = [{"animal": ANIMALS[i % len(ANIMALS)]} for i in range(args.inputs)]
    cpus = len(os.sched_getaffinity(0))
    from lmql_lite.ray_batch import _worker_niceness
    with _worker_niceness():  # as the local cluster of `--ray` is started: workers at the driver's priority
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        lmql_lite.model().load()
        list(lmql_lite.run_batch(query, inputs[:args.batch_size], batch_size=args.batch_size))  # warm-up
        runs: dict[str, list[dict]] = {name: [] for name, _ in CONFIGS}
        for rep in range(args.reps):
            order = CONFIGS if rep % 2 == 0 else tuple(reversed(CONFIGS))
            for name, workers in order:
                runs[name].append(timed_run(query, inputs, args.batch_size, workers))
                r = runs[name][-1]
                after = f"{r['rows_s_after_first']:.2f}" if r["rows_s_after_first"] is not None else "-"
                print(f"[ray_batch.py] rep {rep + 1} {name}: {r['seconds']:.1f} s, {r['rows_s']:.2f} rows/s, "
                      f"{after} rows/s after the first row", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    plain_values = runs["plain"][0]["values"]
    rows = []
    for name, workers in CONFIGS:
        rs = runs[name]
        after = [r["rows_s_after_first"] for r in rs if r["rows_s_after_first"] is not None]
        rows.append({"config": name, "workers": workers, "seconds": common.median([r["seconds"] for r in rs]),
                     "rows_s": common.median([r["rows_s"] for r in rs]),
                     "rows_s_after_first": common.median(after) if after else None,
                     "same_values_as_plain": all(r["values"] == plain_values for r in rs)})
    doc = {"inputs": args.inputs, "tokens_per_input": args.tokens, "batch_size": args.batch_size, "reps": args.reps,
           "cluster_cpus": cpus, "rows": rows, "machine": common.machine_note()}
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(common.table(("run", "seconds", "rows/s", "rows/s after first", "same rows as plain"),
                       [(r["config"], r["seconds"], r["rows_s"], r["rows_s_after_first"], r["same_values_as_plain"])
                        for r in rows], ("{}", "{:.2f}", "{:.2f}", "{:.2f}", "{}")))
    print(f"{args.inputs} inputs x {args.tokens} tokens, batch size {args.batch_size}, median of {args.reps} "
          f"rep(s); local cluster of {cpus} CPUs; load average {doc['machine']['loadavg_1_5_15']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
