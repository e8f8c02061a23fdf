"""Soak: many Stream sessions and Predict callers against a real `charlstm serve`, then a table.

    python benchmarks/soak.py --seconds 60     # the issue-9 soak: 200 streams, 8 Predict callers
    python benchmarks/soak.py --seconds 10 --streams 50

The server runs in a child process (`charlstm serve` on 127.0.0.1, free ports) over a store
holding one tiny model, so the resident memory measured (VmRSS in /proc/<pid>/status) and the
thread count are the server's own. Each Stream session opens, then loops "feed 10 characters,
generate 16, think 0.2-1 s" until time is up, then half-closes and reads the end of the
call. The clock starts once every session is open. Each Predict caller loops "two inputs,
16-character continuation, think 20 ms".

Reported: calls, unexpected errors (anything but OK), latency percentiles per operation,
VmRSS at the middle and the end (the growth over the second half), server threads before
and after, and `charlstm_active_streams` scraped from the metrics port after the run.

tests/reliability/test_load.py runs :func:`run_load` for 10 s with the same checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc

from charlstm.v1 import charlstm_pb2 as pb
from charlstm.v1 import charlstm_pb2_grpc

MODEL = "tiny"
FEED = "the quick "
GENERATE = 16


class ServeProcess:
    """`charlstm serve` in a child process on free ports; stderr is drained in the background."""

    def __init__(self, store: Path, *extra: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "charlstm.client.cli", "serve", "--host", "127.0.0.1",
             "--port", "0", "--metrics-port", "0", "--store", str(store), "--log-format", "json",
             "--grace-period", "2", *extra],
            stderr=subprocess.PIPE, text=True,
        )
        self.port = self.metrics_port = 0
        for line in self.process.stderr:
            if '"server_started"' in line:
                started = json.loads(line)
                self.port, self.metrics_port = int(started["port"]), int(started["metrics_port"])
                break
        else:
            raise RuntimeError(f"the server did not start (exit code {self.process.wait()})")
        self.target = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, key: str) -> int:
        """A number from /proc/<pid>/status: ``VmRSS`` in kB, ``Threads``."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status (kills it if it hangs)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=10)


def make_store(root: Path) -> Path:
    """A store holding model ``tiny`` (2 x 24 LSTM), trained for a few steps (~1 s)."""
    from charlstm.engine import CharLSTM, ModelConfig, TrainConfig, Trainer, Vocab
    from charlstm.service.store import LocalStore

    text = "the quick brown fox jumps over the lazy dog.\n" * 80
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=vocab.size, embedding_size=8, hidden_size=24, num_layers=2)
    model = CharLSTM(config, seed=0)
    train = TrainConfig(seq_len=16, batch_size=8, steps=60, learning_rate=0.01, eval_every=60,
                        val_fraction=0.1)
    trainer = Trainer(model, vocab, text, train)
    last = None
    for last in trainer.run():
        pass
    LocalStore(root).save(MODEL, model.state_dict(), {
        "model_config": config.to_dict(), "vocab": vocab.chars, "train_config": train.to_dict(),
        "metrics": {"step": last.step, "train_loss": last.train_loss, "val_loss": last.val_loss,
                    "best_val_loss": trainer.best_val_loss},
        "val_curve": [[last.step, last.val_loss]],
        "corpus": {"sha256": "0" * 64, "characters": len(text)}, "job_id": None,
    })
    return root


@dataclasses.dataclass
class Tally:
    """What the load threads record (appends to lists are atomic under the GIL)."""

    latencies: dict[str, list[float]] = dataclasses.field(
        default_factory=lambda: {"stream open": [], "stream feed": [], "stream generate": [],
                                 "predict": []})
    errors: list[str] = dataclasses.field(default_factory=list)
    sessions_completed: int = 0
    chars: int = 0


class _Requests:
    """A request iterator the session thread writes to; None half-closes."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()

    def __iter__(self):
        while (message := self.queue.get()) is not None:
            yield message


def _session(stub, index: int, stop: threading.Event, tally: Tally, timeout: float,
             opened: threading.Semaphore, go: threading.Event) -> None:
    rng = random.Random(index)
    requests = _Requests()
    requests.queue.put(pb.StreamRequest(open=pb.StreamOpen(
        model=pb.ModelRef(name=MODEL), sampling=pb.SamplingOptions(temperature=1.0, seed=index))))
    started = time.perf_counter()
    call = stub.Stream(iter(requests), timeout=timeout)
    try:
        assert next(call).WhichOneof("event") == "opened"
        tally.latencies["stream open"].append(time.perf_counter() - started)
        opened.release()
        go.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            requests.queue.put(pb.StreamRequest(feed=pb.StreamFeed(text=FEED)))
            assert next(call).WhichOneof("event") == "prediction"
            t1 = time.perf_counter()
            tally.latencies["stream feed"].append(t1 - t0)
            requests.queue.put(pb.StreamRequest(generate=pb.StreamGenerate(length=GENERATE)))
            chars = 0
            for response in call:
                if response.WhichOneof("event") == "end":
                    break
                chars += len(response.chars.text)
            assert chars == GENERATE, chars
            tally.chars += chars
            tally.latencies["stream generate"].append(time.perf_counter() - t1)
            stop.wait(rng.uniform(0.2, 1.0))
        requests.queue.put(None)
        leftover = list(call)
        assert not leftover, leftover
        tally.sessions_completed += 1
    except grpc.RpcError as err:
        tally.errors.append(f"Stream: {err.code().name}: {err.details()}")
    except AssertionError as err:
        tally.errors.append(f"Stream: unexpected reply {err}")
    finally:
        opened.release()  # a session that failed to open must not hold up the others
        requests.queue.put(None)
        call.cancel()


def _predictor(stub, index: int, stop: threading.Event, tally: Tally, timeout: float,
               go: threading.Event) -> None:
    go.wait()
    seed = 0
    while not stop.is_set():
        seed += 1
        request = pb.PredictRequest(model=pb.ModelRef(name=MODEL), inputs=["the quick", "lazy dog"],
                                    length=GENERATE,
                                    sampling=pb.SamplingOptions(temperature=0.8, seed=seed))
        t0 = time.perf_counter()
        try:
            response = stub.Predict(request, timeout=timeout)
            assert len(response.predictions) == 2
        except grpc.RpcError as err:
            tally.errors.append(f"Predict: {err.code().name}: {err.details()}")
            continue
        tally.latencies["predict"].append(time.perf_counter() - t0)
        stop.wait(0.02)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclasses.dataclass
class LoadReport:
    seconds: float
    streams: int
    predictors: int
    tally: Tally
    rss_kb: list[tuple[float, int]]  # (seconds since start, VmRSS kB)
    threads_before: int
    threads_after: int
    active_streams_after: float

    @property
    def rss_mid_kb(self) -> int:
        return next(kb for t, kb in self.rss_kb if t >= self.seconds / 2)

    @property
    def rss_end_kb(self) -> int:
        return self.rss_kb[-1][1]

    @property
    def rss_growth_second_half(self) -> float:
        return self.rss_end_kb / self.rss_mid_kb - 1.0

    def table(self) -> str:
        rows = [f"load: {self.streams} Stream sessions + {self.predictors} Predict callers for "
                f"{self.seconds:g} s",
                f"{'operation':<16} {'calls':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
        for name, values in self.tally.latencies.items():
            rows.append(f"{name:<16} {len(values):>7} {percentile(values, .5) * 1e3:>8.1f} "
                        f"{percentile(values, .95) * 1e3:>8.1f} "
                        f"{percentile(values, .99) * 1e3:>8.1f}")
        rows += [
            f"sessions completed: {self.tally.sessions_completed}/{self.streams}, "
            f"characters streamed: {self.tally.chars}",
            f"unexpected errors: {len(self.tally.errors)}"
            + (f" (first: {self.tally.errors[0]})" if self.tally.errors else ""),
            f"server VmRSS: start {self.rss_kb[0][1] / 1024:.1f} MiB, middle "
            f"{self.rss_mid_kb / 1024:.1f} MiB, end {self.rss_end_kb / 1024:.1f} MiB "
            f"(second half {self.rss_growth_second_half:+.2%})",
            f"server threads: {self.threads_before} before, {self.threads_after} after; "
            f"charlstm_active_streams after: {self.active_streams_after:g}",
        ]
        return "\n".join(rows)


def run_load(server: ServeProcess, *, seconds: float, streams: int = 200,
             predictors: int = 8, channels: int = 4) -> LoadReport:
    """Hold the load on ``server`` for ``seconds``; returns what was measured."""
    chans = [grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [charlstm_pb2_grpc.CharLstmStub(c) for c in chans]
    # A Predict first, so the model is loaded and the baseline thread count is taken warm.
    stubs[0].Predict(pb.PredictRequest(model=pb.ModelRef(name=MODEL), inputs=["a"]), timeout=30)
    threads_before = server.status("Threads")
    stop, go, opened, tally = threading.Event(), threading.Event(), threading.Semaphore(0), Tally()
    timeout = seconds + 120
    workers = [threading.Thread(target=_session, daemon=True,
                                args=(stubs[i % channels], i, stop, tally, timeout, opened, go))
               for i in range(streams)]
    workers += [threading.Thread(target=_predictor, daemon=True,
                                 args=(stubs[i % channels], i, stop, tally, timeout, go))
                for i in range(predictors)]
    for worker in workers:
        worker.start()
    # Every session open before the clock starts: the measured period has all of them live.
    for _ in range(streams):
        opened.acquire(timeout=60)
    go.set()
    started = time.monotonic()
    rss = []
    while (elapsed := time.monotonic() - started) < seconds:
        rss.append((elapsed, server.status("VmRSS")))
        time.sleep(0.25)
    rss.append((time.monotonic() - started, server.status("VmRSS")))
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    # Sessions end asynchronously on the server after the client's last read.
    deadline = time.monotonic() + 10
    while (active := server.metric("charlstm_active_streams")) and time.monotonic() < deadline:
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    limit = threads_before + streams + predictors + 16
    while (threads := server.status("Threads")) > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    for channel in chans:
        channel.close()
    return LoadReport(seconds=seconds, streams=streams, predictors=predictors, tally=tally,
                      rss_kb=rss, threads_before=threads_before, threads_after=threads,
                      active_streams_after=active)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to hold the load")
    parser.add_argument("--streams", type=int, default=200, help="concurrent Stream sessions")
    parser.add_argument("--predictors", type=int, default=8, help="threads calling Predict")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="charlstm-soak-") as tmp:
        server = ServeProcess(make_store(Path(tmp) / "store"))
        try:
            report = run_load(server, seconds=args.seconds, streams=args.streams,
                              predictors=args.predictors)
        finally:
            code = server.stop()
    print(report.table())
    print(f"server exit status after SIGTERM: {code}")
    ok = (not report.tally.errors and report.rss_growth_second_half < 0.05
          and report.active_streams_after == 0
          and report.threads_after <= report.threads_before + args.streams + args.predictors + 16
          and report.tally.sessions_completed == args.streams and code == 0)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
