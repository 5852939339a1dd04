"""The run cache (docs/cache.md) on the bench/run.py suite: a second run of each query replays it.

Run:  flock /tmp/lmql-bench.lock python bench/cache.py            table
      flock /tmp/lmql-bench.lock python bench/cache.py --json     one JSON document
Options: --reps N (pairs per query, default 3), --only name,name.

For each query of the suite (common.SUITE), on the default model: a fresh cache folder, a first run
(it decodes and keeps its work), then a second run (it replays); the forward passes of the second
run (must be 0) and the median over repetitions of second/first wall time. Also measured once: the
model fingerprint's cost (the weights' SHA-256 when first seen, then read back from its memo).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path, HF_HUB_OFFLINE)
from common import median  # noqa: E402


def fingerprint_seconds(model) -> dict:
    """Seconds to fingerprint the model's weights: hashing them (memo removed), then from the memo."""
    from lmql_lite import cache, runcache
    folder = cache.subfolder("digests")
    for p in folder.iterdir() if folder is not None else []:
        p.unlink()
    out = {}
    for what in ("hashed", "from memo"):
        runcache._models.clear()
        cache._digests.clear()
        t0 = time.perf_counter()
        runcache.model_fingerprint(model)
        out[what] = time.perf_counter() - t0
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only")
    args = ap.parse_args()
    import lmql_lite
    from lmql_lite import runcache
    model = common.default_model()
    suite = common.only(common.SUITE, args.only)
    fingerprint = fingerprint_seconds(model)
    rows = []
    for name, what, source, inputs in suite:
        lmql_lite.run(source, model=model, **inputs)  # warm: masks and indexes built, as in bench/run.py
        ratios, firsts, seconds, passes, same = [], [], [], [], True
        for _ in range(args.reps):
            with tempfile.TemporaryDirectory() as folder:
                t0 = time.perf_counter()
                first = lmql_lite.run(source, model=model, cache=folder, **inputs)
                t1 = time.perf_counter()
                second = lmql_lite.run(source, model=model, cache=folder, **inputs)
                t2 = time.perf_counter()
                runcache._opened.pop(folder).close()
            firsts.append(t1 - t0)
            seconds.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
            passes.append(second.trace.forward_passes)
            same &= (first.prompt, first.variables) == (second.prompt, second.variables)
        rows.append({"query": name, "what": what, "first_passes": first.trace.forward_passes,
                     "second_passes": max(passes), "first_s": median(firsts), "second_s": median(seconds),
                     "ratio": median(ratios), "same_result": same})
    doc = {"model": model.name, "reps": args.reps, "fingerprint_s": fingerprint, "queries": rows,
           "max_second_passes": max(r["second_passes"] for r in rows),
           "median_ratio": median([r["ratio"] for r in rows])}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(common.table(
        ("query", "passes 1st", "passes 2nd", "1st s", "2nd s", "2nd/1st", "same"),
        [(r["query"], r["first_passes"], r["second_passes"], r["first_s"], r["second_s"], r["ratio"],
          r["same_result"]) for r in rows],
        ("{}", "{}", "{}", "{:.3f}", "{:.3f}", "{:.3f}", "{}")))
    print(f"median ratio {doc['median_ratio']:.3f}; fingerprint: {fingerprint['hashed']:.3f} s hashed, "
          f"{fingerprint['from memo']:.4f} s from its memo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
