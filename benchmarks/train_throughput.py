"""Training throughput of the engine against PyTorch's nn.LSTM, side by side in one run.

    python benchmarks/train_throughput.py [--quick] [--configs 128x1,256x2,512x2] [--json FILE]

Both train Embedding(V, 64) -> LSTM(H, L) -> Linear(H, V) with Adam, gradient clipping at 5 and
float32 on tiny Shakespeare, with the state carried between windows, on the same thread count
(2 on these machines). The figure is characters per second over timed steps after warm-up
(median of per-step times); only the ratio, taken in one run, is meaningful on a shared machine.
PyTorch comes from the optional `interop` extra; without it only the engine is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "samples" / "tinyshakespeare.txt"
EMBEDDING = 64
# (hidden, layers, batch, window): the configurations issue 7 compares.
CONFIGS = {"128x1": (128, 1, 32, 64), "256x2": (256, 2, 32, 64), "512x2": (512, 2, 64, 128)}


def median_chars_per_second(step_seconds: list[float], chars_per_step: int) -> float:
    return chars_per_step / statistics.median(step_seconds)


def engine_run(text: str, hidden: int, layers: int, batch: int, window: int, steps: int,
               warmup: int) -> float:
    vocab = Vocab.from_text(text)
    model = CharLSTM(ModelConfig(vocab_size=vocab.size, embedding_size=EMBEDDING,
                                 hidden_size=hidden, num_layers=layers), seed=0)
    config = TrainConfig(seq_len=window, batch_size=batch, steps=warmup + steps,
                         schedule="constant", clip=5.0, val_fraction=0.0,
                         eval_every=10**9)
    trainer = Trainer(model, vocab, text, config)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        trainer.train_step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median_chars_per_second(times, batch * window)


def torch_run(text: str, hidden: int, layers: int, batch: int, window: int, steps: int,
              warmup: int, threads: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vocab = Vocab.from_text(text)
    ids = torch.from_numpy(vocab.encode(text))
    V = vocab.size

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(V, EMBEDDING)
            self.lstm = torch.nn.LSTM(EMBEDDING, hidden, layers)
            self.decoder = torch.nn.Linear(hidden, V)

        def forward(self, x, state):
            out, state = self.lstm(self.embedding(x), state)
            return self.decoder(out), state

    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    # B contiguous streams, as the engine's trainer reads them.
    stream_len = (len(ids) - 1) // batch
    starts = torch.arange(batch) * stream_len
    state = None
    times = []
    for i in range(warmup + steps):
        offset = (i * window) % (stream_len - window - 1)
        index = starts[None, :] + offset + torch.arange(window)[:, None]  # (T, B)
        x, y = ids[index], ids[index + 1]
        start = time.perf_counter()
        logits, state = net(x, state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return median_chars_per_second(times, batch * window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="HxL names to run")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="PyTorch intra-op threads (the engine uses one per core)")
    parser.add_argument("--quick", action="store_true", help="10 timed steps, 2 warm-up")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 10, 2
    text = CORPUS.read_text(encoding="utf-8")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  "
          f"threads={args.threads}  steps={args.steps}  warmup={args.warmup}")
    print(f"{'config':>8} {'B x T':>9} {'engine chars/s':>15} {'torch chars/s':>14} {'ratio':>6}")
    results = []
    for name in args.configs.split(","):
        hidden, layers, batch, window = CONFIGS[name]
        ours = engine_run(text, hidden, layers, batch, window, args.steps, args.warmup)
        theirs = torch_run(text, hidden, layers, batch, window, args.steps, args.warmup,
                           args.threads)
        ratio = ours / theirs if theirs else None
        print(f"{name:>8} {f'{batch}x{window}':>9} {ours:>15,.0f} "
              f"{(f'{theirs:,.0f}' if theirs else '-'):>14} {(f'{ratio:.2f}' if ratio else '-'):>6}")
        results.append({"config": name, "hidden": hidden, "layers": layers, "batch": batch,
                        "window": window, "engine_chars_per_second": ours,
                        "torch_chars_per_second": theirs, "ratio": ratio})
    if args.json:
        args.json.write_text(json.dumps({"openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
