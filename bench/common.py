"""Shared helpers for the benchmarks: environment, raw transformers baselines, timing, tables.

Import this first: it puts the repository on sys.path, sets HF_HUB_OFFLINE=1 and keeps
transformers quiet. Nothing here imports torch at module level except `raw_*` callers do.
"""
from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# These benchmarks measure the transformers engine unless told otherwise (run.py --engine llama.cpp).
os.environ.setdefault("LMQL_LITE_ENGINE", "transformers")


def log(*args) -> None:
    """A progress line on stderr (stdout is the report)."""
    print(*args, file=sys.stderr, flush=True)


def only(suite: Sequence[tuple], names: str | None) -> list[tuple]:
    """The entries of `suite` whose name (first field) is among `names` (comma-separated); all when None (--only)."""
    return [q for q in suite if not names or q[0] in names.split(",")]


# ---- timing -------------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, fn())."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def alternating(sides: Sequence[tuple[str, Callable[[], Any]]], reps: int) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """Per side, the seconds and the result of each of `reps` repetitions.

    Each repetition runs every side back to back, in reversed order every other time: a slow
    stretch of the machine (other processes, frequency changes) then hits every side alike.
    """
    seconds: dict[str, list[float]] = {side: [] for side, _ in sides}
    results: dict[str, list[Any]] = {side: [] for side, _ in sides}
    for rep in range(reps):
        for side, fn in (sides if rep % 2 == 0 else sides[::-1]):
            dt, out = timed(fn)
            seconds[side].append(dt)
            results[side].append(out)
    return seconds, results


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """The median over repetitions of a's time ÷ b's in the same repetition (pairing cancels the drifts that move both)."""
    return median([x / y for x, y in zip(a, b)])


def set_threads(threads: int | None) -> int:
    """Use `threads` torch threads (None: torch's default) for everything in this process; returns the count."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def prefix_of(source: str, **options) -> tuple[Any, str]:
    """Run `source` once with `options`; → (the result, the prompt text before the first hole's value)."""
    import lmql_lite
    events = []
    result = lmql_lite.run(source, on_text=lambda row, text, kind: events.append((kind, text)), **options)
    prefix = []
    for kind, text in events:
        if kind in ("value", "end"):
            break
        prefix.append(text)
    return result, "".join(prefix)


# ---- the model ----------------------------------------------------------------------------

def default_model():
    import lmql_lite
    return lmql_lite.model()


def default_folder() -> Path:
    """The cached transformers folder of the default model (safetensors, config, tokenizer)."""
    from lmql_lite.models.transformers import _default_folder
    return _default_folder()


def cache_argument(module) -> str:
    # transformers 5.x may name the cache argument `cache`; older ones `past_key_values`.
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


# ---- raw transformers baselines -----------------------------------------------------------

def raw_manual(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decoding of `n` new tokens with a tight loop: one forward pass per token, a DynamicCache, argmax.

    `prompt_ids` are token ids (BOS included); returns the n new ids. n forward passes in all.
    """
    import torch
    from transformers import DynamicCache
    module = model.module
    if n <= 0:
        return []
    with torch.inference_mode():
        cache = DynamicCache(config=module.config)
        kw = {cache_argument(module): cache, "use_cache": True, "logits_to_keep": 1}
        out = module(input_ids=torch.tensor([prompt_ids], device=module.device), **kw)
        new = []
        for i in range(n):
            tok = out.logits[:, -1, :].argmax(-1, keepdim=True)
            new.append(tok)
            if i + 1 < n:
                out = module(input_ids=tok, **kw)
        return torch.cat(new, dim=1)[0].tolist()


def raw_generate(model, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy decoding of exactly `n` new tokens with `module.generate`."""
    import torch
    if n <= 0:
        return []
    module = model.module
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids], device=module.device)
        out = module.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, num_beams=1, top_p=None, top_k=None,
                              temperature=None, pad_token_id=model.tokenizer.eos_token_id or 0)
    return out[0, len(prompt_ids):].tolist()


def raw_score(model, prompt_ids: list[int], candidates: list[list[int]]) -> list[float]:
    """Total log-probability of each candidate after the prompt: the prompt once, then the candidates
    right-padded in one batched pass over a copy of the prompt's cache (what a careful transformers user writes).
    A candidate's last token needs no logits after it, so the pass is fed all but that one, and is
    skipped when every candidate is one token."""
    import torch
    from transformers import DynamicCache
    module = model.module
    with torch.inference_mode():
        cache = DynamicCache(config=module.config)
        kw = {cache_argument(module): cache, "use_cache": True}
        first = module(input_ids=torch.tensor([prompt_ids], device=module.device), logits_to_keep=1, **kw).logits[0, -1].log_softmax(-1)
        k, width = len(candidates), max(map(len, candidates)) - 1
        if width:
            cache.batch_repeat_interleave(k)
            ids = torch.zeros((k, width), dtype=torch.long)
            for i, c in enumerate(candidates):
                ids[i, :len(c) - 1] = torch.tensor(c[:-1])
            ids = ids.to(module.device)
            # Right padding: real tokens never attend to the pads after them (causal), so no mask is needed.
            lp = module(input_ids=ids, **kw).logits.log_softmax(-1)
        totals = []
        for i, c in enumerate(candidates):
            total = float(first[c[0]])
            for j in range(1, len(c)):
                total += float(lp[i, j - 1, c[j]])
            totals.append(total)
        return totals


def raw_batch_generate(model, prompts: list[str], n: int) -> Any:
    """Left-padded batched greedy `generate` of exactly n new tokens per prompt."""
    import torch
    tok = model.tokenizer
    module = model.module
    rows = [list(model.bos_ids) + model.encode(p) for p in prompts]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(module.device), mask.to(module.device)
    with torch.inference_mode():
        return module.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, num_beams=1, top_p=None, top_k=None, temperature=None,
                               pad_token_id=pad)


# ---- subprocesses -------------------------------------------------------------------------

def run_child(code: str, env: dict[str, str] | None = None, timeout: float = 600) -> tuple[float, dict]:
    """Run `code` in a fresh Python; it prints one JSON line last. → (wall seconds of the process, that JSON)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    return wall, (json.loads(lines[-1]) if lines else {})


CHILD_PRELUDE = """
import time, os, sys, json, resource
T0 = time.perf_counter()
sys.path.insert(0, {root!r})
def peak_mb():
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def rss_mb():
    # current resident memory, from /proc
    with open("/proc/self/status") as f:
        return [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0] / 1024
"""


def child_code(body: str) -> str:
    return CHILD_PRELUDE.format(root=str(ROOT)) + body


# ---- tables -------------------------------------------------------------------------------

def table(header: Sequence[str], rows: Sequence[Sequence[Any]], formats: Sequence[str] | None = None) -> str:
    """A plain text table; the first column is left-aligned, the rest right-aligned."""
    formats = formats or ["{}"] * len(header)
    cells = [[f.format(v) if v is not None else "-" for f, v in zip(formats, row)] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def machine_note() -> dict:
    """What the numbers were measured on."""
    import platform
    import torch
    import transformers
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_1_5_15": [round(x, 2) for x in load] if load else None,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "device": os.environ.get("LMQL_LITE_DEVICE") or "auto", "dtype": os.environ.get("LMQL_LITE_DTYPE") or "auto"}


# ---- the benchmark suite --------------------------------------------------------------------

# Each entry: (name, what it exercises, query source, inputs). Queries a user would write.
SUITE: list[tuple[str, str, str, dict]] = [
    ("date", "REGEX date with literal dashes", r'''argmax
    "Text: The invoice from March 3rd, 2021 lists 14 items.\n"
    "The date in YYYY-MM-DD form: [DATE]" where REGEX(DATE, r"\d{4}-\d{2}-\d{2}")
    return DATE
''', {}),
    ("choice3", "3-way choice", r'''argmax
    "Review: {review}\n"
    "Is the sentiment of this review positive, neutral or negative?\n"
    "Sentiment:[LABEL]" where LABEL in [" positive", " neutral", " negative"]
    return LABEL.strip()
''', {"review": "The soup was cold and the waiter ignored us for an hour."}),
    ("int", "INT with a token limit", r'''argmax
    "Text: The invoice from March 3rd, 2021 lists 14 items.\n"
    "The number of items: [COUNT]" where INT(COUNT) and len(TOKENS(COUNT)) < 5
    return COUNT
''', {}),
    ("stop_phrase", "free answer that STOPS_AT a newline", r'''argmax
    "Q: What is the capital of Germany?\nA: Berlin, a large city on the river Spree.\n"
    "Q: What is the capital of {country}?\n"
    "A:[CITY]" where STOPS_AT(CITY, "\n") and len(TOKENS(CITY)) < 30
    return CITY.strip()
''', {"country": "France"}),
    ("list3", "loop of 3 list items (STOPS_BEFORE)", r'''argmax
    "A list of three fruits:\n"
    fruits = []
    for i in range(3):
        "{i + 1}. [FRUIT]\n" where STOPS_BEFORE(FRUIT, "\n") and len(TOKENS(FRUIT)) < 8
        fruits.append(FRUIT.strip())
    return fruits
''', {}),
    ("distribution", "distribution over 4 labels (scored, not generated)", r'''argmax
    "Headline: {headline}\n"
    "Topic:[TOPIC]"
distribution
    TOPIC in [" sports", " politics", " science", " business"]
''', {"headline": "Local team wins the championship after a dramatic final"}),
    ("forced_eq", "== forced value (fast-forward)", r'''argmax
    "Q: What is the answer to life, the universe and everything?\n"
    "A:[ANSWER]" where ANSWER == " The answer is forty-two, as the supercomputer Deep Thought computed."
    return ANSWER
''', {}),
    ("free60", "60-token free answer", r'''argmax
    "Write a long story about a dragon who learns to bake bread.\n\n"
    "Once upon a time,[STORY]" where len(TOKENS(STORY)) == 60
    return STORY
''', {}),
    ("record", "JSON-like record, 3 holes", r'''argmax
    "A character for a fantasy story, as JSON:\n"
    "{{\n"
    '  "name": "[NAME]",\n' where STOPS_BEFORE(NAME, '"') and len(TOKENS(NAME)) < 8
    '  "age": [AGE],\n' where INT(AGE) and len(TOKENS(AGE)) < 4
    '  "class": "[CLASS]"\n' where CLASS in ["warrior", "wizard", "thief"]
    "}}"
    return {"name": NAME, "age": AGE, "class": CLASS}
''', {}),
]
