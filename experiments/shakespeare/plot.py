"""Validation loss against wall-clock time for runs/<name>.json files, as a PNG and a table.

    python plot.py runs/final-engine.json runs/final-torch.json --out curves.png

matplotlib is only needed here (pip install matplotlib); it is not a charlstm dependency.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def value_at(curve: list, seconds: float) -> float | None:
    """Best validation loss reached by ``seconds`` (None before the first validation)."""
    seen = [v for t, _, v, *_ in curve if t <= seconds]
    return min(seen) if seen else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labels", nargs="*", help="legend labels, one per run (default: run names)")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("curves.png"))
    p.add_argument("--marks", type=float, nargs="*", default=[5, 10, 20, 30, 40, 50, 60],
                   help="minutes at which the table reads the curves")
    a = p.parse_args()
    runs = [json.loads(path.read_text()) for path in a.runs]
    labels = a.labels or [r["args"]["name"] for r in runs]
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, label in zip(runs, labels):
        t = [row[0] / 60 for row in run["curve"]]
        v = [row[2] for row in run["curve"]]
        ax.plot(t, v, marker="o", markersize=3, label=f"{label} (best {run['best_val']:.4f})")
    ax.axhline(1.4697, color="grey", linestyle="--", linewidth=1, label="nanoGPT 6-layer transformer, 1.4697")
    ax.set_xlabel("wall-clock minutes (validation included)")
    ax.set_ylabel("validation loss, nats/char (last 10% of tiny Shakespeare)")
    ax.set_ylim(1.4, 2.0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    print("| minutes | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(runs))
    for m in a.marks:
        cells = [value_at(r["curve"], m * 60) for r in runs]
        if all(c is None for c in cells):
            continue
        print(f"| {m:g} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells) + " |")
    print("| steps, epochs | " + " | ".join(f"{r['steps']:,}, {r['epochs']:.1f}" for r in runs) + " |")


if __name__ == "__main__":
    main()
