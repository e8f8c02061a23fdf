"""Training jobs: a queue, one worker process per running job, events, records, resume.

:class:`JobManager` is the core behind the training RPCs; it knows nothing of gRPC.

- **Process model.** Each running job is a process started with ``multiprocessing``'s
  ``spawn`` context (never ``fork``: the server runs gRPC threads) running
  :func:`training_worker.main`. At most ``max_jobs`` run at once; the others wait QUEUED and
  start oldest first. A reader thread per job receives the worker's messages over a one-way
  Pipe; a worker that exits without a final message (crash, ``kill -9``, out of memory) makes
  the job FAILED with the exit code or signal, and the server carries on.
- **Data-parallel jobs.** With ``train_ranks`` > 1 the worker is ``mpirun -np train_ranks``
  instead (:mod:`.mpi_launcher`): its rank 0 speaks the same protocol over a socket, and
  cancelling, draining and killing reach every rank.
- **Events.** Every change is published as a :class:`JobEvent` to the job's subscribers
  (Train and WatchJob calls). A new subscriber first gets a replay built from the job's
  record -- accepted, the checkpoints, the latest progress, the final event -- and then the
  live events, until the job ends.
- **Records.** Each job is a JSON file ``<state_dir>/<job id>.json`` replaced atomically on
  every state change and checkpoint (and at most every few seconds for progress), so GetJob
  and ListJobs answer across restarts.
- **Shutdown and resume.** :meth:`JobManager.shutdown` asks running workers to write a
  checkpoint with their training state and stop; those jobs become INTERRUPTED and are
  resumed from that checkpoint by the next :meth:`JobManager.start` on the same store (queued
  jobs stay queued). Jobs found RUNNING at start-up belong to a server that died without
  shutting down: they become FAILED, resumable from their last checkpoint with
  ``Train(resume_from_version=N)``.
- **One manager per store.** An exclusive lock on ``<state_dir>/.lock`` keeps two servers on
  one local store from running the same job twice; a server that does not get the lock
  serves the job records read-only and refuses new jobs. Replicas sharing a store
  (``--shared-store``, or an object store) use :mod:`.shared_jobs` instead: records and
  corpora in the store's records, and a lease per running job.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import fcntl
import json
import logging
import multiprocessing
import os
import re
import secrets
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import errors, mpi_launcher, training_worker
from .corpora import CorpusStore, atomic_write_bytes
from .hyperparameters import ResolvedHyperparameters
from .logs import log_event

log = logging.getLogger("charlstm.jobs")

_JOB_ID = re.compile(r"job-[0-9a-f]{12}")
RECORD_FORMAT = 1
PROGRESS_PERSIST_INTERVAL = 5.0  # seconds between record writes for progress alone
MAX_RECORDED_CHECKPOINTS = 200  # per job record; the best one is kept separately
WORKER_EXIT_TIMEOUT = 30.0  # after its final message, how long a worker may take to exit


class JobState(str, enum.Enum):
    """Lifecycle of a job (the ``JobState`` enum of the .proto)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # stopped by a shutdown after a checkpoint; resumed on next start

    @property
    def ended(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    """A job's record: what the RPCs report and what is persisted."""

    id: str
    model: str
    hyperparameters: ResolvedHyperparameters
    corpus_id: str
    corpus_characters: int
    created: float
    state: JobState = JobState.QUEUED
    started: float | None = None
    finished: float | None = None
    progress: dict | None = None  # the worker's latest progress message
    progress_time: float | None = None
    last_version: int = 0  # the latest version this job saved
    error: str = ""
    resumable: bool = False  # for FAILED: can be resumed from resume_point
    resume_from: int = 0  # the version the next run starts from (0: a fresh start)
    resumed_from_version: int = 0  # the version the current, last or next run starts from
    checkpoints: list[dict] = field(default_factory=list)  # {version, step, val_loss, time}
    best_version: int = 0
    best_val_loss: float | None = None
    outcome: dict | None = None  # the final event's fields
    worker_pid: int | None = None
    replica: str = ""  # with replicas sharing a store: the one that runs or last ran the job

    @property
    def resume_point(self) -> int:
        """The version a resume would start from (0: none)."""
        return self.last_version or self.resume_from

    def snapshot(self) -> "Job":
        """A copy safe to hand out of the manager's lock."""
        return copy.deepcopy(self)

    def to_record(self) -> dict:
        d = dataclasses.asdict(self)
        d["hyperparameters"] = self.hyperparameters.to_dict()
        d["state"] = self.state.value
        d["format"] = RECORD_FORMAT
        return d

    @classmethod
    def from_record(cls, d: dict) -> "Job":
        d = dict(d)
        d.pop("format", None)
        d["hyperparameters"] = ResolvedHyperparameters.from_dict(d["hyperparameters"])
        d["state"] = JobState(d["state"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class JobEvent:
    """One event of a job, as streamed by Train and WatchJob.

    ``kind`` is accepted (``data["job"]`` is a :class:`Job`), progress (the worker's progress
    fields, ``val_loss`` the latest measured), checkpoint (version, step, val_loss), succeeded
    (version, best_version, best_val_loss, final_train_loss), failed (reason, resumable,
    last_version), cancelled (last_version), or interrupted (last_version: the server is
    shutting down; the job resumes on its next start).
    """

    job_id: str
    kind: str
    time: float
    data: dict

    @property
    def is_last(self) -> bool:
        """True for the event that ends a subscription."""
        return self.kind in ("succeeded", "failed", "cancelled", "interrupted")


class Subscription:
    """The events of one job for one reader: a replay, then live events, then the end.

    Iterate it to receive events; iteration ends after the final event or :meth:`close`
    (call it when the reader goes away, e.g. from a gRPC ``add_callback``). A reader that falls
    behind loses intermediate progress events, never the others: pending progress events are
    coalesced into the latest one, so memory stays bounded however slow the reader.
    """

    def __init__(self, job_id: str, manager: "JobManager"):
        self.job_id = job_id
        self._manager = manager
        self._cond = threading.Condition()
        self._pending: deque[JobEvent] = deque()
        self._closed = False

    def push(self, event: JobEvent) -> None:
        with self._cond:
            if self._closed:
                return
            if event.kind == "progress" and self._pending and self._pending[-1].kind == "progress":
                self._pending[-1] = event
            else:
                self._pending.append(event)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the iteration (idempotent) and detach from the manager."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
        # Outside our condition: the manager pushes while holding its lock, so taking its lock
        # while holding ours could deadlock.
        self._manager._unsubscribe(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> Iterator[JobEvent]:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    event = self._pending.popleft()
                yield event
                if event.is_last:
                    return
        finally:
            self.close()


@dataclass
class _Run:
    """A job's worker process and the thread that follows it."""

    job_id: str
    control: Any  # multiprocessing Value('i'): training_worker.RUN / CANCEL / INTERRUPT
    process: Any = None
    thread: threading.Thread | None = None
    final: str | None = None  # kind of the final message received, if any
    last_step: int = 0


class JobManager:
    """Runs training jobs in worker processes and keeps their records (see the module doc)."""

    def __init__(
        self,
        store,
        corpora: CorpusStore,
        *,
        state_dir: Path,
        max_jobs: int,
        metrics=None,
        store_location: str | None = None,
        max_queued: int = 100,
        train_ranks: int = 1,
    ):
        self.store = store
        self.corpora = corpora
        self.state_dir = Path(state_dir)
        self.max_jobs = max(1, int(max_jobs))
        self.max_queued = int(max_queued)
        self.metrics = metrics
        self.train_ranks = max(1, int(train_ranks))
        if self.train_ranks > 1:
            mpi_launcher.mpirun_command(self.train_ranks)  # at start-up: mpirun and mpi4py exist
        # The worker opens its own store from this location (the store object stays here).
        self.store_location = store_location or str(
            getattr(store, "location", None) or getattr(store, "root")
        )
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # any job changed state / slot freed
        self._jobs: dict[str, Job] = {}
        self._runs: dict[str, _Run] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._last_persist: dict[str, float] = {}
        self._scheduler: threading.Thread | None = None
        self._lock_file: int | None = None
        self._read_only = False
        self.on_checkpoint: Callable[[str], None] | None = None  # called with the model name
        self._started = False
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load the job records, recover jobs left by the previous server, start scheduling."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._read_only = not self._take_lock()
            for job in self._load_records():
                self._jobs[job.id] = job
            if not self._read_only:
                self._recover()
            self._update_job_gauges()
            if self._read_only:
                return
            self._scheduler = threading.Thread(
                target=self._schedule_loop, name="charlstm-job-scheduler", daemon=True
            )
            self._scheduler.start()

    def shutdown(self, grace_seconds: float) -> None:
        """Stop every running job with a checkpoint (INTERRUPTED, resumed on the next start).

        Workers get ``grace_seconds`` to write their checkpoint; one that takes longer is killed
        and its job resumes from its previous checkpoint (or from scratch if it had none).
        Queued jobs stay queued. Subscribers receive ``interrupted`` and are closed.
        """
        deadline = time.monotonic() + max(0.0, float(grace_seconds))
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._changed.notify_all()
        if self._scheduler is not None:
            self._scheduler.join()  # it may be starting a worker; afterwards no new one starts
        with self._lock:
            runs = list(self._runs.values())
            for run in runs:
                run.control.value = training_worker.INTERRUPT
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
        for run in runs:
            if run.process is not None and run.process.is_alive():
                log_event(log, "job_worker_killed_at_shutdown", logging.WARNING, job_id=run.job_id)
                run.process.kill()
            if run.thread is not None:
                run.thread.join(10.0)
        with self._lock:
            # Whoever still follows a job (a queued one, say) hears that the server is going.
            for job_id in list(self._subscribers):
                self._publish(self._jobs[job_id], "interrupted",
                              last_version=self._jobs[job_id].resume_point)
            self._release_lock()
            log_event(log, "jobs_shutdown", interrupted=sum(
                1 for j in self._jobs.values() if j.state == JobState.INTERRUPTED))

    # -- the API of the RPCs ----------------------------------------------------------------

    def submit(
        self,
        *,
        model: str,
        corpus_id: str,
        corpus_characters: int,
        hyperparameters: ResolvedHyperparameters,
        resume_from_version: int = 0,
    ) -> Job:
        """Queue a new job and return it (its ``accepted`` event is its first)."""
        with self._lock:
            if self._read_only:
                raise errors.Unavailable(
                    "training is disabled on this server: another server process manages the "
                    f"jobs of this store ({self.state_dir})"
                )
            if self._stopping or not self._started:
                raise errors.Unavailable("the server is shutting down; no new jobs are accepted")
            queued = sum(1 for j in self._jobs.values() if j.state == JobState.QUEUED)
            if queued >= self.max_queued:
                raise errors.ResourceExhausted(
                    f"too many queued training jobs ({queued}; the limit is {self.max_queued}); "
                    "wait for some to finish or cancel them"
                )
            job = Job(
                id=f"job-{secrets.token_hex(6)}",
                model=model,
                hyperparameters=hyperparameters,
                corpus_id=corpus_id,
                corpus_characters=int(corpus_characters),
                created=time.time(),
                resume_from=int(resume_from_version),
                resumed_from_version=int(resume_from_version),
            )
            self._jobs[job.id] = job
            self._persist(job)
            self._update_job_gauges()
            log_event(log, "job_queued", job_id=job.id, model=model, corpus_id=corpus_id,
                      resume_from_version=job.resume_from)
            self._changed.notify_all()
            return job.snapshot()

    def get(self, job_id: str) -> Job:
        """The job (a copy); NotFound if there is none with this id."""
        with self._lock:
            return self._job(job_id).snapshot()

    def list(self, model: str | None = None) -> list[Job]:
        """Jobs, newest first; only those of ``model`` when given."""
        with self._lock:
            jobs = [j.snapshot() for j in self._jobs.values() if not model or j.model == model]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def cancel(self, job_id: str, *, wait_seconds: float = 10.0) -> Job:
        """Cancel a queued, interrupted or running job and return it.

        A running worker stops between two steps; this waits up to ``wait_seconds`` for it, so
        the job returned is normally CANCELLED. FailedPrecondition if the job already ended.
        """
        with self._lock:
            job = self._job(job_id)
            if job.state.ended:
                raise errors.FailedPrecondition(
                    f"job {job_id} has already ended ({job.state.value}); only queued or running "
                    "jobs can be cancelled"
                )
            run = self._runs.get(job_id)
            if run is None:  # queued or interrupted: nothing is running
                self._finish(job, JobState.CANCELLED, "cancelled", last_version=job.last_version)
                return job.snapshot()
            run.control.value = training_worker.CANCEL
            log_event(log, "job_cancel_requested", job_id=job_id)
            deadline = time.monotonic() + wait_seconds
            while not job.state.ended and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            return job.snapshot()

    def subscribe(self, job_id: str) -> Subscription:
        """Follow a job: the replay of its events so far, then live events until it ends."""
        with self._lock:
            job = self._job(job_id)
            sub = Subscription(job_id, self)
            for event in self._replay(job):
                sub.push(event)
            if not self._stopping and not job.state.ended and job.state != JobState.INTERRUPTED:
                self._subscribers.setdefault(job_id, set()).add(sub)
            return sub

    def watch(self, job_id: str) -> Iterator[JobEvent]:
        """Iterate a job's events (see :meth:`subscribe`)."""
        return iter(self.subscribe(job_id))

    def running_count(self) -> int:
        with self._lock:
            return len(self._runs)

    # -- scheduling -------------------------------------------------------------------------

    def _schedule_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._next_to_start():
                    self._changed.wait(1.0)
                if self._stopping:
                    return
                job = self._next_to_start()
                if not self._claim(job):
                    continue
                try:
                    spec = self._worker_spec(job)
                except errors.ServiceError as exc:  # its corpus has gone from the store
                    self._fail(job, exc.message)
                    self._run_ended(job)
                    continue
                control = (mpi_launcher.RemoteControl(training_worker.RUN) if self.train_ranks > 1
                           else self._ctx.Value("i", training_worker.RUN))
                run = _Run(job.id, control)
                self._runs[job.id] = run
                job.state = JobState.RUNNING
                job.started = time.time()
                job.resumed_from_version = job.resume_from
                job.worker_pid = None
                self._persist(job)
                self._update_job_gauges()
                self._changed.notify_all()
            # Outside the lock: starting a process takes a while and RPCs must not wait on it.
            self._launch(run, spec)

    def _claim(self, job: Job) -> bool:
        """Make ``job`` this process's to run (lock held); False if another process has it.
        One manager per store needs no claim (see ``shared_jobs`` for replicas)."""
        return True

    def _run_ended(self, job: Job) -> None:
        """A run of ``job`` here is over, its record written (lock held)."""

    def _next_to_start(self) -> Job | None:
        if len(self._runs) >= self.max_jobs:
            return None
        queued = [j for j in self._jobs.values() if j.state == JobState.QUEUED]
        return min(queued, key=lambda j: j.created) if queued else None

    def _worker_spec(self, job: Job) -> training_worker.WorkerSpec:
        return training_worker.WorkerSpec(
            job_id=job.id,
            model=job.model,
            store_location=self.store_location,
            corpus_path=str(self.corpora.path(job.corpus_id)),
            corpus_id=job.corpus_id,
            corpus_characters=job.corpus_characters,
            hyperparameters=job.hyperparameters.to_dict(),
            resume_from_version=job.resume_from,
            parent_pid=os.getpid(),
            store_settings=getattr(self.store, "settings", None),
        )

    def _launch(self, run: _Run, spec: training_worker.WorkerSpec) -> None:
        """Start the worker process and the thread that follows it (scheduler thread)."""
        sender = None
        try:
            if self.train_ranks > 1:
                # mpirun: the process and, once rank 0 has connected, the receiving end.
                process = receiver = mpi_launcher.MpiWorker(spec, self.train_ranks, run.control)
            else:
                receiver, sender = self._ctx.Pipe(duplex=False)
                process = self._ctx.Process(
                    target=training_worker.main,
                    args=(spec, sender, run.control),
                    name=f"charlstm-train-{run.job_id}",
                    daemon=True,  # never outlive the server's interpreter
                )
            process.start()
        except Exception as exc:  # noqa: BLE001 - out of processes, memory, descriptors...
            log.error("could not start the worker of job %s", run.job_id, exc_info=True)
            with self._lock:
                del self._runs[run.job_id]
                self._fail(self._jobs[run.job_id], f"could not start a training worker: {exc}")
                self._run_ended(self._jobs[run.job_id])
                self._changed.notify_all()
            return
        # Our copy of the sending end must go, so that the reader sees EOF when the worker dies.
        if sender is not None:
            sender.close()
        run.process = process
        run.thread = threading.Thread(
            target=self._follow, args=(run, receiver), name=f"charlstm-job-{run.job_id}", daemon=True
        )
        run.thread.start()
        log_event(log, "job_started", job_id=run.job_id, pid=process.pid,
                  resume_from_version=spec.resume_from_version)

    def _follow(self, run: _Run, receiver) -> None:
        """Reader thread: apply the worker's messages until it exits, then settle the job."""
        try:
            while True:
                try:
                    kind, data = receiver.recv()
                except (EOFError, OSError):
                    break
                except Exception:  # noqa: BLE001 - a message cut short by a dying worker
                    log.warning("unreadable message from training worker", exc_info=True)
                    break
                with self._lock:
                    self._on_message(run, kind, data)
        finally:
            receiver.close()
        run.process.join(WORKER_EXIT_TIMEOUT if run.final else 5.0)
        if run.process.is_alive():  # sent its final message but hangs, or closed the pipe
            run.process.kill()
            run.process.join()
        exitcode = run.process.exitcode
        with self._lock:
            job = self._jobs[run.job_id]
            if run.final is None:
                self._on_worker_lost(job, exitcode)
            del self._runs[run.job_id]
            self._run_ended(job)
            self._clear_job_metrics(job.id)
            self._update_job_gauges()
            self._changed.notify_all()

    # -- worker messages (called with the lock held) ------------------------------------------

    def _on_message(self, run: _Run, kind: str, data: dict) -> None:
        job = self._jobs[run.job_id]
        now = time.time()
        if kind == "started":
            job.worker_pid = data.get("pid")
            run.last_step = int(data.get("step", 0))
            self._persist(job)
        elif kind == "progress":
            self._record_progress(run, job, data, now)
        elif kind == "checkpoint":
            self._record_checkpoint(job, data, now)
        elif kind == "succeeded":
            run.final = kind
            job.last_version = int(data["version"]) or job.last_version
            self._finish(job, JobState.SUCCEEDED, "succeeded",
                         version=job.last_version, best_version=job.best_version,
                         best_val_loss=job.best_val_loss,
                         final_train_loss=data.get("final_train_loss"))
        elif kind == "failed":
            run.final = kind
            self._fail(job, str(data.get("reason", "training failed")))
        elif kind == "cancelled":
            run.final = kind
            self._finish(job, JobState.CANCELLED, "cancelled", last_version=job.last_version)
        elif kind == "interrupted":
            run.final = kind
            self._interrupt(job)
        else:
            log.warning("unknown message %r from training worker of %s", kind, job.id)

    def _record_progress(self, run: _Run, job: Job, data: dict, now: float) -> None:
        step = int(data["step"])
        if self.metrics is not None:
            if step > run.last_step:
                self.metrics.training_steps_total.inc(step - run.last_step)
            self.metrics.training_chars_per_second.labels(job=job.id).set(data["chars_per_second"])
            self.metrics.training_loss.labels(job=job.id, split="train").set(data["train_loss"])
            if data.get("val_loss") is not None:
                self.metrics.training_loss.labels(job=job.id, split="val").set(data["val_loss"])
        run.last_step = max(run.last_step, step)
        job.progress, job.progress_time = data, now
        if now - self._last_persist.get(job.id, 0.0) >= PROGRESS_PERSIST_INTERVAL:
            self._persist(job)
        self._publish(job, "progress", **data)

    def _record_checkpoint(self, job: Job, data: dict, now: float) -> None:
        version, val_loss = int(data["version"]), data.get("val_loss")
        job.last_version = version
        entry = {"version": version, "step": int(data["step"]), "val_loss": val_loss, "time": now}
        job.checkpoints.append(entry)
        del job.checkpoints[:-MAX_RECORDED_CHECKPOINTS]
        if val_loss is not None and (job.best_val_loss is None or val_loss < job.best_val_loss):
            job.best_version, job.best_val_loss = version, float(val_loss)
        self._persist(job)
        if self.on_checkpoint is not None:
            self.on_checkpoint(job.model)
        log_event(log, "job_checkpoint", job_id=job.id, model=job.model, version=version,
                  step=entry["step"])
        self._publish(job, "checkpoint", version=version, step=entry["step"], val_loss=val_loss)

    def _on_worker_lost(self, job: Job, exitcode: int | None) -> None:
        """The worker exited without a final message."""
        how = _describe_exit(exitcode)
        if self._stopping:
            # Killed after the grace period: resume from the previous checkpoint, if any.
            log_event(log, "job_worker_lost_at_shutdown", logging.WARNING, job_id=job.id, exit=how)
            self._interrupt(job)
            return
        log_event(log, "job_worker_lost", logging.ERROR, job_id=job.id, exit=how)
        self._fail(job, f"the training worker exited unexpectedly ({how})")

    def _interrupt(self, job: Job) -> None:
        job.resume_from = job.resume_point
        job.worker_pid = None
        if not self._stopping:
            # The worker was stopped from outside (a SIGTERM of its own): carry on from its
            # checkpoint rather than leave the job waiting for a restart.
            job.state = JobState.QUEUED
            self._persist(job)
            log_event(log, "job_requeued", job_id=job.id, resume_from_version=job.resume_from)
            return
        # Nothing saved yet: the job simply starts again next time.
        job.state = JobState.INTERRUPTED if job.resume_from else JobState.QUEUED
        self._persist(job)
        log_event(log, "job_interrupted", job_id=job.id, resume_from_version=job.resume_from)
        self._publish(job, "interrupted", last_version=job.resume_from)

    def _fail(self, job: Job, reason: str) -> None:
        point = job.resume_point
        job.resumable = point > 0
        if job.resumable:
            reason += f"; resume from version {point}"
        self._finish(job, JobState.FAILED, "failed", reason=reason, resumable=job.resumable,
                     last_version=point)

    def _finish(self, job: Job, state: JobState, kind: str, **outcome: Any) -> None:
        job.state = state
        job.finished = time.time()
        job.worker_pid = None
        if state == JobState.FAILED:
            job.error = outcome["reason"]
        job.outcome = {"kind": kind, **outcome}
        self._persist(job)
        self._update_job_gauges()
        log_event(log, f"job_{kind}", logging.WARNING if state == JobState.FAILED else logging.INFO,
                  job_id=job.id, model=job.model, **outcome)
        self._publish(job, kind, **outcome)
        self._changed.notify_all()

    # -- events -----------------------------------------------------------------------------

    def _publish(self, job: Job, kind: str, **data: Any) -> None:
        event = JobEvent(job.id, kind, time.time(), data)
        for sub in list(self._subscribers.get(job.id, ())):
            sub.push(event)
        if event.is_last:
            self._subscribers.pop(job.id, None)

    def _replay(self, job: Job) -> list[JobEvent]:
        events = [JobEvent(job.id, "accepted", job.created, {"job": job.snapshot()})]
        for c in job.checkpoints:
            events.append(JobEvent(job.id, "checkpoint", c["time"],
                                   {k: c[k] for k in ("version", "step", "val_loss")}))
        if job.progress is not None:
            events.append(JobEvent(job.id, "progress", job.progress_time or job.created,
                                   dict(job.progress)))
        if job.state.ended and job.outcome is not None:
            data = {k: v for k, v in job.outcome.items() if k != "kind"}
            events.append(JobEvent(job.id, job.outcome["kind"], job.finished or time.time(), data))
        elif job.state == JobState.INTERRUPTED or self._stopping:
            events.append(JobEvent(job.id, "interrupted", time.time(),
                                   {"last_version": job.resume_point}))
        return events

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subscribers.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[sub.job_id]

    def subscriber_count(self) -> int:
        """Open subscriptions (for tests and metrics: they must not leak)."""
        with self._lock:
            return sum(len(s) for s in self._subscribers.values())

    # -- records ----------------------------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        if not job_id:
            raise errors.InvalidArgument("job_id is required", field="job_id")
        job = self._jobs.get(job_id)
        if job is None:
            raise errors.NotFound(f"job {job_id[:80]!r} not found", field="job_id")
        return job

    def _persist(self, job: Job) -> None:
        if self._read_only:
            return
        self._last_persist[job.id] = time.time()
        try:
            # NaN stays NaN (a diverged loss): Python's json writes and reads it back.
            data = json.dumps(job.to_record(), indent=1).encode()
            atomic_write_bytes(self.state_dir / f"{job.id}.json", data)
        except (OSError, ValueError):
            # The job goes on; its record catches up on the next change.
            log.error("could not write the record of job %s", job.id, exc_info=True)

    def _load_records(self) -> list[Job]:
        jobs = []
        for path in sorted(self.state_dir.glob("job-*.json")):
            if not _JOB_ID.fullmatch(path.stem):
                continue
            try:
                jobs.append(Job.from_record(json.loads(path.read_text())))
            except Exception:  # noqa: BLE001 - one bad record must not stop the server
                log.error("ignoring unreadable job record %s", path, exc_info=True)
        return jobs

    def _recover(self) -> None:
        """Settle the jobs a previous server left unfinished (called at start, lock held)."""
        for job in self._jobs.values():
            if job.state == JobState.RUNNING:
                # The previous server died while this job ran (its worker stops by itself when
                # it notices its parent has gone). Running it again automatically could repeat
                # whatever killed the server, so it is reported, resumable.
                job.last_version = max(job.last_version, self._latest_job_version(job))
                self._fail(job, "server stopped unexpectedly")
            elif job.state == JobState.INTERRUPTED:
                job.state = JobState.QUEUED
                job.resume_from = job.resumed_from_version = job.resume_point
                self._persist(job)
                log_event(log, "job_resuming", job_id=job.id, resume_from_version=job.resume_from)

    def _latest_job_version(self, job: Job) -> int:
        """The newest stored version written by ``job`` (a checkpoint its record missed)."""
        try:
            versions = self.store.list_versions(job.model)
        except Exception:  # noqa: BLE001 - no such model yet, or an unreadable store
            return 0
        mine = [v.version for v in versions if v.metadata.get("job_id") == job.id and v.resumable]
        return max(mine, default=0)

    def _take_lock(self) -> bool:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log_event(log, "jobs_read_only", logging.WARNING, state_dir=str(self.state_dir),
                      reason="another server process holds the job lock")
            return False
        self._lock_file = fd
        return True

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            os.close(self._lock_file)  # closing the descriptor releases the flock
            self._lock_file = None

    # -- metrics ----------------------------------------------------------------------------

    def _update_job_gauges(self) -> None:
        if self.metrics is None:
            return
        counts = {state: 0 for state in JobState}
        for job in self._jobs.values():
            counts[job.state] += 1
        for state, n in counts.items():
            self.metrics.jobs.labels(state=state.value).set(n)

    def _clear_job_metrics(self, job_id: str) -> None:
        if self.metrics is None:
            return
        for gauge, labels in ((self.metrics.training_chars_per_second, (job_id,)),
                              (self.metrics.training_loss, (job_id, "train")),
                              (self.metrics.training_loss, (job_id, "val"))):
            try:
                gauge.remove(*labels)
            except KeyError:
                pass


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"
