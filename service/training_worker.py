"""The training worker: one process per running job, started by :mod:`.jobs` with ``spawn``.

Training runs here and never in the serving process, so a job cannot stall Predict or Stream
(the GIL) and a crash or ``kill -9`` of a worker takes down one job, not the server.

Protocol with the manager (``jobs.JobManager``):

- arguments: a :class:`WorkerSpec` (plain data), the sending end of a one-way Pipe, and a
  shared integer ``control`` the manager sets to :data:`CANCEL` or :data:`INTERRUPT`;
- messages, each a ``(kind, dict)`` tuple, in this order: ``started``; ``progress`` (at most
  about 10 a second, but every step that ran a validation and the last step are always sent)
  and ``checkpoint`` (a version was written); then exactly one of ``succeeded``, ``failed``,
  ``cancelled`` or ``interrupted``, after which the process exits.

If the process dies without a final message the manager reports the job failed with the exit
code or signal. If the manager's process dies, the worker notices between steps (its parent
changes) and exits without writing anything more: a restarted server decides what happens to
the job.

Data-parallel jobs (``charlstm serve --train-ranks N``, see :mod:`.mpi_launcher`) run this
module under ``mpirun`` (:func:`rank_main`). Rank 0 is the worker above, connected to the
manager over a socket instead of a Pipe; it reads the corpus and checkpoint and hands them to
the other ranks, whose only part is to compute. Every rank runs the same :func:`_train`: the
trainer's collectives keep them in step, checkpoints are computed together and written by
rank 0, and rank 0's view of ``control`` decides for all when to stop and how.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

# What the manager writes into `control`.
RUN = 0
CANCEL = 1  # stop between steps; report `cancelled` with the last version written
INTERRUPT = 2  # write a checkpoint with training state, then report `interrupted`

PROGRESS_INTERVAL = 0.1  # seconds between progress messages (<= 10/s)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain picklable data."""

    job_id: str
    model: str
    store_location: str  # passed to store.open_store in the worker
    corpus_path: str
    corpus_id: str
    corpus_characters: int
    hyperparameters: dict  # ResolvedHyperparameters.to_dict()
    resume_from_version: int  # 0: fresh start
    parent_pid: int
    store_settings: Any = None  # S3Settings of an s3:// store (None: from the environment)


class ParentGone(Exception):
    """The manager's process is gone; nobody is listening."""


class _Reporter:
    """Sends messages to the manager; notices when it has gone (its parent changes)."""

    def __init__(self, conn: Connection, parent_pid: int):
        self.conn = conn
        self.parent_pid = parent_pid
        self.last_progress = 0.0
        self.unsent = None  # the latest (progress, val_loss) skipped by the throttle

    def flush(self) -> None:
        """Send the latest progress if the throttle held it back (before a final message)."""
        if self.unsent is not None:
            p, val_loss = self.unsent
            self.progress(p, val_loss, force=True)

    def parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def send(self, kind: str, **data: Any) -> None:
        try:
            self.conn.send((kind, data))
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            raise ParentGone() from exc

    def progress(self, p, val_loss: float | None, *, force: bool) -> None:
        """Report a step, unless one was reported less than PROGRESS_INTERVAL ago (and this
        one is not forced); a skipped step is kept for :meth:`flush`."""
        now = time.monotonic()
        if not force and now - self.last_progress < PROGRESS_INTERVAL:
            self.unsent = (p, val_loss)
            return
        self.last_progress = now
        self.unsent = None
        self.send(
            "progress",
            step=int(p.step),
            total_steps=int(p.total_steps),
            epoch=float(p.epoch),
            train_loss=float(p.train_loss),
            val_loss=None if val_loss is None else float(val_loss),
            evaluated=p.val_loss is not None,
            chars_per_second=float(p.chars_per_second),
            learning_rate=float(p.learning_rate),
            grad_norm=float(p.grad_norm),  # inf/NaN: the step was skipped
            elapsed_seconds=float(p.elapsed_seconds),
            eta_seconds=float(p.eta_seconds),
        )


class _ConnectedReporter(_Reporter):
    """Rank 0's reporter: its parent is mpirun, and the manager is at the other end of
    ``control``'s connection, whose end means the manager has gone."""

    def __init__(self, conn: Connection, control: "_PolledControl"):
        super().__init__(conn, os.getppid())
        self.control = control

    def parent_alive(self) -> bool:
        self.control.value  # reading polls the connection, which notices its end
        return not self.control.gone and super().parent_alive()


class _SilentReporter(_Reporter):
    """Ranks other than 0 report nothing; rank 0 decides whether the manager is there."""

    def __init__(self):
        super().__init__(None, os.getppid())

    def send(self, kind: str, **data: Any) -> None:
        pass

    def parent_alive(self) -> bool:
        return True


class _PolledControl:
    """Rank 0's copy of the manager's ``control`` value, updated from the connection (see
    ``mpi_launcher.RemoteControl``) whenever it is read; ``gone`` once the connection ends."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.gone = False
        self._value = RUN

    @property
    def value(self) -> int:
        try:
            while not self.gone and self.conn.poll():
                kind, value = self.conn.recv()
                # RUN is only ever the initial value: never let it undo a stop (a SIGTERM
                # that came before the manager's first message was read, say).
                if kind == "control" and int(value) != RUN:
                    self._value = int(value)
        except (EOFError, OSError):
            self.gone = True
        return self._value

    @value.setter
    def value(self, value: int) -> None:  # the SIGTERM handler
        self._value = int(value)


class _LocalControl:
    """The control value of a rank that only computes (rank 0's is the one that counts)."""

    value = RUN


def main(spec: WorkerSpec, conn: Connection, control) -> None:
    """Process entry point: train the job in ``spec``, reporting through ``conn``."""
    _handle_signals(control)
    try:
        _run(spec, _Reporter(conn, spec.parent_pid), control)
    finally:
        conn.close()


def rank_main() -> int:
    """Entry point of every rank of ``mpirun -np N python -m charlstm.service.training_worker``
    (started by ``mpi_launcher.MpiWorker``): rank 0 fetches the job from the manager, all train."""
    from charlstm.engine.distributed import from_environment

    from .mpi_launcher import connect_to_manager

    comm = from_environment()
    conn, spec = None, None
    try:
        if comm.rank == 0:
            conn = connect_to_manager()
            spec = conn.recv()
            control = _PolledControl(conn)
            reporter = _ConnectedReporter(conn, control)
        else:
            control, reporter = _LocalControl(), _SilentReporter()
        _handle_signals(control)
        spec = comm.bcast(spec)
    except Exception:  # noqa: BLE001 - no job to report on: end every rank
        traceback.print_exc(file=sys.stderr)
        comm.abort(1)
        return 1
    ok = _run(spec, reporter, control, comm)
    if conn is not None:
        conn.close()
    if not ok and comm.size > 1:
        # The other ranks may be waiting in a collective this rank will never join.
        comm.abort(1)
    return 0 if ok else 1


def _handle_signals(control) -> None:
    # Ctrl-C in a terminal reaches the whole process group; the manager decides what happens
    # to jobs, so the worker ignores SIGINT. A SIGTERM sent to the worker itself (systemd
    # stopping the whole group, say) asks for the same clean stop as a server shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: _set(control, INTERRUPT))


def _run(spec: WorkerSpec, reporter: _Reporter, control, comm=None) -> bool:
    """Train, turning any failure into the job's ``failed`` message. True if the job ended
    normally (succeeded, cancelled or interrupted)."""
    try:
        _train(spec, reporter, control, comm)
        return True
    except ParentGone:
        return False
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's reason
        traceback.print_exc(file=sys.stderr)
        try:
            reporter.send("failed", reason=_describe(exc))
        except ParentGone:
            pass
        return False


def _read_job_inputs(spec: WorkerSpec, store):
    """The corpus text and, when resuming, the checkpoint (with its training state)."""
    text = Path(spec.corpus_path).read_text(encoding="utf-8")
    checkpoint = None
    if spec.resume_from_version:
        checkpoint = store.load(spec.model, spec.resume_from_version, with_training_state=True)
        if checkpoint.training_state is None:
            raise _JobError(f"version {spec.resume_from_version} of {spec.model!r} has no training "
                            "state to resume from")
    return text, checkpoint


def _train(spec: WorkerSpec, reporter: _Reporter, control, comm=None) -> None:
    # Imported here so that the manager can import this module (for `main`) cheaply.
    from charlstm.engine import CharLSTM, ModelConfig, Trainer, TrainerState, Vocab
    from charlstm.engine.distributed import LocalCommunicator
    from charlstm.service.hyperparameters import ResolvedHyperparameters
    from charlstm.service.store import TrainingState, open_store

    comm = LocalCommunicator() if comm is None else comm
    hp = ResolvedHyperparameters.from_dict(spec.hyperparameters)
    store = open_store(spec.store_location, spec.store_settings) if comm.rank == 0 else None
    # Rank 0 reads (the files are the server's); every rank gets the same copy.
    text, checkpoint = comm.bcast(_read_job_inputs(spec, store) if comm.rank == 0 else None)

    if checkpoint is not None:
        vocab = Vocab(checkpoint.metadata["vocab"])
        config = ModelConfig.from_dict(checkpoint.metadata["model_config"])
        model = CharLSTM.from_state_dict(config, checkpoint.tensors)
        trainer = Trainer(model, vocab, text, hp.train, comm=comm)
        state = checkpoint.training_state
        # Continues exactly where the capture was taken (step, optimiser, data position, RNG).
        trainer.restore(TrainerState(tensors=state.tensors, meta=state.meta))
        last_version = spec.resume_from_version
    else:
        vocab = Vocab.from_text(text)
        model = CharLSTM(hp.model_config(vocab.size), seed=hp.train.seed)
        trainer = Trainer(model, vocab, text, hp.train, comm=comm)
        last_version = 0
    saved_step = trainer.step if spec.resume_from_version else -1
    rank_pids = comm.allgather(os.getpid())
    reporter.send("started", step=int(trainer.step), total_steps=int(trainer.total_steps),
                  pid=os.getpid(), rank_pids=rank_pids)

    latest_val: float | None = trainer.last_val_loss
    latest_train: float | None = None
    step_val: float | None = None  # validation loss measured at the latest step, if it ran

    def save() -> int:
        # Every rank computes the checkpoint (validation and capture are collective); rank 0
        # writes it.
        val = step_val if step_val is not None else trainer.evaluate()
        metadata = {
            "model_config": trainer.model.config.to_dict(),
            "vocab": vocab.chars,
            "train_config": hp.train.to_dict(),
            "metrics": {
                "step": int(trainer.step),
                "train_loss": latest_train,
                "val_loss": None if val is None else float(val),
                # The checkpoint's own measurement may beat every scheduled validation.
                "best_val_loss": _opt_float(min((x for x in (trainer.best_val_loss, val)
                                                 if x is not None), default=None)),
            },
            "val_curve": [list(point) for point in trainer.val_curve],
            "corpus": {"sha256": spec.corpus_id, "characters": spec.corpus_characters},
            "job_id": spec.job_id,
            "checkpoint_every": hp.checkpoint_every,
        }
        captured = trainer.capture()
        if comm.rank != 0:
            return 0
        version = store.save(
            spec.model,
            trainer.model.state_dict(),  # the latest parameters, not the best ones
            metadata,
            TrainingState(tensors=captured.tensors, meta=captured.meta),
        )
        reporter.send("checkpoint", version=int(version), step=int(trainer.step),
                      val_loss=None if val is None else float(val))
        return version

    def should_stop() -> bool:
        return _get(control) != RUN or not reporter.parent_alive()

    for p in trainer.run(should_stop=should_stop):
        latest_train = float(p.train_loss)
        step_val = None if p.val_loss is None else float(p.val_loss)
        if step_val is not None:
            latest_val = step_val
        last_step = p.step >= p.total_steps
        reporter.progress(p, latest_val, force=step_val is not None or last_step or p.step == 1)
        if hp.checkpoint_every and p.step % hp.checkpoint_every == 0 and not last_step:
            last_version, saved_step = save(), p.step

    # How the run ended, as rank 0 sees it (every rank must take the same branch below).
    outcome, parent_alive = comm.bcast((_get(control), reporter.parent_alive()))
    if not parent_alive:
        raise ParentGone()
    reporter.flush()  # the job's record keeps the step it stopped at
    if trainer.step >= trainer.total_steps:
        if saved_step != trainer.step:
            last_version = save()
        reporter.send("succeeded", version=int(last_version), final_train_loss=latest_train)
    elif outcome == CANCEL:
        reporter.send("cancelled", last_version=int(last_version))
    else:  # INTERRUPT: keep what was learnt since the last checkpoint
        if saved_step != trainer.step and trainer.step > 0:
            last_version = save()
        reporter.send("interrupted", last_version=int(last_version))


class _JobError(Exception):
    """A failure whose message is meant for the client as it is."""


def _describe(exc: BaseException) -> str:
    from charlstm.engine import ConfigError
    from charlstm.service.store import StoreError, StoreWriteError

    if isinstance(exc, _JobError):
        return str(exc)
    if isinstance(exc, ConfigError):
        return f"invalid training setup: {exc}"
    if isinstance(exc, StoreWriteError):
        return f"writing a checkpoint failed: {exc}"
    if isinstance(exc, StoreError):
        return f"checkpoint store error: {exc}"
    if isinstance(exc, MemoryError):
        return "the training worker ran out of memory"
    return f"training failed: {type(exc).__name__}: {exc}"


def _get(control) -> int:
    return int(control.value)


def _set(control, value: int) -> None:
    control.value = value


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


if __name__ == "__main__":  # under mpirun: see rank_main
    raise SystemExit(rank_main())
