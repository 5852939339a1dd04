"""lmql_lite side by side with raw transformers greedy generation (issue 6, DESIGN.md §5).

Run:  python bench/run.py                 table (7 repetitions after a warm-up, medians)
      python bench/run.py --json          one JSON document (per-query ratio, median_ratio, max_ratio, ...)
      python bench/run.py --quick         smoke run: 1 repetition, no cold-start measurement
      python bench/run.py --profile       also cProfile lmql_lite over the suite (top functions)
      python bench/run.py --engine llama.cpp   the suite on the llama.cpp engine (see bench/on_llamacpp.py)
Options: --reps N, --threads N (torch threads for both sides), --only name,name, --no-cold, --no-subprocess,
      --no-speculate (lmql_lite decodes one token per pass), --speculate-pairs (each repetition also
      runs lmql_lite with speculate=False: per query `drafts_vs_off`, the median paired ratio).

For each query of the suite (common.SUITE), in one process and one run:
- lmql_lite: `lmql_lite.run(query, **inputs)` on the default model, wall time of the whole call;
- raw: the same weights (`lmql_lite.model().module`), the prompt text before the query's first hole
  (tokenized with the same tokenizer, BOS included), greedy generation of exactly as many new tokens
  as lmql_lite's holes produced (generated + forced). Two ways, the faster one is the floor:
  `manual` (a tight loop: model(ids, past_key_values=DynamicCache()) + argmax) and `generate`
  (module.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)). For a `distribution`
  query (no generated tokens) raw scores the same values: the prompt once, then the values in one
  right-padded batched pass over the prompt's cache.
Each repetition runs lmql_lite, manual and generate back to back (in reversed order every other
time), so that machine noise hits all three alike; a query's ratio is the median over repetitions
of lmql_lite's time divided by the floor's time in the same repetition.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets sys.path, HF_HUB_OFFLINE)
from common import log, median  # noqa: E402


class ForwardTimer:
    """Seconds spent inside the model's forward (hooks), to split wall time into model and the rest.

    Hooks the causal LM and its body (`base_model`): lmql_lite calls the body alone when a mask
    allows few tokens (it then computes only their logits, outside any hook: counted as its own
    work). Nested calls count once.
    """

    def __init__(self, module):
        self.seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        self._depth = 0
        modules = [module] + ([module.base_model] if getattr(module, "base_model", module) is not module else [])
        self._handles = [h for m in modules
                         for h in (m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post))]

    def _pre(self, *_):
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0
            self.calls += 1

    def remove(self):
        for h in self._handles:
            h.remove()


RUN_OPTIONS: dict = {}  # options every lmql_lite.run of the suite gets (--no-speculate)


def measure_query(model, name: str, what: str, source: str, inputs: dict, reps: int, pairs: bool = False) -> dict:
    import lmql_lite
    row = {"name": name, "what": what}
    probe, prefix = common.prefix_of(source, trace=True, **inputs, **RUN_OPTIONS)  # also compiles and warms its masks
    tr = probe.trace
    n = tr.generated_tokens + tr.forced_tokens
    prompt_ids = list(model.bos_ids) + model.encode(prefix, special=True)
    row.update(tokens=n, generated=tr.generated_tokens, forced=tr.forced_tokens, forward_passes=tr.forward_passes,
               tokens_fed=tr.tokens_fed, prompt_tokens=len(prompt_ids), value=common_jsonable(probe.value))
    candidates = None
    if probe.distribution is not None and n == 0:
        candidates = [model.encode(v) for v in probe.distribution]
        row["scored_tokens"] = sum(map(len, candidates))

    def run_lmql():
        return lmql_lite.run(source, **inputs, **RUN_OPTIONS)

    def run_off():
        return lmql_lite.run(source, **inputs, speculate=False)

    if candidates is not None:
        raws = {"score": lambda: common.raw_score(model, prompt_ids, candidates)}
    else:
        raws = {"manual": lambda: common.raw_manual(model, prompt_ids, n),
                "generate": lambda: common.raw_generate(model, prompt_ids, n)}
    # Warm-up: one of each (the probe above already ran lmql_lite once).
    run_lmql()
    for fn in raws.values():
        fn()
    sides = [("lmql", run_lmql)] + ([("off", run_off)] if pairs else []) + list(raws.items())
    times, results = common.alternating(sides, reps)
    lm_times, off_times = times["lmql"], times.get("off", [])
    mask_times = [res.trace.mask_seconds for res in results["lmql"]]
    raw_times = {k: times[k] for k in raws}
    # One instrumented run of each side: time inside the model's forward vs everything else.
    timer = ForwardTimer(model.module)
    try:
        wall, _ = common.timed(run_lmql)
        lm_fwd, lm_calls = timer.seconds, timer.calls
        timer.seconds, timer.calls = 0.0, 0
        floor_fn = raws.get("manual") or raws["score"]
        raw_wall, _ = common.timed(floor_fn)
        raw_fwd = timer.seconds
    finally:
        timer.remove()
    lm = median(lm_times)
    raw_medians = {k: median(v) for k, v in raw_times.items()}
    floor = min(raw_medians, key=raw_medians.get)
    raw = raw_medians[floor]
    # The ratio is the median of the per-repetition ratios against the floor: pairing the runs
    # of one repetition cancels the slow drifts that move both sides together.
    pair_ratios = sorted(a / b for a, b in zip(lm_times, raw_times[floor]) if b)
    counted = n if candidates is None else row["scored_tokens"]
    row.update(
        lmql_ms=lm * 1e3, raw_ms=raw * 1e3, raw_floor=floor,
        raw_manual_ms=raw_medians.get("manual", float("nan")) * 1e3,
        raw_generate_ms=raw_medians.get("generate", float("nan")) * 1e3,
        lmql_tok_s=counted / lm if lm else None, raw_tok_s=counted / raw if raw else None,
        ratio=median(pair_ratios) if pair_ratios else None,
        ratio_of_medians=lm / raw if raw else None,
        ratio_range=[pair_ratios[0], pair_ratios[-1]] if pair_ratios else None,
        mask_ms=median(mask_times) * 1e3, mask_share=median(mask_times) / lm if lm else None,
        mask_ms_per_token=median(mask_times) * 1e3 / max(tr.generated_tokens, 1),
        lmql_forward_calls=lm_calls,
        lmql_outside_forward_share=(wall - lm_fwd) / wall if wall else None,
        raw_outside_forward_share=(raw_wall - raw_fwd) / raw_wall if raw_wall else None,
        # Milliseconds outside the model's forward per forward pass: the interpreter's own cost per step.
        lmql_outside_ms_per_pass=(wall - lm_fwd) * 1e3 / max(lm_calls, 1),
        raw_outside_ms_per_pass=(raw_wall - raw_fwd) * 1e3 / max(n if candidates is None else 2, 1),
        drafts_vs_off=common.paired_ratio(lm_times, off_times) if off_times else None,
        off_ms=median(off_times) * 1e3 if off_times else None,
        drafted=tr.drafted_tokens, accepted=tr.accepted_tokens,
        lmql_ms_all=[t * 1e3 for t in lm_times], raw_ms_all={k: [t * 1e3 for t in v] for k, v in raw_times.items()},
    )
    return row


def common_jsonable(x):
    try:
        json.dumps(x)
        return x
    except TypeError:
        return repr(x)


# ---- subprocess measurements ----------------------------------------------------------------

LMQL_LOAD = """
import lmql_lite
m = lmql_lite.model().load()  # a model handle is lazy (as in LMQL): load it here
loaded = time.perf_counter() - T0
out = {"seconds": loaded, "peak_mb_after_load": peak_mb()}
if os.environ.get("BENCH_FIRST_QUERY"):
    t = time.perf_counter()
    lmql_lite.run("examples/capital.lmq", country="France")
    out["first_query_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lmql_lite.run("examples/capital.lmq", country="France")
    out["second_query_s"] = time.perf_counter() - t
print(json.dumps(out))
"""

PLAIN_LOAD = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = os.environ["BENCH_FOLDER"]
module = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
print(json.dumps({"seconds": time.perf_counter() - T0, "peak_mb_after_load": peak_mb()}))
"""

CHECK = """
from lmql_lite.cli import main
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    rc = main(["check", "examples/capital.lmq"])
print(json.dumps({"seconds": time.perf_counter() - T0, "rc": rc, "torch_imported": "torch" in sys.modules,
                  "transformers_imported": "transformers" in sys.modules}))
"""

MEM_LMQL = """
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
import lmql_lite
sys.path.insert(0, os.path.join({root!r}, "bench"))
from common import SUITE
source, inputs = [(s, i) for name, _, s, i in SUITE if name == "free60"][0]
r = lmql_lite.run(source, **inputs)
print(json.dumps({"peak_mb": peak_mb(), "rss_mb": rss_mb(), "tokens": r.trace.generated_tokens + r.trace.forced_tokens}))
"""

MEM_RAW = """
import torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
folder = os.environ["BENCH_FOLDER"]
module = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer(os.environ["BENCH_PROMPT"]).input_ids
n = int(os.environ["BENCH_N"])
with torch.inference_mode():
    out = module.generate(input_ids=torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=tokenizer.eos_token_id)
print(json.dumps({"peak_mb": peak_mb(), "rss_mb": rss_mb(), "tokens": out.shape[1] - len(ids)}))
"""


def subprocess_figures(args, threads: int, free60_prefix: str, free60_n: int) -> dict:
    folder = str(common.default_folder())
    env = {"BENCH_FOLDER": folder, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    reps = 1 if args.quick else 3
    out: dict = {"model_folder": folder}
    code = common.child_code
    # Warm start: import + default model load, in fresh processes; the plain transformers load of
    # the same folder. Paired and alternating like the queries; the ratio is the median pair's.
    lm, plain = [], []
    for rep in range(1 if args.quick else 5):
        for side in (("lmql", "plain") if rep % 2 == 0 else ("plain", "lmql")):
            wall, child = common.run_child(code(LMQL_LOAD if side == "lmql" else PLAIN_LOAD), env)
            (lm if side == "lmql" else plain).append((wall, child))
    out["warm_load"] = {
        "lmql_lite_s": median([c["seconds"] for _, c in lm]),
        "transformers_s": median([c["seconds"] for _, c in plain]),
        "lmql_lite_process_s": median([w for w, _ in lm]),
        "transformers_process_s": median([w for w, _ in plain]),
        "ratio": median([a["seconds"] / b["seconds"] for (_, a), (_, b) in zip(lm, plain)]),
        "lmql_lite_all_s": [c["seconds"] for _, c in lm],
        "transformers_all_s": [c["seconds"] for _, c in plain],
    }
    # First query in a fresh process (builds the vocabulary index): what a CLI user waits for.
    _, child = common.run_child(code(LMQL_LOAD), dict(env, BENCH_FIRST_QUERY="1"))
    out["fresh_process"] = {"load_s": child["seconds"], "first_query_s": child.get("first_query_s"),
                            "second_query_s": child.get("second_query_s")}
    # Cold start: an empty LMQL_LITE_CACHE, so the GGUF is converted once.
    if args.cold and not args.quick:
        with tempfile.TemporaryDirectory(prefix="lmql-bench-cache-") as tmp:
            wall, child = common.run_child(code(LMQL_LOAD), dict(env, LMQL_LITE_CACHE=tmp), timeout=900)
        out["cold_load_s"] = child["seconds"]
    # `lmql-lite check`: the console script's wall time, and whether torch got imported.
    script = Path(sys.executable).with_name("lmql-lite")
    if script.exists():
        import subprocess
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            proc = subprocess.run([str(script), "check", "examples/capital.lmq"], cwd=str(common.ROOT),
                                  capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
        out["check"] = {"process_s": median(times), "rc": proc.returncode}
    _, child = common.run_child(code(CHECK), env)
    out.setdefault("check", {}).update(in_process_s=child["seconds"], rc_in_process=child["rc"],
                                       torch_imported=child["torch_imported"],
                                       transformers_imported=child["transformers_imported"])
    # Peak resident memory: the free60 query through lmql_lite vs raw generate of the same tokens.
    _, a = common.run_child(code(MEM_LMQL.replace("{root!r}", repr(str(common.ROOT)))), env)
    _, b = common.run_child(code(MEM_RAW), dict(env, BENCH_PROMPT=free60_prefix, BENCH_N=str(free60_n)))
    out["memory"] = {"lmql_lite_peak_mb": a["peak_mb"], "raw_peak_mb": b["peak_mb"],
                     "ratio": a["peak_mb"] / b["peak_mb"], "query": "free60",
                     "lmql_lite_rss_after_mb": a["rss_mb"], "raw_rss_after_mb": b["rss_mb"]}
    return out


# ---- reporting --------------------------------------------------------------------------------

def print_report(doc: dict) -> None:
    rows = []
    for q in doc["queries"]:
        if "error" in q:
            rows.append((q["name"],) + (None,) * 13)
            continue
        tokens = f"{q['tokens']} ({q['generated']}+{q['forced']})"
        if "scored_tokens" in q:
            tokens = f"{q['scored_tokens']} scored"
        rows.append((q["name"], tokens, q["forward_passes"], q["lmql_ms"], q["raw_ms"], q["raw_floor"],
                     q["lmql_tok_s"], q["raw_tok_s"], q["ratio"],
                     "{:.2f}-{:.2f}".format(*q["ratio_range"]), 100 * q["mask_share"],
                     100 * q["lmql_outside_forward_share"], q["lmql_outside_ms_per_pass"],
                     q["raw_outside_ms_per_pass"]))
    print(common.table(
        ("query", "tokens (gen+forced)", "passes", "lmql ms", "raw ms", "raw floor", "lmql tok/s", "raw tok/s",
         "ratio", "ratio range", "mask %", "outside fwd %", "lmql ms/pass", "raw ms/pass"),
        rows, ("{}", "{}", "{}", "{:.1f}", "{:.1f}", "{}", "{:.1f}", "{:.1f}", "{:.2f}", "{}", "{:.1f}", "{:.1f}",
               "{:.2f}", "{:.2f}")))
    print("tokens: hole tokens lmql_lite produced (chosen + forced), the raw side generates as many; passes: "
          "lmql_lite's forward passes;\nratio: median over repetitions of lmql time / raw time in the same repetition "
          "(raw = the faster of manual loop and generate by median), range: the lowest and highest of those; "
          "mask %: mask time / lmql wall; outside fwd %: share of lmql wall outside the model's forward;\n"
          "ms/pass: milliseconds outside the model's forward per forward pass (interpreter or loop overhead)")
    for q in doc["queries"]:
        if "error" in q:
            print(f"  {q['name']}: FAILED: {q['error']}")
    paired = [q for q in doc["queries"] if q.get("drafts_vs_off")]
    if paired:
        print("drafts on / off (median of paired repetitions; target <= 1.03): " + ", ".join(
            f"{q['name']} {q['drafts_vs_off']:.3f} ({q['accepted']}/{q['drafted']} accepted)" for q in paired))
    print(f"median_ratio {doc['median_ratio']:.2f}  max_ratio {doc['max_ratio']:.2f}   "
          f"(targets: median <= 1.0, max <= 1.15)")
    m = doc["machine"]
    print(f"torch threads {m['torch_threads']}, cpus {m['cpus']}, load average {m['loadavg_1_5_15']}, "
          f"torch {m['torch']}, transformers {m['transformers']}, reps {doc['reps']}")
    s = doc.get("subprocess")
    if s:
        w = s["warm_load"]
        print(f"\nwarm start (fresh process, import + default model): lmql_lite {w['lmql_lite_s']:.2f} s, "
              f"plain transformers from {s['model_folder']} {w['transformers_s']:.2f} s, "
              f"ratio {w['ratio']:.2f} (target <= 1.25); whole processes {w['lmql_lite_process_s']:.2f} s vs "
              f"{w['transformers_process_s']:.2f} s")
        f = s["fresh_process"]
        print(f"fresh process: first query (examples/capital.lmq) {f['first_query_s']:.2f} s, "
              f"second {f['second_query_s']:.2f} s")
        if "cold_load_s" in s:
            print(f"cold start (empty LMQL_LITE_CACHE, converts the GGUF): {s['cold_load_s']:.1f} s")
        c = s["check"]
        print(f"lmql-lite check examples/capital.lmq: {c.get('process_s', float('nan')):.2f} s (process), "
              f"{c['in_process_s']:.2f} s in-process; torch imported: {c['torch_imported']} (target <= 1 s, no torch)")
        mm = s["memory"]
        print(f"peak RSS: lmql_lite free60 run {mm['lmql_lite_peak_mb']:.0f} MB vs raw generate "
              f"{mm['raw_peak_mb']:.0f} MB, ratio {mm['ratio']:.2f} (target <= 1.3); resident after the run "
              f"{mm['lmql_lite_rss_after_mb']:.0f} MB vs {mm['raw_rss_after_mb']:.0f} MB")


def profile_suite(model, suite, reps: int) -> None:
    import cProfile
    import io
    import pstats
    import lmql_lite
    prof = cProfile.Profile()
    for name, _, source, inputs in suite:
        try:
            lmql_lite.run(source, **inputs)
        except Exception:
            continue
        prof.enable()
        for _ in range(reps):
            lmql_lite.run(source, **inputs)
        prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    print("\ncProfile of lmql_lite over the suite (sorted by own time):")
    print(s.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1 repetition, no cold start: a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    ap.add_argument("--only", help="comma-separated query names")
    ap.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold-start measurement")
    ap.add_argument("--no-subprocess", dest="subprocess", action="store_false",
                    help="skip load time, check time and memory (fresh processes)")
    ap.add_argument("--profile", action="store_true", help="cProfile lmql_lite over the suite afterwards")
    ap.add_argument("--engine", choices=("transformers", "llama.cpp"), default="transformers",
                    help="the engine lmql_lite runs on (llama.cpp: against raw llama-cpp-python and raw transformers)")
    ap.add_argument("--no-speculate", dest="speculate", action="store_false",
                    help="lmql_lite without speculative drafts (speculate=False)")
    ap.add_argument("--speculate-pairs", action="store_true",
                    help="each repetition also runs lmql_lite with speculate=False (drafts_vs_off per query)")
    args = ap.parse_args()
    if not args.speculate:
        RUN_OPTIONS["speculate"] = False
    if args.engine == "llama.cpp":
        import on_llamacpp
        doc = on_llamacpp.main(args)
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            on_llamacpp.print_report(doc)
        return 0
    os.environ["LMQL_LITE_ENGINE"] = "transformers"  # lmql_lite's runs, and the fresh processes below
    reps = 1 if args.quick else args.reps
    threads = common.set_threads(args.threads)
    suite = common.only(common.SUITE, args.only)
    t0 = time.perf_counter()
    model = common.default_model()
    load_s = time.perf_counter() - t0
    model.vocabulary  # noqa: B018 (built once, outside the timed runs)
    doc = {"machine": common.machine_note(), "reps": reps, "model": model.name, "in_process_load_s": load_s,
           "queries": []}
    free60 = None
    for name, what, source, inputs in suite:
        log(f"[run.py] {name} ...")
        try:
            row = measure_query(model, name, what, source, inputs, reps, args.speculate_pairs)
        except Exception as e:  # a query lmql_lite cannot run yet: report it, keep going
            row = {"name": name, "what": what, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        doc["queries"].append(row)
        if name == "free60" and "error" not in row:
            free60 = (common.prefix_of(source, trace=True, **inputs, **RUN_OPTIONS)[1], row["tokens"])
    ratios = [q["ratio"] for q in doc["queries"] if q.get("ratio")]
    doc["median_ratio"] = median(ratios)
    doc["max_ratio"] = max(ratios) if ratios else float("nan")
    doc["failed"] = [q["name"] for q in doc["queries"] if "error" in q]
    if args.subprocess:
        log("[run.py] fresh-process measurements (load, check, memory) ...")
        if free60 is None:
            src, inputs = [(s, i) for n, _, s, i in common.SUITE if n == "free60"][0]
            free60 = ("Write a long story about a dragon who learns to bake bread.\n\nOnce upon a time,", 60)
        try:
            doc["subprocess"] = subprocess_figures(args, threads, *free60)
        except Exception as e:
            doc["subprocess_error"] = f"{type(e).__name__}: {e}"[:2000]
            log(doc["subprocess_error"])
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print_report(doc)
    if args.profile:
        profile_suite(model, suite, reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
