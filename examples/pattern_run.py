"""A language model as a general pattern machine (after Mirchandani et al., 2023): number sequences and an ASCII grid task.

Each task is shown in a few-shot format; REGEX keeps the answer in that format, so every answer
can be scored exactly against the rule that made the examples.

    python examples/pattern_run.py
"""
from __future__ import annotations

from pathlib import Path

import lmql_lite

HERE = Path(__file__).parent

SEQUENCES = [[2, 4, 6, 8, 10], [5, 10, 15, 20, 25], [1, 2, 3, 4, 5], [10, 20, 30, 40, 50], [7, 7, 7, 7, 7]]

# Grids of "." and "#": the rule mirrors each row left to right.
GRIDS = [["#..", ".#.", "..."], ["##.", "...", "#.."], [".#.", "#..", "##."], ["#..", "#..", ".#."]]
SHOTS = 3
GRID = r"[.#]{3}\n[.#]{3}\n[.#]{3}"


def mirrored(grid: list[str]) -> list[str]:
    return [row[::-1] for row in grid]


def grid_prompt(grids: list[list[str]], test: list[str]) -> str:
    shots = "".join("Input:\n" + "\n".join(g) + "\nOutput:\n" + "\n".join(mirrored(g)) + "\n\n" for g in grids)
    return shots + "Input:\n" + "\n".join(test) + "\nOutput:\n"


def run(model=None, sequences=SEQUENCES, grids=range(len(GRIDS))) -> list[dict]:
    """One row per task: its kind, what was asked, the answer, the expected answer and whether they match.

    `grids`: which grids of GRIDS to ask about (the others are the examples shown).
    """
    rows = []
    for seq in sequences:
        r = lmql_lite.run(str(HERE / "pattern_machine.lmq"), model=model, sequence=seq[:4])
        step = seq[1] - seq[0]
        expected = [seq[3] + step * k for k in range(1, 5)]
        rows.append({"kind": "sequence", "task": seq[:4], "answer": r.value, "expected": expected,
                     "right": r.value == expected})
    query = lmql_lite.F("{prompt}[OUT]", f"REGEX(OUT, r'{GRID}')", model=model)
    for k in grids:
        test, shots = GRIDS[k], GRIDS[:k] + GRIDS[k + 1:]
        answer = query(prompt=grid_prompt(shots[:SHOTS], test)).split("\n")
        rows.append({"kind": "grid", "task": test, "answer": answer, "expected": mirrored(test),
                     "right": answer == mirrored(test)})
    return rows


def main() -> None:
    rows = run()
    for row in rows:
        mark = "ok " if row["right"] else "no "
        print(f"{mark} {row['kind']:<8} {row['task']} -> {row['answer']} (expected {row['expected']})")
    for kind in ("sequence", "grid"):
        mine = [r for r in rows if r["kind"] == kind]
        print(f"{kind}: {sum(r['right'] for r in mine)}/{len(mine)} right")


if __name__ == "__main__":
    main()
