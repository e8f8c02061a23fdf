"""Training peak memory of the engine and of PyTorch, per configuration, measured the same way.

    python benchmarks/training_memory.py [--quick] [--json FILE]

Each run is a fresh child process: it imports its framework, reads the corpus, resets the
kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``) and notes VmRSS, then
builds the model and optimiser and trains a few steps (the configurations and setup of
``train_throughput.py``). The figure is the high-water mark (VmHWM) minus that starting RSS, plus the
high-water marks of its child processes (the engine's training shard processes, counted whole):
the memory the model, optimiser state, activations, gradients and temporaries took at their peak.
The engine's child also reports tracemalloc's peak of NumPy's allocations as a cross-check.
Linux only (it reads /proc). No target: issue 7 asks for the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result import make_result  # noqa: E402
from train_throughput import CONFIGS, CORPUS, EMBEDDING  # noqa: E402

MB = 1024 * 1024


def _status_kb(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def _children_peak_kb() -> int:
    """The summed high-water marks of this process's live children: the engine's training
    shard processes (engine/shard_processes.py), whole, as all their memory is the training's."""
    pids = set()
    for task in Path("/proc/self/task").iterdir():
        pids.update((task / "children").read_text().split())
    return sum(_status_kb("VmHWM", pid) for pid in pids)


def child(which: str, name: str, steps: int) -> dict[str, float]:
    """Runs in the child: train ``steps`` steps and return the peak memory figures (MB)."""
    import tracemalloc

    hidden, layers, batch, window = CONFIGS[name]
    text = CORPUS.read_text(encoding="utf-8")
    if which == "torch":
        from torch_reference import TorchTrainer, torch_or_none

        from charlstm.engine import Vocab
        torch = torch_or_none()
        vocab = Vocab.from_text(text)
        torch.set_num_threads(1)  # the peak does not depend on threads; keep the child light
    else:
        from train_throughput import engine_trainer
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM to the current RSS
    start_kb = _status_kb("VmRSS")
    traced = None
    if which == "torch":
        ids = vocab.encode(text)  # after the reset, as the engine's Trainer encodes its text
        trainer = TorchTrainer(torch, ids, vocab.size, EMBEDDING, hidden, layers, batch, window)
    else:
        tracemalloc.start()
        trainer = engine_trainer(text, hidden, layers, batch, window)
    for _ in range(steps):
        trainer.train_step()
    children_kb = _children_peak_kb()  # before the trainer ends its shard processes
    if which != "torch":
        traced = tracemalloc.get_traced_memory()[1] / MB
        tracemalloc.stop()
        trainer.close()
    peak_kb = _status_kb("VmHWM")
    return {"peak_mb": (peak_kb - start_kb + children_kb) / 1024, "start_rss_mb": start_kb / 1024,
            "child_processes_peak_mb": children_kb / 1024, "tracemalloc_peak_mb": traced}


def _start_child(which: str, name: str, steps: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", which, name, str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _child_result(which: str, name: str, proc: subprocess.Popen) -> dict[str, float] | None:
    out, err = proc.communicate(timeout=900)
    if proc.returncode != 0:
        if which == "torch" and "No module named 'torch'" in err:
            return None
        raise RuntimeError(f"memory child {which} {name} failed:\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool) -> list[dict[str, Any]]:
    """One result per configuration: MB at the peak, ours / PyTorch. The children run at
    the same time (each one's high-water mark is its own), so this takes about as long as
    the slowest of them."""
    steps = 2 if quick else 5
    children = {(which, name): _start_child(which, name, steps)
                for name in CONFIGS for which in ("engine", "torch")}
    results = []
    for name in CONFIGS:
        hidden, layers, batch, window = CONFIGS[name]
        ours = _child_result("engine", name, children["engine", name])
        theirs = _child_result("torch", name, children["torch", name])
        details = {"hidden": hidden, "layers": layers, "batch": batch, "window": window,
                   "steps": steps, "method": "VmHWM - VmRSS at start + child processes' VmHWM, fresh child process",
                   "engine": ours, "torch": theirs}
        results.append(make_result(f"training peak memory H={hidden} L={layers} B={batch} T={window}",
                                   ours["peak_mb"], theirs["peak_mb"] if theirs else None, "MB",
                                   "report", details))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per child")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=3, metavar=("WHICH", "CONFIG", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        which, name, steps = args.child
        print(json.dumps(child(which, name, int(steps))))
        return
    results = run(args.quick)
    for r in results:
        ref = "-" if r["reference"] is None else f"{r['reference']:.1f} MB"
        print(f"{r['name']:<48} engine {r['ours']:7.1f} MB  torch {ref}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
