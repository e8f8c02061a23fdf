"""Shards of a training step in worker processes, each with its own interpreter and GIL.

``CharLSTM.loss_and_grad(workers=n)`` splits the streams into n shards. In threads, the shards'
GEMMs run in parallel but every NumPy call between them takes the process's one GIL: a
training step makes thousands of small calls, and each shard keeps waiting for the other to
hand the GIL back. Measured on 2 cores with 2 x 16 streams, processes against threads: at
H=128 L=1 12-15 against 16-20 ms a step back to back; at H=256 L=2 level back to back (72-83
against 75-83 ms), but 73-81 against 90-121 ms for a step after a pause (the threads'
shards recover slowly from idle). With 32 streams a shard at H=512 the two are level.

:class:`ShardProcesses` keeps ``count`` worker processes for shards 1..count (the caller's
thread computes shard 0). They share one memory-mapped file with the caller:

- the parameters, copied in by the caller before every step (a memcpy, about 1% of a step);
- one gradient buffer per worker, which the caller adds up as it does the threads' ones.

Everything else (the shard's inputs, initial state and dropout masks in, loss and final state
out) goes through a pipe. The same workers also score shares of the validation streams
(``evaluate.mean_loss``), which in threads took the same turns at the GIL. The workers run
exactly the code the threads run, on the same data, with single-threaded BLAS, so the results
are bit for bit those of thread shards.

A worker is a plain ``python -c`` child (:func:`worker_main`), not a
``multiprocessing`` one: that start method would re-import the caller's main module (a server,
a test runner, a benchmark script) in every worker. The mapped file is unlinked as soon as the
workers have opened it, so nothing is left behind if the processes are killed; a worker exits
when its pipe closes, so the workers never outlive their parent.
"""

from __future__ import annotations

import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
import weakref
from multiprocessing.connection import Connection

import numpy as np

from . import lstm

__all__ = ["ShardProcesses", "ShardProcessError"]


class ShardProcessError(RuntimeError):
    """A worker process failed a shard, or died."""


def _shared_file(size: int) -> tuple[str, int]:
    """A new file of ``size`` bytes, in memory (/dev/shm) where it fits, else in the temporary
    directory: (path, fd). The space is allocated up front: writing to a mapping that the
    file system cannot back (a container's 64 MB /dev/shm) would kill the process (SIGBUS)."""
    places = ["/dev/shm"] if os.path.isdir("/dev/shm") else []
    for where in places + [None]:
        fd, path = tempfile.mkstemp(prefix="charlstm-shards-", dir=where)
        try:
            os.posix_fallocate(fd, 0, size)
            return path, fd
        except OSError:
            os.close(fd)
            os.unlink(path)
            if where is None:
                raise
    raise AssertionError("unreachable")


class ShardProcesses:
    """``count`` worker processes, each computing one shard of a model's training steps.

    ``shapes``: the model's (V, E, H, L); ``dtype``: its parameters' dtype. Call
    :meth:`close` when done (it also runs when the object is garbage collected).
    """

    def __init__(self, count: int, shapes: tuple[int, int, int, int], dtype) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1 (got {count})")
        self.count = count
        self.shapes = shapes
        self.dtype = np.dtype(dtype)
        size = lstm.Params(*shapes, self.dtype).flat.size
        nbytes = (1 + count) * size * self.dtype.itemsize
        path, fd = _shared_file(nbytes)
        try:
            self._map = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        flats = np.frombuffer(self._map, dtype=self.dtype).reshape(1 + count, size)
        self.params = lstm.Params(*shapes, self.dtype, flat=flats[0])
        #: the gradient each worker wrote in its latest step
        self.grads = [lstm.Params(*shapes, self.dtype, flat=flats[1 + i]) for i in range(count)]
        self._workers: list[tuple[subprocess.Popen, Connection]] = []
        try:
            for i in range(count):
                self._workers.append(_start_worker(path, shapes, self.dtype.str, i))
            for i, (_, conn) in enumerate(self._workers):
                self._reply(i, conn)  # "ready": the worker has mapped the file
        except BaseException:
            _stop(self._workers)
            raise
        finally:
            os.unlink(path)
        self._finalizer = weakref.finalize(self, _stop, self._workers)

    def submit(self, i: int, inputs: np.ndarray, targets: np.ndarray, h0: np.ndarray,
               c0: np.ndarray, masks: list[np.ndarray] | None, need_grad: bool) -> None:
        """Start worker ``i`` on one shard (arguments as ``lstm.Window.forward``) with the
        parameters in :attr:`params`; collect it with :meth:`result`: the loss and final state
        (h_T, c_T), the gradient in ``grads[i]``."""
        self._send(i, ("step", (inputs, targets, h0, c0, masks, need_grad)))

    def submit_score(self, i: int, inputs: np.ndarray, targets: np.ndarray, scored: np.ndarray,
                     fresh: np.ndarray, burn: int) -> None:
        """Start worker ``i`` scoring streams (arguments as ``evaluate.score``) with the
        parameters in :attr:`params`; :meth:`result` is then their Σ -log p."""
        self._send(i, ("score", (inputs, targets, scored, fresh, burn)))

    def result(self, i: int):
        """What worker ``i`` computed for its latest :meth:`submit` or :meth:`submit_score`."""
        return self._reply(i, self._workers[i][1])

    def _send(self, i: int, job: tuple) -> None:
        try:
            self._workers[i][1].send(job)
        except OSError as exc:  # the worker's end is closed: it died
            raise self._died(i) from exc

    def _reply(self, i: int, conn: Connection):
        try:
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died(i) from exc
        if status != "ok":
            raise ShardProcessError(f"training shard process {i + 1} failed:\n{value}")
        return value

    def _died(self, i: int) -> ShardProcessError:
        process = self._workers[i][0] if i < len(self._workers) else None
        code = None
        if process is not None:
            try:
                code = process.wait(timeout=1)  # its pipe closed: it is exiting
            except subprocess.TimeoutExpired:
                pass
        return ShardProcessError(
            f"training shard process {i + 1} exited unexpectedly (exit code {code})")

    def close(self) -> None:
        """End the worker processes (idempotent)."""
        self._finalizer()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers]


def _start_worker(path: str, shapes: tuple[int, int, int, int], dtype: str,
                  index: int) -> tuple[subprocess.Popen, Connection]:
    mine, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno()), path,
             ",".join(map(str, shapes)), dtype, str(index)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return process, Connection(mine.detach())


def _stop(workers: list[tuple[subprocess.Popen, Connection]]) -> None:
    for _, conn in workers:
        conn.close()  # the worker's recv sees EOF and it exits
    for process, _ in workers:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    workers.clear()


# ---------------------------------------------------------------------------------------------
# The worker's side


def _serve(conn: Connection, path: str, shapes: tuple[int, int, int, int], dtype: str,
           index: int) -> None:
    from .blas import set_num_threads
    from .evaluate import score  # here: evaluate imports this module

    set_num_threads(1)  # one core per shard, as the thread shards run
    # A terminal's Ctrl-C reaches the whole process group; the parent decides, and a worker
    # ends when its pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dt = np.dtype(dtype)
    size = lstm.Params(*shapes, dt).flat.size
    with open(path, "r+b") as f:
        shared = mmap.mmap(f.fileno(), (2 + index) * size * dt.itemsize)
    flats = np.frombuffer(shared, dtype=dt).reshape(2 + index, size)
    w = lstm.Params(*shapes, dt, flat=flats[0])
    g = lstm.Params(*shapes, dt, flat=flats[1 + index])
    windows: dict[tuple[int, int], lstm.Window] = {}
    conn.send(("ok", None))
    while True:
        try:
            kind, args = conn.recv()
        except EOFError:
            return  # the parent closed its end, or died
        try:
            if kind == "score":  # validation (evaluate.mean_loss)
                reply = ("ok", score(w, *args))
            else:
                inputs, targets, h0, c0, masks, need_grad = args
                T, B = inputs.shape
                window = windows.get((T, B))
                if window is None:
                    windows.clear()  # one shape at a time, as training uses
                    window = windows[(T, B)] = lstm.Window(*shapes, T, B, dt)
                loss = window.forward(w, inputs, targets, h0, c0, masks)
                if need_grad:
                    window.backward(w, g, [np.ascontiguousarray(W.T) for W in w.W_h])
                reply = ("ok", (loss, *window.final_state()))
        except Exception:  # noqa: BLE001 - reported to the parent, which raises it
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except OSError:  # the parent went away during the step
            return


# ``python -c`` rather than ``-m``: the package's __init__ imports this module already.
_WORKER_MAIN = "from charlstm.engine.shard_processes import worker_main; worker_main()"


def worker_main() -> None:
    """A worker process's entry point: ``fd path V,E,H,L dtype index`` on its command line."""
    fd, path, shape_text, dtype_text, index_text = sys.argv[1:6]
    V, E, H, L = (int(x) for x in shape_text.split(","))
    _serve(Connection(int(fd)), path, (V, E, H, L), dtype_text, int(index_text))
