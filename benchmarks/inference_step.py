"""One inference step of the engine against PyTorch: embedding -> LSTM x L -> Linear -> softmax,
the state carried from step to step, H=256 L=2 (embedding 64, 65 characters), float32.

    python benchmarks/inference_step.py [--quick] [--json FILE]

Ours is ``CharLSTM.step(ids (B,), state)`` as the server calls it: inside
``blas.single_threaded()`` (a multithreaded OpenBLAS GEMM at these sizes was up to 100x slower
on the shared machine). PyTorch runs the same modules under ``torch.inference_mode()`` with
``torch.set_num_threads(cores)``. Blocks of steps alternate between the two; the figure is
microseconds per step and the ratio is the median over pairs of ours / PyTorch (lower is
better). Target at batch 1: at most 0.5x PyTorch's time (issue 7); batch 3 (a few streams
stepping together, where the engine may multiply row by row: see ``lstm.SMALL_BATCHES``) and
batch 64 (the serving helper's batched step) are reported against PyTorch without a target.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result import interleaved, make_result, median, median_ratio  # noqa: E402
from torch_reference import build_net, torch_or_none  # noqa: E402

from charlstm.engine import CharLSTM, ModelConfig  # noqa: E402
from charlstm.engine.blas import single_threaded  # noqa: E402
from charlstm.engine.model import available_cores  # noqa: E402

V, E, H, L = 65, 64, 256, 2
TARGETS = {1: "<= 0.5", 3: "report", 64: "report"}


def ours_block(model: CharLSTM, batch: int, steps: int):
    """A callable timing ``steps`` carried steps; returns microseconds per step."""
    ids = np.arange(batch) % V
    state = model.zero_state(batch)

    def run() -> float:
        nonlocal state
        with single_threaded():
            start = time.perf_counter()
            for _ in range(steps):
                probs, state = model.step(ids, state)
            return (time.perf_counter() - start) / steps * 1e6
    return run


def torch_block(torch: Any, net: Any, batch: int, steps: int):
    ids = (torch.arange(batch) % V)[None, :]  # (T=1, B)
    state = (torch.zeros(L, batch, H), torch.zeros(L, batch, H))

    def run() -> float:
        nonlocal state
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(steps):
                logits, state = net(ids, state)
                probs = torch.softmax(logits[0].double(), dim=-1)
            return (time.perf_counter() - start) / steps * 1e6
    return run


def run(quick: bool) -> list[dict[str, Any]]:
    """One result per batch size (1, 3 and 64)."""
    model = CharLSTM(ModelConfig(vocab_size=V, embedding_size=E, hidden_size=H, num_layers=L))
    torch = torch_or_none()
    net = None
    if torch is not None:
        torch.set_num_threads(available_cores())
        net = build_net(torch, V, E, H, L)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
        net.eval()
    pairs = 5 if quick else 15
    results = []
    for batch in TARGETS:
        steps = 200 if batch == 1 else 100 if batch == 3 else 20
        mine_run = ours_block(model, batch, steps)
        ref_run = None if net is None else torch_block(torch, net, batch, steps)
        mine_run()  # warm-up
        if ref_run is not None:
            ref_run()
        mine, ref = interleaved(mine_run, ref_run, pairs)
        details = {"hidden": H, "layers": L, "batch": batch, "steps_per_measure": steps,
                   "pairs": pairs, "ours_blas_threads": 1, "ours_us": mine, "torch_us": ref,
                   "torch_threads": available_cores() if net is not None else None}
        results.append(make_result(f"inference step H={H} L={L} batch {batch}", median(mine),
                                   median(ref) if ref else None, "us/step", TARGETS[batch],
                                   details, ratio=median_ratio(mine, ref)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.quick)
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    for r in results:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['name']:<36} ours {r['ours']:>8,.1f} us  torch {r['reference'] or 0:>8,.1f} us"
              f"  ratio {ratio}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
