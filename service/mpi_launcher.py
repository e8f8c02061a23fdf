"""Running a job's training worker as N MPI ranks (``charlstm serve --train-ranks N``).

The job manager starts ``mpirun -np N python -m charlstm.service.training_worker`` instead of
one spawned process. Rank 0 connects back to the manager over a Unix socket in a private
directory (authenticated with a per-job key passed in the environment, never on the command
line), receives the :class:`~.training_worker.WorkerSpec`, and from then on speaks the same
message protocol as a spawned worker; the other ranks only compute (see
:func:`training_worker.rank_main`). The objects here stand in for the pieces the manager uses
for a spawned worker, so :mod:`.jobs` drives both alike:

- :class:`MpiWorker` for the ``multiprocessing.Process`` (``pid``, ``is_alive``, ``join``,
  ``kill``, ``exitcode``: negative for a signal, as multiprocessing does) and for the
  receiving end of the Pipe (:meth:`MpiWorker.recv`);
- :class:`RemoteControl` for the shared ``control`` integer: setting ``value`` sends it to
  rank 0, which passes it to every rank at the next step.

Cancelling and draining go through ``control``, so every rank stops at the same step and
exits cleanly. :meth:`MpiWorker.kill` (a worker past its grace period) SIGKILLs every rank by
pid, then mpirun: OpenMPI puts each rank in a process group of its own, so killing mpirun's
group would not reach them.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

ADDRESS_VARIABLE = "CHARLSTM_WORKER_ADDRESS"
AUTHKEY_VARIABLE = "CHARLSTM_WORKER_AUTHKEY"
CONNECT_TIMEOUT = 120.0  # seconds for rank 0 to start and connect


def mpirun_command(ranks: int, environ: dict[str, str] | None = None) -> list[str]:
    """``mpirun -np ranks`` with the options this service needs, checked to be usable.

    Raises RuntimeError with what to install when mpirun or mpi4py is missing.
    """
    env = os.environ if environ is None else environ
    mpirun = shutil.which("mpirun", path=env.get("PATH"))
    if mpirun is None:
        raise RuntimeError(
            f"--train-ranks {ranks} runs training under MPI, but mpirun is not on PATH; install "
            "OpenMPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev) or use "
            "--train-ranks 1")
    if importlib.util.find_spec("mpi4py") is None:
        raise RuntimeError(
            f"--train-ranks {ranks} runs training under MPI, but mpi4py is not installed in "
            f"{sys.prefix}; install the `mpi` extra (pip install 'charlstm[mpi]') or use "
            "--train-ranks 1")
    # --oversubscribe: more ranks than cores is allowed (they share the cores, as the server
    # does); without it OpenMPI refuses -np above the core count.
    cmd = [mpirun, "-np", str(int(ranks)), "--oversubscribe"]
    if os.geteuid() == 0:
        # OpenMPI refuses to run as root unless told twice (flag + environment, see start()).
        cmd.append("--allow-run-as-root")
    return cmd


class RemoteControl:
    """The job's control value (RUN / CANCEL / INTERRUPT), forwarded to rank 0 when set."""

    def __init__(self, initial: int = 0):
        self._value = int(initial)
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, new: int) -> None:
        with self._lock:
            self._value = int(new)
            if self._conn is not None:
                self._send()

    def attach(self, conn: Connection) -> None:
        """Rank 0 is connected: from now on every change goes to it (the current value now)."""
        with self._lock:
            self._conn = conn
            self._send()

    def _send(self) -> None:
        try:
            self._conn.send(("control", self._value))
        except OSError:
            pass  # rank 0 has gone; the manager learns it from the closed connection


class MpiWorker:
    """``mpirun -np N`` running one job; rank 0's connection carries the worker protocol."""

    def __init__(self, spec: Any, ranks: int, control: RemoteControl):
        self.spec = spec
        self.ranks = int(ranks)
        self.control = control
        self.rank_pids: list[int] = []  # from rank 0's `started` message
        self._dir = Path(tempfile.mkdtemp(prefix="charlstm-mpi-"))  # 0700: ours alone
        self._address = str(self._dir / "worker.sock")
        self._authkey = secrets.token_bytes(32)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self._address)
        self._listener.listen(1)
        self._conn: Connection | None = None
        self._popen: subprocess.Popen | None = None

    # -- the Process side ---------------------------------------------------------------------

    def start(self) -> None:
        """Start ``mpirun`` (RuntimeError if it or mpi4py has gone since start-up)."""
        env = dict(os.environ)
        env[ADDRESS_VARIABLE] = self._address
        env[AUTHKEY_VARIABLE] = self._authkey.hex()
        if os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        try:
            cmd = mpirun_command(self.ranks, env) + [
                # -x: pass the connection details to the ranks wherever mpirun starts them.
                "-x", ADDRESS_VARIABLE, "-x", AUTHKEY_VARIABLE,
                sys.executable, "-m", "charlstm.service.training_worker",
            ]
            # stdin closed: mpirun would otherwise forward the server's stdin to rank 0.
            self._popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        except BaseException:
            self.close()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def exitcode(self) -> int | None:
        """mpirun's exit status; negative for a signal, as multiprocessing reports it. mpirun
        exits with 128 + N when a rank was killed by signal N, which is reported as -N too."""
        code = None if self._popen is None else self._popen.poll()
        if code is not None and 128 < code <= 128 + 64:
            return -(code - 128)
        return code

    def is_alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        if self._popen is None:
            return
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        if self._popen.poll() is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL every rank, then mpirun (whose ranks are not in its process group)."""
        for pid in self.rank_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.is_alive():
            self._popen.kill()

    # -- the Pipe side ------------------------------------------------------------------------

    def recv(self) -> tuple[str, dict]:
        """The next message from rank 0; EOFError when it has gone (or never connected)."""
        if self._conn is None:
            self._connect()
        kind, data = self._conn.recv()
        if kind == "started":
            self.rank_pids = [int(p) for p in data.get("rank_pids", ())]
        return kind, data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._listener.close()

    def _connect(self) -> None:
        """Wait for rank 0 (while mpirun lives), authenticate it, hand it the job."""
        self._listener.settimeout(0.2)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                sock, _ = self._listener.accept()
                break
            except socket.timeout:
                if not self.is_alive() or time.monotonic() > deadline:
                    raise EOFError("rank 0 never connected") from None
        sock.settimeout(None)
        conn = Connection(sock.detach())
        try:
            deliver_challenge(conn, self._authkey)
            answer_challenge(conn, self._authkey)
            conn.send(self.spec)
        except Exception as exc:  # noqa: BLE001 - a stranger on the socket, or rank 0 died
            conn.close()
            raise EOFError(f"rank 0's connection failed: {exc}") from exc
        self._conn = conn
        self.control.attach(conn)


def connect_to_manager() -> Connection:
    """Rank 0's side of :meth:`MpiWorker._connect` (address and key from the environment)."""
    from multiprocessing.connection import Client

    try:
        address = os.environ[ADDRESS_VARIABLE]
        authkey = bytes.fromhex(os.environ[AUTHKEY_VARIABLE])
    except (KeyError, ValueError):
        raise RuntimeError(
            f"{ADDRESS_VARIABLE} and {AUTHKEY_VARIABLE} are not set: this entry point is "
            "started by `charlstm serve --train-ranks N`, not by hand") from None
    return Client(address, family="AF_UNIX", authkey=authkey)
