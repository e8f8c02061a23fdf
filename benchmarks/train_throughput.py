"""Training throughput of the engine against PyTorch, side by side in one run.

    python benchmarks/train_throughput.py [--quick] [--configs 128x1,256x2,512x2] [--json FILE]

Both train Embedding(V, 64) -> LSTM(H, L) -> Linear(H, V) with Adam (no weight decay), gradient
clipping at 5 and float32 on tiny Shakespeare, with the state carried between windows, on the
same thread count (the engine's Trainer with its default layout: one shard of the streams per
core with single-threaded BLAS, the shards after the first in worker processes, see
``engine/shard_processes.py``; PyTorch: ``torch.set_num_threads(cores)``). Steps alternate engine / PyTorch after warm-up, and
the ratio is the median over pairs of (engine chars/s) / (PyTorch chars/s). Without PyTorch (the
optional `interop` extra) only the engine is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result import interleaved, make_result, median, median_ratio  # noqa: E402
from torch_reference import TorchTrainer, torch_or_none  # noqa: E402

from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab  # noqa: E402
from charlstm.engine.model import available_cores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "samples" / "tinyshakespeare.txt"
EMBEDDING = 64
# name: (hidden, layers, batch, window), the configurations issue 7 compares.
CONFIGS = {"128x1": (128, 1, 32, 64), "256x2": (256, 2, 32, 64), "512x2": (512, 2, 64, 128)}
TARGET = ">= 1.0"
SPIN_SETTLE = 0.3  # seconds between the two sides' measurements (see measure)


def engine_trainer(text: str, hidden: int, layers: int, batch: int, window: int) -> Trainer:
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=EMBEDDING,
                                 hidden_size=hidden, num_layers=layers), seed=0)
    config = TrainConfig(seq_len=window, batch_size=batch, steps=10**6, schedule="constant",
                         clip=5.0, weight_decay=0.0, val_fraction=0.0, eval_every=10**9)
    return Trainer(model, vocab, text, config)


def timed(step, chars: int, repeat: int):
    """A callable running ``step`` ``repeat`` times and returning chars/s over them."""
    def run() -> float:
        start = time.perf_counter()
        for _ in range(repeat):
            step()
        return chars * repeat / (time.perf_counter() - start)
    return run


def measure(name: str, text: str, pairs: int, warmup: int, threads: int) -> dict[str, Any]:
    hidden, layers, batch, window = CONFIGS[name]
    chars = batch * window
    repeat = max(1, 4096 // chars)  # about the same wall time per pair for every config
    ours = engine_trainer(text, hidden, layers, batch, window)
    torch = torch_or_none()
    theirs = None
    if torch is not None:
        torch.set_num_threads(threads)
        vocab = Vocab.from_text(text)
        theirs = TorchTrainer(torch, vocab.encode(text), vocab.size, EMBEDDING, hidden, layers,
                              batch, window)
    for _ in range(warmup):
        ours.train_step()
        if theirs is not None:
            theirs.train_step()
    for _ in range(ours.layouts.settling_steps):  # the Trainer times its layouts, then settles
        ours.train_step()
    # A pause of SPIN_SETTLE between the two sides: a library that has just run multithreaded
    # (PyTorch's OpenMP, or the engine's threaded-BLAS layout) leaves its threads spinning for
    # a while, and a step started then runs on a core they hold. With 5 ms, PyTorch's 128x1
    # figure swung between 34k and 160k chars/s from run to run; with 0.3 s it stayed at
    # 130-150k (measured 2026-11-24, quiet machine).
    mine, ref = interleaved(timed(ours.train_step, chars, repeat),
                            None if theirs is None else timed(theirs.train_step, chars, repeat),
                            pairs, pause=SPIN_SETTLE)
    details = {"hidden": hidden, "layers": layers, "batch": batch, "window": window,
               "pairs": pairs, "steps_per_measure": repeat, "engine_workers": ours.workers,
               "engine_layouts": ours.layouts.layouts,
               "engine_layout_after": [ours.workers, ours.blas_threads],
               "torch_threads": threads if theirs is not None else None,
               "engine_chars_per_second": mine, "torch_chars_per_second": ref}
    return make_result(f"training throughput H={hidden} L={layers} B={batch} T={window}",
                       median(mine), median(ref) if ref else None, "chars/s", TARGET, details,
                       ratio=median_ratio(mine, ref))


def run(quick: bool, configs: list[str] | None = None) -> list[dict[str, Any]]:
    """One result per configuration (see the module docstring)."""
    text = CORPUS.read_text(encoding="utf-8")
    # 5 pairs even when quick: with 3, two quick runs of the same code on the AMD machines gave
    # 256x2 ratios of 1.18 and 0.85 (PyTorch's own figure moves by a quarter between pairs).
    pairs, warmup = (5, 1) if quick else (7, 2)
    return [measure(name, text, pairs, warmup, available_cores())
            for name in (configs or list(CONFIGS))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="HxL names to run")
    parser.add_argument("--quick", action="store_true", help="fewer pairs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.quick, args.configs.split(","))
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    for r in results:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['name']:<44} engine {r['ours']:>9,.0f}  torch {r['reference'] or 0:>9,.0f}"
              f"  ratio {ratio}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
