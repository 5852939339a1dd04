"""Long fuzzing run of what `lmql-lite check` does: random text, random bytes and mutated examples; counts escapes.

    python bench/fuzz.py [--cases 10000] [--seed 0]

An escape is any exception other than an LmqlError (or an LmqlError without a usable position
or message); the script prints each one's input and traceback, then the counts.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmql_lite import checker, compiler, parser  # noqa: E402
from lmql_lite.errors import LmqlError  # noqa: E402

CHUNKS = ["[", "]", "{", "}", "(", ")", '"', "'", '"""', "\\", "\n", "    ", "\t", ":", "@", "where ", " and ",
          " or ", "not ", "STOPS_AT(", "TOKENS(", "len(", "INT(", "REGEX(", "distribution ", "from ", "return ",
          "await ", "yield ", "lambda: ", "[X: ", "[@f ", "{:user}", "{:", "[[", "]]", "{{", "}}", "sample(n=",
          "beam(", "argmax", "argmax(", "=", "<", ",", "#", "\x00", "\udcff", "é", "日本", "x" * 300, "(" * 150]


def mutate(rng: random.Random, source: str) -> str:
    for _ in range(rng.randint(1, 6)):
        i = rng.randint(0, len(source))
        kind = rng.choice(["delete", "duplicate", "insert", "cut", "swap"])
        if kind == "delete":
            source = source[:i] + source[i + rng.randint(1, 5):]
        elif kind == "duplicate":
            n = rng.randint(1, 30)
            source = source[:i] + source[i:i + n] * rng.randint(2, 4) + source[i + n:]
        elif kind == "cut":
            source = source[:i]
        elif kind == "swap" and len(source) > 2:
            j = rng.randint(0, len(source) - 1)
            chars = list(source)
            chars[min(i, len(chars) - 1)], chars[j] = chars[j], chars[min(i, len(chars) - 1)]
            source = "".join(chars)
        else:
            source = source[:i] + rng.choice(CHUNKS) + source[i:]
    return source


def case(rng: random.Random, examples: list[str]) -> str | bytes:
    kind = rng.random()
    if kind < 0.6:
        return mutate(rng, rng.choice(examples))
    if kind < 0.8:
        return "".join(rng.choice(CHUNKS + list("abcXYZ 01\n")) for _ in range(rng.randint(0, 80)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


def check(source: str | bytes) -> None:
    try:
        problems = checker.check(compiler.compile_query(parser.parse(source, "fuzz.lmq")))
    except LmqlError as e:
        problems = [e]
    for e in problems:
        if not e.message or "internal error" in e.message:
            raise AssertionError(f"unhelpful error: {e!s}")
        str(e)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    examples = [p.read_text() for p in sorted((ROOT / "examples").glob("*.lmq"))]
    failures = 0
    start = time.perf_counter()
    for n in range(args.cases):
        source = case(rng, examples)
        try:
            check(source)
        except Exception:  # an escape: exactly what this run hunts for
            failures += 1
            print(f"--- case {n}: {source!r}", file=sys.stderr)
            traceback.print_exc()
    seconds = time.perf_counter() - start
    print(f"{args.cases} cases, {failures} failures (escapes), {seconds:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
