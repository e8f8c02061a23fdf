"""The PyTorch side of the comparison: Embedding -> nn.LSTM -> dropout -> Linear, trained
the way the engine's Trainer trains, bounded by the same wall-clock budget.

    taskset -c 1 python run_torch.py --name torch-h384 --hidden 384 --dropout 0.2 --seconds 2400

Same as the engine: the initial weights (the engine's CharLSTM(seed) state_dict loads as is),
B contiguous streams over the first 90% with the state carried between windows and reset
each epoch, AdamW with decoupled decay on the 2-D weights only, global-norm clipping, linear
warm-up then cosine decay over elapsed time (the engine's own `learning_rate`), validation
on the whole last 10% every eval_every steps and after the last (64 streams, each but the
first reading 128 unscored characters first, as `charlstm.engine.evaluate.mean_loss`), the
clock including validation. One thread (torch.set_num_threads(1)).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from charlstm.engine import CharLSTM, ModelConfig, Vocab
from charlstm.engine.optim import learning_rate

from common import add_recipe_args, load_text, save_run, split

BURN_IN, STREAMS = 128, 64


class TorchCharLSTM(nn.Module):
    def __init__(self, V: int, E: int, H: int, L: int, p: float):
        super().__init__()
        self.embedding = nn.Embedding(V, E)
        self.lstm = nn.LSTM(E, H, L, dropout=p if L > 1 else 0.0)
        self.drop = nn.Dropout(p)
        self.decoder = nn.Linear(H, V)

    def forward(self, x, state=None):  # x (T, B) -> logits (T, B, V)
        out, state = self.lstm(self.embedding(x), state)
        return self.decoder(self.drop(out)), state


@torch.no_grad()
def val_loss(model: TorchCharLSTM, ids: torch.Tensor) -> float:
    """Mean nats/char over ids[1:], scored as mean_loss does (see the module docstring)."""
    model.eval()
    n = len(ids) - 1
    B = max(1, min(STREAMS, n // 2048))
    S = -(-n // B)
    burn = min(BURN_IN, S) if B > 1 else 0
    pos = torch.arange(B)[None, :] * S - burn + torch.arange(burn + S)[:, None]
    scored = (pos >= 0) & (pos < n)
    scored[:burn] = False
    safe = pos.clamp(0, n - 1)
    inputs, targets = ids[safe], ids[safe + 1]
    _, (h, c) = model(inputs[:burn])
    h[:, 0], c[:, 0] = 0.0, 0.0  # stream 0 starts at the beginning of the text
    total = 0.0
    for t0 in range(burn, burn + S, 256):
        logits, (h, c) = model(inputs[t0 : t0 + 256], (h, c))
        nll = nn.functional.cross_entropy(logits.flatten(0, 1), targets[t0 : t0 + 256].flatten(), reduction="none")
        total += float(nll[scored[t0 : t0 + 256].flatten()].double().sum())
    model.train()
    return total / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_args(p)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = load_text()
    n_train = split(text)
    vocab = Vocab.from_text(text)
    V = vocab.size
    model = TorchCharLSTM(V, a.embedding, a.hidden, a.layers, a.dropout)
    init = CharLSTM(ModelConfig(V, a.embedding, a.hidden, a.layers, a.dropout), seed=a.seed)
    missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in init.state_dict().items()}, strict=True)
    assert not missing.missing_keys
    decay = [q for q in model.parameters() if q.ndim == 2]
    no_decay = [q for q in model.parameters() if q.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.learning_rate)

    T, B = a.seq_len, a.batch_size
    ids = torch.from_numpy(vocab.encode(text[:n_train]).astype(np.int64))
    S = n_train // B
    data = ids[: S * B].reshape(B, S).T.contiguous()  # (S, B): column b is stream b
    val_ids = torch.from_numpy(vocab.encode(text[n_train:]).astype(np.int64))
    windows = (S - 1) // T

    load_start = os.getloadavg()
    curve, step, window, state = [], 0, 0, None
    start = time.perf_counter()
    done = False
    while not done:
        elapsed = time.perf_counter() - start
        lr = learning_rate(step, 2**62, a.learning_rate, "cosine", a.warmup_steps, a.min_lr_ratio,
                           progress=elapsed / a.seconds)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = data[window * T : (window + 1) * T], data[window * T + 1 : (window + 1) * T + 1]
        logits, state = model(x, state)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        state = tuple(s.detach() for s in state)
        step, window = step + 1, window + 1
        if window == windows:  # epoch boundary: the streams start over
            window, state = 0, None
        done = time.perf_counter() - start >= a.seconds
        if step % a.eval_every == 0 or done:
            v = val_loss(model, val_ids)
            t = time.perf_counter() - start
            curve.append([round(t, 1), step, v, float(loss)])
            print(f"{t:7.1f}s step {step:6d} ep {step / windows:5.2f} lr {lr:.2e} "
                  f"train {float(loss):.4f} val {v:.4f}", flush=True)
    best = min(curve, key=lambda r: r[2])
    path = save_run(a.name, {"trainer": "pytorch", "torch": torch.__version__, "args": vars(a),
                             "curve": curve, "best_val": best[2], "best_at_seconds": best[0],
                             "steps": step, "epochs": step / windows,
                             "seconds": time.perf_counter() - start, "loadavg_start": load_start})
    print(f"best val {best[2]:.4f} at {best[0]:.0f}s; {step} steps; wrote {path}")


if __name__ == "__main__":
    main()
