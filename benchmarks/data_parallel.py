"""Data-parallel training: step time and per-step Allreduce time, one process vs N MPI ranks.

    python benchmarks/data_parallel.py            # H=256 L=2 E=64 B=32 T=64, float32
    python benchmarks/data_parallel.py --quick    # fewer steps and repeats

Each configuration trains the same model on tiny Shakespeare (the global batch is always
B=32 streams, so every configuration computes the same steps) in a fresh process:

- ``1 proc x 1 thread`` and ``1 proc x 2 threads``: the default single-process Trainer;
- ``N ranks x 1 thread``: ``mpirun -np N``, each rank with B/N streams.

The configurations run interleaved, ``--repeats`` times, with ``OPENBLAS_CORETYPE`` as given
and unset; the table shows medians. Per step it reports the wall time, the gradient Allreduce
inside the step (which includes waiting for the slowest rank) and, measured separately after
training, an Allreduce of the same buffer alone after a barrier (the transfer itself).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "samples" / "tinyshakespeare.txt"


def child(args: argparse.Namespace) -> None:
    """One measurement (run as a plain process or as every rank of mpirun)."""
    from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab
    from charlstm.engine.distributed import from_environment

    comm = from_environment()
    text = CORPUS.read_text(encoding="utf-8")
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=64, hidden_size=args.hidden,
                                 num_layers=args.layers), seed=0)
    config = TrainConfig(seq_len=args.seq_len, batch_size=args.batch, steps=args.warmup + args.steps,
                         eval_every=10**9, val_fraction=0.0001)
    trainer = Trainer(model, vocab, text, config, workers=args.workers, comm=comm)
    steps, reduces = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        steps.append(time.perf_counter() - t0)
        reduces.append(trainer.last_allreduce_seconds)
    alone = []
    if comm.size > 1:  # the same buffer, every rank ready: the transfer alone
        from mpi4py import MPI

        grad, loss = np.ones(model.params.flat.size, model.dtype), np.ones(1, model.dtype)
        for _ in range(args.steps):
            MPI.COMM_WORLD.Barrier()
            t0 = time.perf_counter()
            comm.allreduce_mean([grad, loss])  # as the Trainer calls it
            alone.append(time.perf_counter() - t0)
    if comm.rank == 0:
        print(json.dumps({
            "step": statistics.median(steps[args.warmup :]),
            "allreduce": statistics.median(reduces[args.warmup :]),
            "alone": statistics.median(alone) if alone else 0.0,
            "parameters": int(model.params.flat.size),
        }), flush=True)


def measure(args: argparse.Namespace, ranks: int, workers: int, coretype: str | None) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    cmd = [sys.executable, __file__, "--child", "--workers", str(workers), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--hidden", str(args.hidden), "--layers", str(args.layers),
           "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    if ranks > 1:
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise SystemExit("mpirun not found: install OpenMPI (apt-get install openmpi-bin libopenmpi-dev)")
        prefix = [mpirun, "-np", str(ranks), "--oversubscribe"]
        if os.geteuid() == 0:
            prefix.append("--allow-run-as-root")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        cmd = prefix + cmd
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per configuration")
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks of the data-parallel runs")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="15 steps, 2 repeats")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.steps, args.repeats = 15, 2
    given = os.environ.get("OPENBLAS_CORETYPE")
    configs = [(1, 1), (1, 2), (args.ranks, 1)]  # (ranks, threads per rank)
    coretypes = [given, None] if given else [None]
    results: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):
        for coretype in coretypes:
            for ranks, workers in configs:
                results.setdefault((coretype, ranks, workers), []).append(measure(args, ranks, workers, coretype))
    chars = args.batch * args.seq_len
    print(f"H={args.hidden} L={args.layers} E=64 B={args.batch} T={args.seq_len} float32, "
          f"{results[(coretypes[0], 1, 1)][0]['parameters']:,} parameters; medians of {args.repeats} runs "
          f"x {args.steps} steps; {os.cpu_count()} cores")
    print()
    print("| OPENBLAS_CORETYPE | configuration | step ms | chars/s | Allreduce in step ms | Allreduce alone ms | vs 1 proc x 2 threads |")
    print("|---|---|---|---|---|---|---|")
    for coretype in coretypes:
        base = statistics.median(r["step"] for r in results[(coretype, 1, 2)])
        for ranks, workers in configs:
            runs = results[(coretype, ranks, workers)]
            step = statistics.median(r["step"] for r in runs)
            name = f"{ranks} rank{'s' if ranks > 1 else ''} x 1 thread" if ranks > 1 else f"1 proc x {workers} thread{'s' if workers > 1 else ''}"
            reduce_ms = statistics.median(r["allreduce"] for r in runs) * 1e3
            alone_ms = statistics.median(r["alone"] for r in runs) * 1e3
            print(f"| {coretype or 'unset'} | {name} | {step * 1e3:.1f} | {chars / step:,.0f} | "
                  f"{reduce_ms:.2f} | {alone_ms:.2f} | {base / step:.2f}x |")


if __name__ == "__main__":
    main()
