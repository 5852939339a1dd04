"""`bench/run.py --engine llama.cpp`: the suite on the llama.cpp engine against raw llama-cpp-python and raw transformers.

For each query of common.SUITE, in one process and one run, repetitions paired and alternating:
- lmql_lite: `lmql_lite.run(query, **inputs)` on the default model on llama.cpp, the whole call;
- raw llama.cpp: the same GGUF, the prompt text before the query's first hole, greedy generation of
  exactly as many new tokens as lmql_lite's holes produced, two ways, the faster (by median) is the
  floor: `lowlevel` (one context made once, its memory cleared before each run, the prompt in one
  llama_decode, then llama_decode of one token + numpy argmax per token) and `generate`
  (`Llama.generate` with top_k=1, llama-cpp-python's own loop, on one `Llama` object made once and
  `reset()` before each run). Both start every repetition from an empty KV cache and evaluate the
  whole prompt, as lmql_lite does: `Llama.generate(reset=True)` on its own would keep the previous
  call's common prefix and skip the prompt from the second call on. Each query checks once, outside
  the timed runs, that `generate` hands `Llama.eval` all prompt tokens + n - 1 (`generate_fed_tokens`
  in the JSON), and fails otherwise. A `distribution` query scores the values instead: the prompt
  once, the values as copies of its sequence in one decode.
- raw transformers: `common.raw_manual` (a tight DynamicCache loop) on the converted weights.
Also: time to first token of a fresh process on both engines, and whether both engines give the
same values under argmax.
"""
from __future__ import annotations

import os
import sys

import numpy as np

import common
from common import median

LOWLEVEL_CELLS = 2048


class RawLlama:
    """What a careful llama-cpp-python user writes for greedy decoding: one context, reused."""

    def __init__(self, path: str, threads: int):
        import llama_cpp.llama_cpp as ll
        self.ll = ll
        params = ll.llama_model_default_params()
        self.model = ll.llama_model_load_from_file(path.encode(), params)
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.width = ll.llama_vocab_n_tokens(self.vocab)
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = LOWLEVEL_CELLS
        cp.n_ubatch = 512
        cp.n_seq_max = 8
        cp.kv_unified = True
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cp)
        self.memory = ll.llama_get_memory(self.ctx)
        self.batch = ll.llama_batch_init(LOWLEVEL_CELLS, 0, 8)
        self.high = None
        self.path, self.threads = path, threads

    def _fill(self, tokens, start: int, seq: int = 0, at: int = 0, all_logits: bool = False) -> int:
        b = self.batch
        for i, t in enumerate(tokens):
            j = at + i
            b.token[j] = t
            b.pos[j] = start + i
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = all_logits
        b.logits[at + len(tokens) - 1] = True
        return at + len(tokens)

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        if self.ll.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, -1), shape=(self.width,))

    def lowlevel(self, prompt: list[int], n: int) -> list[int]:
        """Greedy decoding of `n` new tokens: the prompt in one decode, then one decode + argmax per token."""
        self.ll.llama_memory_clear(self.memory, False)
        self._decode(self._fill(prompt, 0))
        new = []
        for i in range(n):
            token = int(self._last_logits().argmax())
            new.append(token)
            if i + 1 < n:
                self._decode(self._fill([token], len(prompt) + i))
        return new

    def _high(self):
        if self.high is None:
            from llama_cpp import Llama
            self.high = Llama(self.path, n_ctx=LOWLEVEL_CELLS, n_threads=self.threads, n_threads_batch=self.threads,
                              verbose=False)
        return self.high

    def generate(self, prompt: list[int], n: int) -> list[int]:
        """Greedy decoding of `n` new tokens with llama-cpp-python's `Llama.generate` (top_k=1), from an empty
        KV state: the whole prompt is evaluated on every call, as lmql_lite and `lowlevel` do.

        `generate(..., reset=True)` alone does not do that: while `Llama.n_tokens > 0` it keeps the longest
        common prefix of the previous call's tokens in the KV cache (llama_cpp/llama.py, "Check for kv cache
        prefix match"), so a repeated prompt was never evaluated again. `Llama.reset()` first sets n_tokens
        to 0, which skips that match; `Llama.eval` then removes every cell from position 0 on
        (`kv_cache_seq_rm(-1, 0, -1)`) before it decodes the prompt.
        """
        high = self._high()
        high.reset()
        new = []
        for token in high.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
            new.append(token)
            if len(new) == n:
                break
        return new

    def generate_fed(self, prompt: list[int], n: int) -> int:
        """Tokens `generate` hands to `Llama.eval` for one call (counted by wrapping eval; not timed): must be
        len(prompt) + n - 1, i.e. no prompt token skipped."""
        high = self._high()
        fed = []
        plain = high.eval
        high.eval = lambda tokens: (fed.append(len(tokens)), plain(tokens))[1]
        try:
            self.generate(prompt, n)
        finally:
            del high.eval
        return sum(fed)

    def score(self, prompt: list[int], candidates: list[list[int]]) -> list[float]:
        """Total log-probability of each candidate after the prompt: the prompt once, the candidates as
        copies of its sequence in one decode, fed all but their last token (no logits are needed after
        it); no second decode when every candidate is one token."""
        ll = self.ll
        ll.llama_memory_clear(self.memory, False)
        self._decode(self._fill(prompt, 0))
        first = self._last_logits().astype(np.float64)
        at, where = 0, []
        for k, c in enumerate(candidates, 1):
            where.append(at)
            if len(c) > 1:
                ll.llama_memory_seq_cp(self.memory, 0, k, -1, -1)
                at = self._fill(c[:-1], len(prompt), seq=k, at=at, all_logits=True)
        out = np.zeros((0, self.width))
        if at:
            self._decode(at)
            out = np.ctypeslib.as_array(ll.llama_get_logits(self.ctx), shape=(at, self.width)).astype(np.float64)
        totals = []
        for c, row in zip(candidates, where):
            steps = np.concatenate([first[None], out[row:row + len(c) - 1]])
            steps = steps - steps.max(axis=1, keepdims=True)
            logprobs = steps - np.log(np.exp(steps).sum(axis=1, keepdims=True))
            totals.append(float(logprobs[np.arange(len(c)), c].sum()))
        return totals


def measure_query(lm, raw: RawLlama, hf, name: str, what: str, source: str, inputs: dict, reps: int) -> dict:
    import lmql_lite
    row = {"name": name, "what": what}
    probe, prefix = common.prefix_of(source, trace=True, **inputs)
    tr = probe.trace
    n = tr.generated_tokens + tr.forced_tokens
    prompt = list(lm.bos_ids) + lm.encode(prefix, special=True)
    hf_prompt = list(hf.bos_ids) + hf.encode(prefix, special=True)
    row.update(tokens=n, generated=tr.generated_tokens, forced=tr.forced_tokens, forward_passes=tr.forward_passes,
               prompt_tokens=len(prompt), value=repr(probe.value))
    if probe.distribution is not None and n == 0:
        candidates = [lm.encode(v) for v in probe.distribution]
        hf_candidates = [hf.encode(v) for v in probe.distribution]
        raws = {"score": lambda: raw.score(prompt, candidates)}
        transformers_side = lambda: common.raw_score(hf, hf_prompt, hf_candidates)  # noqa: E731
    else:
        raws = {"lowlevel": lambda: raw.lowlevel(prompt, n), "generate": lambda: raw.generate(prompt, n)}
        transformers_side = lambda: common.raw_manual(hf, hf_prompt, n)  # noqa: E731

    def run_lmql():
        return lmql_lite.run(source, **inputs)

    sides = [("lmql", run_lmql), *raws.items(), ("transformers", transformers_side)]
    for _, fn in sides:  # warm-up
        fn()
    if "generate" in raws:  # the floor must evaluate the whole prompt on every repetition (see RawLlama.generate)
        fed = raw.generate_fed(prompt, n)
        if fed != len(prompt) + n - 1:
            raise RuntimeError(f"{name}: Llama.generate evaluated {fed} tokens, not {len(prompt) + n - 1} "
                               f"(prompt {len(prompt)} + {n} new - 1): it reused a cached prefix")
        row["generate_fed_tokens"] = fed
    times, _ = common.alternating(sides, reps)
    medians = {side: median(t) for side, t in times.items()}
    floor = min(raws, key=medians.get)
    ratios = sorted(a / b for a, b in zip(times["lmql"], times[floor]))
    ratios_hf = sorted(a / b for a, b in zip(times["lmql"], times["transformers"]))
    row.update(lmql_ms=medians["lmql"] * 1e3, raw_ms=medians[floor] * 1e3, raw_floor=floor,
               raw_lowlevel_ms=medians.get("lowlevel", float("nan")) * 1e3,
               raw_generate_ms=medians.get("generate", float("nan")) * 1e3,
               transformers_ms=medians["transformers"] * 1e3,
               ratio=median(ratios), ratio_range=[ratios[0], ratios[-1]],
               ratio_transformers=median(ratios_hf),
               lmql_ms_all=[t * 1e3 for t in times["lmql"]], raw_ms_all={k: [t * 1e3 for t in times[k]] for k in raws},
               transformers_ms_all=[t * 1e3 for t in times["transformers"]])
    return row


def same_values(suite) -> list[dict]:
    """Each suite query's value under argmax on both engines (the default model)."""
    import lmql_lite
    rows = []
    on = {e: lmql_lite.model(None, engine=e) for e in ("llama.cpp", "transformers")}
    for name, _, source, inputs in suite:
        values = {e: lmql_lite.run(source, model=m, **inputs).value for e, m in on.items()}
        rows.append({"name": name, "llama.cpp": repr(values["llama.cpp"]), "transformers": repr(values["transformers"]),
                     "same": values["llama.cpp"] == values["transformers"]})
    return rows


FIRST_TOKEN = """
import lmql_lite
seen = []
lmql_lite.run("examples/capital.lmq", country="France",
              on_text=lambda row, text, kind: seen or kind != "value" or seen.append(time.perf_counter() - T0))
print(json.dumps({"first_token_s": seen[0], "total_s": time.perf_counter() - T0}))
"""


def first_token(reps: int) -> dict:
    """Seconds from a fresh process's start to the first token of examples/capital.lmq, per engine (warm caches)."""
    out = {}
    for rep in range(reps):
        for engine in (("llama.cpp", "transformers") if rep % 2 == 0 else ("transformers", "llama.cpp")):
            wall, child = common.run_child(common.child_code(FIRST_TOKEN), {"LMQL_LITE_ENGINE": engine})
            out.setdefault(engine, []).append({"first_token_s": child["first_token_s"], "process_s": wall,
                                               "python_start_s": wall - child["total_s"]})
    return {e: {"first_token_s": median([r["first_token_s"] for r in rs]),
                "process_s": median([r["process_s"] for r in rs]), "all": rs} for e, rs in out.items()}


def main(args) -> dict:
    import lmql_lite
    from lmql_lite.models.default import default_gguf
    threads = args.threads or len(os.sched_getaffinity(0))
    os.environ["LMQL_LITE_ENGINE"] = "llama.cpp"
    os.environ["LMQL_LITE_THREADS"] = str(threads)
    common.set_threads(threads)
    reps = 1 if args.quick else args.reps
    suite = [q for q in common.SUITE if not args.only or q[0] in args.only.split(",")]
    lm = lmql_lite.model().load()
    hf = lmql_lite.model(None, engine="transformers").load()
    raw = RawLlama(str(default_gguf()), threads)
    doc = {"engine": "llama.cpp", "machine": common.machine_note(), "threads": threads, "reps": reps, "queries": []}
    for name, what, source, inputs in suite:
        print(f"[run.py llama.cpp] {name} ...", file=sys.stderr, flush=True)
        doc["queries"].append(measure_query(lm, raw, hf, name, what, source, inputs, reps))
    ratios = [q["ratio"] for q in doc["queries"]]
    doc["median_ratio"] = median(ratios)
    doc["max_ratio"] = max(ratios)
    doc["median_ratio_transformers"] = median([q["ratio_transformers"] for q in doc["queries"]])
    doc["same_values"] = same_values(suite)
    if args.subprocess:
        doc["first_token"] = first_token(1 if args.quick else 3)
    return doc


def print_report(doc: dict) -> None:
    rows = [(q["name"], q["tokens"], q["forward_passes"], q["lmql_ms"], q["raw_ms"], q["raw_floor"],
             q["transformers_ms"], q["ratio"], "{:.2f}-{:.2f}".format(*q["ratio_range"]), q["ratio_transformers"])
            for q in doc["queries"]]
    print(common.table(("query", "tokens", "passes", "lmql ms", "raw llama ms", "floor", "raw hf ms", "ratio",
                        "range", "vs hf"), rows,
                       ("{}", "{}", "{}", "{:.1f}", "{:.1f}", "{}", "{:.1f}", "{:.2f}", "{}", "{:.2f}")))
    print(f"median_ratio {doc['median_ratio']:.2f}  max_ratio {doc['max_ratio']:.2f}  (targets <= 1.05, <= 1.2)  "
          f"median_ratio_transformers {doc['median_ratio_transformers']:.2f} (target <= 0.35)")
    differ = [r for r in doc["same_values"] if not r["same"]]
    print(f"same values under argmax on both engines: {len(doc['same_values']) - len(differ)} of "
          f"{len(doc['same_values'])}" + "".join(f"\n  {r['name']}: llama.cpp {r['llama.cpp']} | transformers "
                                                 f"{r['transformers']}" for r in differ))
    if "first_token" in doc:
        for engine, f in doc["first_token"].items():
            print(f"first token of a fresh process ({engine}): {f['first_token_s']:.2f} s after start, "
                  f"process {f['process_s']:.2f} s")
    m = doc["machine"]
    print(f"threads {doc['threads']}, cpus {m['cpus']}, load average {m['loadavg_1_5_15']}, reps {doc['reps']}")
