"""One recipe experiment with the NumPy engine's Trainer, bounded by wall-clock time.

    taskset -c 0 python run_engine.py --name h384-d02 --hidden 384 --dropout 0.2 --seconds 420

Prints each validation and writes runs/<name>.json (config, curve, best). The service runs
exactly this Trainer in its worker process; this skips gRPC to make sweeps cheap.
"""

from __future__ import annotations

import argparse
import os

from charlstm.engine import CharLSTM, ModelConfig, Trainer, TrainConfig, Vocab

from common import add_recipe_args, load_text, save_run, split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_args(p)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    text = load_text()
    split(text)
    vocab = Vocab.from_text(text)
    mc = ModelConfig(vocab_size=vocab.size, embedding_size=a.embedding, hidden_size=a.hidden,
                     num_layers=a.layers, dropout=a.dropout)
    tc = TrainConfig(seq_len=a.seq_len, batch_size=a.batch_size, learning_rate=a.learning_rate,
                     min_lr_ratio=a.min_lr_ratio, warmup_steps=a.warmup_steps, clip=a.clip,
                     weight_decay=a.weight_decay, seed=a.seed, eval_every=a.eval_every,
                     max_seconds=a.seconds)
    trainer = Trainer(CharLSTM(mc, seed=a.seed), vocab, text, tc, workers=a.workers)
    load_start = os.getloadavg()
    curve, last = [], None
    for prog in trainer.run():
        last = prog
        if prog.val_loss is not None:
            curve.append([round(prog.elapsed_seconds, 1), prog.step, prog.val_loss, prog.train_loss])
            print(f"{prog.elapsed_seconds:7.1f}s step {prog.step:6d} ep {prog.epoch:5.2f} "
                  f"lr {prog.learning_rate:.2e} train {prog.train_loss:.4f} val {prog.val_loss:.4f} "
                  f"{prog.chars_per_second:,.0f} c/s", flush=True)
    best = min(curve, key=lambda r: r[2])
    path = save_run(a.name, {"trainer": "engine", "args": vars(a), "curve": curve,
                             "best_val": best[2], "best_at_seconds": best[0], "steps": last.step,
                             "epochs": last.epoch, "seconds": last.elapsed_seconds,
                             "loadavg_start": load_start})
    print(f"best val {best[2]:.4f} at {best[0]:.0f}s; {last.step} steps; wrote {path}")


if __name__ == "__main__":
    main()
