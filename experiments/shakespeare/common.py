"""Shared by the experiment scripts: the corpus, the standard split check, run records."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[1] / "samples" / "tinyshakespeare.txt"
RUNS = HERE / "runs"


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The recipe knobs both trainers share (names as in `charlstm train`)."""
    p.add_argument("--name", required=True, help="run name: runs/<name>.json")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--seconds", type=float, required=True, help="wall-clock budget")


def load_text() -> str:
    return CORPUS.read_text(encoding="utf-8")


def split(text: str, val_fraction: float = 0.1) -> int:
    """Characters in the training slice; nanoGPT's int(n*0.9) (asserted, not assumed)."""
    n_train = int(len(text) * (1.0 - val_fraction))
    assert n_train == int(len(text) * 0.9) == 1_003_854, n_train
    return n_train


def save_run(name: str, record: dict) -> Path:
    """Write runs/<name>.json with the host's load averages and the cores this process had."""
    record = dict(record, loadavg_end=os.getloadavg(), cores=sorted(os.sched_getaffinity(0)),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    RUNS.mkdir(exist_ok=True)
    path = RUNS / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
