"""Predict throughput through one replica vs several, with client-side round_robin.

    python benchmarks/replicas.py                  # 1 vs 3 replicas, 8 callers, 5 s, 2 rounds
    python benchmarks/replicas.py --replicas 2 --seconds 10 --rounds 3

Each round starts N replicas of ``charlstm serve --shared-store`` (child processes on one store
directory holding one 2 x 128 model), then runs ``--callers`` threads calling Predict (one input
of 32 characters, a 32-character continuation) through one client whose target lists every
replica (round_robin), for ``--seconds``. The 1-replica and N-replica runs alternate, round by
round, so that a change in the machine's load affects both; the medians are reported.

With the replicas on one machine they share its cores: this measures what spreading buys on
this host (the RPC and GIL overhead of one process spread over several), not what more
machines would give.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _start(store: str, name: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "charlstm.service.server", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "off", "--store", store, "--shared-store", "--replica-id", name,
         "--log-format", "json", "--grace-period", "1"],
        stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # type: ignore[union-attr]
        if '"server_started"' in line:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return process, f"127.0.0.1:{json.loads(line)['port']}"
    raise RuntimeError(f"replica {name} did not start")


def _run(store: str, replicas: int, callers: int, seconds: float) -> float:
    from charlstm.client import CharLstmClient

    started = [_start(store, f"r{i}") for i in range(replicas)]
    try:
        target = ",".join(address for _, address in started)
        counts = [0] * callers
        errors: list[str] = []
        stop = threading.Event()

        def call(i: int) -> None:
            with CharLstmClient(target, timeout=30) as client:
                while not stop.is_set():
                    try:
                        client.predict("bench", "ROMEO:\nWhat say you to this, my lo", length=32,
                                       seed=i)
                        counts[i] += 1
                    except Exception as exc:  # noqa: BLE001 - reported, not hidden
                        errors.append(repr(exc))

        with CharLstmClient(target, timeout=30) as warm:  # connect and load the model everywhere
            for _ in range(4 * replicas):
                warm.predict("bench", "warm", length=1)
        threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(callers)]
        begin = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - begin
        if errors:
            print(f"  {len(errors)} errors, e.g. {errors[0]}")
        return sum(counts) / elapsed
    finally:
        for process, _ in started:
            process.terminate()
        for process, _ in started:
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from charlstm.engine import CharLSTM, ModelConfig, Vocab
    from charlstm.service.store import LocalStore

    store = tempfile.mkdtemp(prefix="charlstm-bench-")
    text = (ROOT / "samples" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=64, hidden_size=128, num_layers=2)
    model = CharLSTM(config, seed=0)
    LocalStore(store).save("bench", model.state_dict(),
                           {"model_config": config.to_dict(), "vocab": vocab.chars})

    print(f"cores: {os.cpu_count()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; "
          f"{args.callers} callers, {args.seconds:g} s per run, {args.rounds} rounds")
    results: dict[int, list[float]] = {1: [], args.replicas: []}
    for round_ in range(args.rounds):
        for n in (1, args.replicas):
            rate = _run(store, n, args.callers, args.seconds)
            results[n].append(rate)
            print(f"  round {round_ + 1}: {n} replica(s): {rate:.1f} Predict/s")
    one, many = (statistics.median(results[n]) for n in (1, args.replicas))
    print(f"median: 1 replica {one:.1f} Predict/s, {args.replicas} replicas {many:.1f} Predict/s, "
          f"ratio {many / one:.2f}")


if __name__ == "__main__":
    main()
