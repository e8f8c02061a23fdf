"""Turn the output of `charlstm train ... --json` into a run record for plot.py.

    python job_curve.py final-engine.jsonl --name final-engine --command "charlstm train ..."

Keeps the progress events of the steps where validation ran (every eval_every steps and the
last), as [elapsed seconds, step, val loss, train loss]; elapsed is the worker's training
clock, validation included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import save_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("events", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--command", default="")
    a = p.parse_args()
    events = [json.loads(line) for line in a.events.read_text().splitlines() if line.startswith("{")]
    hyper = next(e["accepted"]["hyperparameters"] for e in events if e["kind"] == "accepted")
    progress = [e["progress"] for e in events if e["kind"] == "progress"]
    last = progress[-1]
    curve = [[round(q["elapsed_seconds"], 1), q["step"], q["val_loss"], q["train_loss"]] for q in progress
             if q["val_loss"] is not None and (q["step"] % hyper["eval_every"] == 0 or q is last)]
    best = min(curve, key=lambda r: r[2])
    path = save_run(a.name, {"trainer": "engine via charlstm train", "command": a.command,
                             "args": dict(hyper, name=a.name), "curve": curve, "best_val": best[2],
                             "best_at_seconds": best[0], "steps": last["step"], "epochs": last["epoch"],
                             "seconds": last["elapsed_seconds"],
                             "final": next((e for e in events if e["kind"] in ("succeeded", "failed")), None)})
    print(f"best val {best[2]:.4f} at {best[0]:.0f}s over {len(curve)} validations; wrote {path}")


if __name__ == "__main__":
    main()
