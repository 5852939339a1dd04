"""Gold versus shuffled demonstration labels (after Min et al., 2022): does the model learn the task or the labels?

Runs examples/icl.lmq over examples/data/sentiment.jsonl: the first four rows are the
demonstrations, the rest the test set. With gold labels and with the same demonstrations
under a shuffled labelling, it reports the accuracy and the distribution of predicted labels,
as a PNG plot when matplotlib is installed and as a text table always.

    python examples/icl_labels.py [--plot icl_labels.png]
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

import lmql_lite

HERE = Path(__file__).parent
LABELS = ("positive", "negative")


def load(path: Path = HERE / "data" / "sentiment.jsonl") -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shuffled(labels: list[str], seed: int = 0) -> list[str]:
    """The same labels in another order (a different labelling of the same demonstrations)."""
    rng = random.Random(seed)
    out = list(labels)
    while out == labels:
        rng.shuffle(out)
    return out


def evaluate(model=None, rows: list[dict] | None = None, n_demos: int = 4) -> dict[str, dict]:
    """Per condition: accuracy, predicted-label counts and the mean probability of the gold label."""
    rows = rows or load()
    demos, test = rows[:n_demos], rows[n_demos:]
    gold = [d["label"] for d in demos]
    conditions = {"gold": gold, "shuffled": shuffled(gold)}
    report = {}
    for name, labels in conditions.items():
        pairs = [(d["text"], label) for d, label in zip(demos, labels)]
        inputs = [{"demos": pairs, "review": row["text"]} for row in test]
        results = dict(lmql_lite.run_batch(str(HERE / "icl.lmq"), inputs, model=model))
        predicted = [results[i].variables["LABEL"].strip() for i in range(len(test))]
        p_gold = [results[i].distribution[" " + row["label"]] for i, row in enumerate(test)]
        report[name] = {
            "demo labels": labels,
            "accuracy": sum(p == row["label"] for p, row in zip(predicted, test)) / len(test),
            "predicted": {label: Counter(predicted)[label] for label in LABELS},
            "p(gold)": sum(p_gold) / len(test),
        }
    return report


def table(report: dict[str, dict]) -> str:
    lines = [f"{'labels':<10} {'accuracy':>8} {'p(gold)':>8}  " + "  ".join(f"{l:>8}" for l in LABELS)]
    for name, r in report.items():
        counts = "  ".join(f"{r['predicted'][l]:>8}" for l in LABELS)
        lines.append(f"{name:<10} {r['accuracy']:>8.0%} {r['p(gold)']:>8.2f}  {counts}")
    return "\n".join(lines)


def plot(report: dict[str, dict], path: str) -> bool:
    """Accuracy and predicted labels per condition as a PNG; False when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    names = list(report)
    left.bar(names, [report[n]["accuracy"] for n in names], color=["tab:green", "tab:orange"])
    left.set_ylim(0, 1)
    left.set_title("accuracy")
    for k, label in enumerate(LABELS):
        right.bar([i + 0.4 * k for i in range(len(names))], [report[n]["predicted"][label] for n in names],
                  width=0.4, label=label)
    right.set_xticks([i + 0.2 for i in range(len(names))], names)
    right.set_title("predicted labels")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default="icl_labels.png", help="where to write the PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    report = evaluate()
    print(table(report))
    if plot(report, args.plot):
        print(f"plot: {args.plot}")
    else:
        print("(install matplotlib for a plot)")


if __name__ == "__main__":
    main()
