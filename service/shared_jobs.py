"""Training jobs and corpora shared by replicas on one store (``--shared-store``, or any object
store): every replica lists and watches the same jobs, and each job runs on exactly one.

Everything lives in the store's records (``CheckpointStore.get_record``/``put_record``, with
create-only and compare-and-swap writes), so nothing but the store is shared::

    jobs/<job id>               the job's record (the JSON of ``jobs.Job``), as on one server
    leases/<job id>             {"owner": replica, "renewals": n}: who runs the job
    cancel-requests/<job id>    a CancelJob received by a replica that does not run the job
    corpora/<sha256>.txt        uploaded and inline corpora (cached on each replica's disk)

The protocol:

- **Claim.** A replica starts a queued job only after creating its lease with a create-only
  write; of two replicas racing for one job, one write fails and that replica leaves the job
  alone. The winner then re-reads the job's record (it may have ended, or been re-queued with
  a resume point, since this replica last looked) and runs it.
- **Renew.** The owner rewrites the lease every third of ``--lease-seconds`` with
  compare-and-swap on its etag. If that write fails, the lease was taken over (this replica was
  presumed dead): the worker is stopped and the replica writes nothing more about the job.
- **Expiry.** Every replica watches the leases of jobs it does not run. One whose etag has not
  changed for ``--lease-seconds`` *by the watcher's own clock* has expired (no clock is compared
  across machines). The first replica to take it over (compare-and-swap on that etag) reports
  the job FAILED, resumable from its last checkpoint, exactly as one server reports a job its
  crashed predecessor left running; the job is never started twice at once.
- **Release.** The owner writes the final record, then deletes the lease. A replica shutting
  down gracefully checkpoints its jobs and re-queues them, with their resume point, for another
  replica to continue (a rolling update loses no training).
- **Follow.** Each replica re-reads the records of unfinished jobs it does not run every
  ``sync_seconds`` and turns what changed into events (checkpoints, progress, the outcome), so
  Train and WatchJob streams work on any replica. Progress from another replica arrives at the
  rate its owner writes records (every few seconds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import errors, training_worker
from .corpora import CorpusInfo, CorpusStore, atomic_write_bytes, check_corpus_id
from .jobs import Job, JobManager, JobState
from .logs import log_event
from .store import RecordConflict, StoreError

log = logging.getLogger("charlstm.jobs")

JOBS = "jobs/"
LEASES = "leases/"
CANCELS = "cancel-requests/"
CORPORA = "corpora/"


@dataclass
class _Lease:
    """A lease this replica holds."""

    etag: str
    renewals: int
    next_renewal: float  # monotonic


class SharedJobManager(JobManager):
    """A :class:`JobManager` whose records, leases and corpora are in the store's records."""

    def __init__(
        self,
        store,
        corpora: CorpusStore,
        *,
        replica_id: str,
        lease_seconds: float,
        sync_seconds: float,
        max_jobs: int,
        metrics=None,
        store_location: str | None = None,
        max_queued: int = 100,
        train_ranks: int = 1,
    ):
        super().__init__(store, corpora, state_dir=Path("."), max_jobs=max_jobs, metrics=metrics,
                         store_location=store_location, max_queued=max_queued,
                         train_ranks=train_ranks)
        self.replica_id = replica_id
        self.lease_seconds = float(lease_seconds)
        self._renew_every = self.lease_seconds / 3
        self._tick = max(0.05, min(float(sync_seconds) or self._renew_every, self._renew_every))
        self._leases: dict[str, _Lease] = {}  # the jobs this replica holds a lease on
        self._etags: dict[str, str] = {}  # job id -> etag of the record as last read or written
        self._observed: dict[str, tuple[str | None, float]] = {}  # others' leases: etag, since
        self._skip_until: dict[str, float] = {}  # jobs another replica has just claimed
        self._lost: set[str] = set()  # jobs whose lease was taken from us: write nothing more
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        if self._sync_thread is None:
            self._sync_thread = threading.Thread(target=self._sync_loop, name="charlstm-job-sync",
                                                 daemon=True)
            self._sync_thread.start()

    def shutdown(self, grace_seconds: float) -> None:
        super().shutdown(grace_seconds)
        self._sync_stop.set()
        if self._sync_thread is not None:
            self._sync_thread.join(10.0)

    def _take_lock(self) -> bool:
        return True  # leases, not a lock file, keep replicas from running a job twice

    def _release_lock(self) -> None:
        pass

    def _recover(self) -> None:
        """Jobs interrupted by a replica's shutdown are queued again; running ones are left to
        their owner's lease (they fail only if it expires)."""
        for job in self._jobs.values():
            if job.state == JobState.INTERRUPTED:
                job.state = JobState.QUEUED
                job.resume_from = job.resumed_from_version = job.resume_point
                self._persist(job)

    # -- records -----------------------------------------------------------------------------

    def _persist(self, job: Job) -> None:
        with self._lock:
            if job.id in self._lost:
                return
            self._last_persist[job.id] = time.time()
            # While this replica holds the job's lease, its record changes only by compare-and-
            # swap on the etag this replica last saw: a replica whose lease was taken over
            # between two renewals cannot overwrite the new owner's account of the job.
            held = job.id in self._leases
            try:
                data = json.dumps(job.to_record(), indent=1).encode()
                self._etags[job.id] = self.store.put_record(
                    JOBS + job.id, data, if_match=self._etags.get(job.id) if held else None)
            except RecordConflict:
                self._record_changed_under_us(job, data)
            except (StoreError, OSError, ValueError):
                # The job goes on; its record catches up on the next change.
                log.error("could not write the record of job %s", job.id, exc_info=True)

    def _record_changed_under_us(self, job: Job, data: bytes) -> None:
        """A leased job's record changed behind this replica (lock held): another replica
        took the job over, so stop and write nothing more; or the change is ours after all
        (an S3 write whose answer was lost), so write again on the etag now there."""
        found = self._read(job.id)
        if found is None or found[0].replica != self.replica_id:
            self._lose(job.id)
            return
        try:
            self._etags[job.id] = self.store.put_record(JOBS + job.id, data, if_match=found[1])
        except RecordConflict:
            self._lose(job.id)

    def _job(self, job_id: str) -> Job:
        """As for one server, but a job another replica has just created is read through from
        the store rather than reported missing until the next sync (lock held)."""
        if job_id and job_id not in self._jobs:
            try:
                found = self._read(job_id)
            except Exception:  # noqa: BLE001 - not a valid key, or unreadable: not found here
                found = None
            if found is not None:
                self._apply(*found)
        return super()._job(job_id)

    def _read(self, job_id: str) -> tuple[Job, str] | None:
        record = self.store.get_record(JOBS + job_id)
        if record is None:
            return None
        return Job.from_record(json.loads(record.data)), record.etag

    def _load_records(self) -> list[Job]:
        jobs = []
        for key in self.store.list_records(JOBS):
            try:
                found = self._read(key[len(JOBS):])
            except Exception:  # noqa: BLE001 - one bad record must not stop the server
                log.error("ignoring unreadable job record %s", key, exc_info=True)
                continue
            if found is not None:
                jobs.append(found[0])
                self._etags[found[0].id] = found[1]
        return jobs

    def _apply(self, new: Job, etag: str) -> None:
        """Take another replica's version of a job's record as ours, and tell this replica's
        subscribers what changed (lock held)."""
        old = self._jobs.get(new.id)
        self._jobs[new.id] = new
        self._etags[new.id] = etag
        if old is not None:
            known = {c["version"] for c in old.checkpoints}
            for c in new.checkpoints:
                if c["version"] not in known:
                    self._publish(new, "checkpoint", version=c["version"], step=c["step"],
                                  val_loss=c["val_loss"])
                    if self.on_checkpoint is not None:
                        self.on_checkpoint(new.model)
            if new.progress is not None and new.progress != old.progress:
                self._publish(new, "progress", **new.progress)
            if new.state.ended and not old.state.ended and new.outcome is not None:
                self._publish(new, new.outcome["kind"],
                              **{k: v for k, v in new.outcome.items() if k != "kind"})
        self._update_job_gauges()
        self._changed.notify_all()

    # -- claiming, releasing ------------------------------------------------------------------

    def _lease_body(self, job_id: str, renewals: int) -> bytes:
        return json.dumps({"owner": self.replica_id, "job": job_id, "renewals": renewals,
                           "time": time.time()}).encode()

    def _next_to_start(self) -> Job | None:
        if len(self._runs) >= self.max_jobs:
            return None
        now = time.monotonic()
        queued = [j for j in self._jobs.values()
                  if j.state == JobState.QUEUED and self._skip_until.get(j.id, 0.0) <= now]
        return min(queued, key=lambda j: j.created) if queued else None

    def _claim(self, job: Job) -> bool:
        """Create the job's lease; on success refresh ``job`` from its record (lock held)."""
        try:
            etag = self.store.put_record(LEASES + job.id, self._lease_body(job.id, 0),
                                         if_absent=True)
        except (RecordConflict, StoreError) as exc:
            if not isinstance(exc, RecordConflict):
                log.warning("could not claim job %s: %s", job.id, exc)
            self._skip_until[job.id] = time.monotonic() + self._renew_every
            return False
        try:
            found = self._read(job.id)
        except Exception:  # noqa: BLE001 - unreadable now: leave it for later
            log.warning("could not read the record of job %s", job.id, exc_info=True)
            found = None
            self._skip_until[job.id] = time.monotonic() + self._renew_every
        if found is None or found[0].state not in (JobState.QUEUED, JobState.INTERRUPTED):
            if found is not None:
                self._apply(*found)
            self._delete_lease(job.id, etag)
            return False
        # The record is the truth (a resume point set by a replica that stopped, say).
        for f in dataclasses.fields(Job):
            setattr(job, f.name, getattr(found[0], f.name))
        job.replica = self.replica_id
        self._etags[job.id] = found[1]
        self._leases[job.id] = _Lease(etag, 0, time.monotonic() + self._renew_every)
        log_event(log, "job_claimed", job_id=job.id, replica=self.replica_id)
        return True

    def _run_ended(self, job: Job) -> None:
        lease = self._leases.pop(job.id, None)
        if lease is not None:
            self._delete_lease(job.id, lease.etag)
        try:
            self.store.delete_record(CANCELS + job.id)
        except StoreError:
            pass

    def _delete_lease(self, job_id: str, etag: str) -> None:
        try:
            self.store.delete_record(LEASES + job_id, if_match=etag)
        except StoreError:  # taken over meanwhile, or unreachable: it expires by itself
            log.warning("could not release the lease of job %s", job_id, exc_info=True)

    def _interrupt(self, job: Job) -> None:
        super()._interrupt(job)
        if job.state == JobState.INTERRUPTED:
            # This replica is going away: the job goes back to the queue, with its resume
            # point, for another replica to continue now rather than when this one returns.
            job.state = JobState.QUEUED
            job.replica = ""
            self._persist(job)

    # -- cancelling ----------------------------------------------------------------------------

    def cancel(self, job_id: str, *, wait_seconds: float = 10.0) -> Job:
        with self._lock:
            job = self._job(job_id)
            if job.state.ended or job_id in self._runs:
                return super().cancel(job_id, wait_seconds=wait_seconds)
            if job.state in (JobState.QUEUED, JobState.INTERRUPTED) and self._claim(job):
                # The lease makes it ours: no replica can start it while we cancel it.
                self._finish(job, JobState.CANCELLED, "cancelled", last_version=job.last_version)
                self._run_ended(job)
                return job.snapshot()
            if self._jobs[job_id].state.ended:
                return super().cancel(job_id, wait_seconds=wait_seconds)
        # Running on another replica: ask its owner, which looks at each lease renewal.
        try:
            self.store.put_record(CANCELS + job_id, self.replica_id.encode())
        except StoreError as exc:
            raise errors.Unavailable(f"cannot reach the store to cancel job {job_id}: {exc}")
        log_event(log, "job_cancel_requested", job_id=job_id, owner=job.replica)
        deadline = time.monotonic() + wait_seconds + self.lease_seconds
        with self._lock:
            while not self._jobs[job_id].state.ended and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            return self._jobs[job_id].snapshot()

    # -- the background loop -------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._sync_stop.wait(self._tick):
            for step in (self._renew_leases, self._follow_records, self._expire_leases):
                try:
                    step()
                except Exception:  # noqa: BLE001 - the store may be briefly unreachable
                    log.warning("job sync step %s failed", step.__name__, exc_info=True)

    def _renew_leases(self) -> None:
        now = time.monotonic()
        with self._lock:  # so that a release cannot interleave with a renewal
            for job_id, lease in list(self._leases.items()):
                if now < lease.next_renewal:
                    continue
                try:
                    lease.etag = self.store.put_record(
                        LEASES + job_id, self._lease_body(job_id, lease.renewals + 1),
                        if_match=lease.etag)
                except RecordConflict:
                    self._lose(job_id)
                    continue
                lease.renewals += 1
                lease.next_renewal = now + self._renew_every
                if self.store.list_records(CANCELS + job_id):
                    run = self._runs.get(job_id)
                    if run is not None and run.control.value == training_worker.RUN:
                        log_event(log, "job_cancel_requested", job_id=job_id)
                        run.control.value = training_worker.CANCEL

    def _lose(self, job_id: str) -> None:
        """Another replica took the lease over: stop the worker, write nothing more (lock held)."""
        self._leases.pop(job_id, None)
        self._lost.add(job_id)
        run = self._runs.get(job_id)
        if run is not None:
            run.control.value = training_worker.CANCEL
        log_event(log, "job_lease_lost", logging.ERROR, job_id=job_id, replica=self.replica_id)

    def _follow_records(self) -> None:
        keys = self.store.list_records(JOBS)
        with self._lock:
            wanted = [k[len(JOBS):] for k in keys
                      if (j := self._jobs.get(k[len(JOBS):])) is None
                      or (not j.state.ended and j.id not in self._runs)
                      or j.id in self._lost]
        for job_id in wanted:
            try:
                found = self._read(job_id)
            except Exception:  # noqa: BLE001 - half-visible or unreadable: next time
                continue
            if found is None:
                continue
            with self._lock:
                if job_id in self._runs or self._etags.get(job_id) == found[1]:
                    continue
                self._apply(*found)

    def _expire_leases(self) -> None:
        lease_ids = {k[len(LEASES):] for k in self.store.list_records(LEASES)}
        with self._lock:
            running = {j.id for j in self._jobs.values() if j.state == JobState.RUNNING}
            candidates = (lease_ids | running) - set(self._runs) - set(self._leases)
        now = time.monotonic()
        for job_id in candidates:
            record = self.store.get_record(LEASES + job_id) if job_id in lease_ids else None
            etag = record.etag if record is not None else None
            seen = self._observed.get(job_id)
            if seen is None or seen[0] != etag:
                self._observed[job_id] = (etag, now)
                continue
            if now - seen[1] >= self.lease_seconds:
                owner = _owner(record.data) if record is not None else "unknown"
                self._take_over(job_id, etag, owner)
        for job_id in set(self._observed) - candidates:
            del self._observed[job_id]

    def _take_over(self, job_id: str, etag: str | None, owner: str) -> None:
        """The lease of ``job_id`` expired: take it and report the job failed, resumable."""
        body = self._lease_body(job_id, 0)
        with self._lock:
            try:
                if etag is None:
                    mine = self.store.put_record(LEASES + job_id, body, if_absent=True)
                else:
                    mine = self.store.put_record(LEASES + job_id, body, if_match=etag)
            except RecordConflict:
                return  # renewed after all, or another replica was quicker
            self._observed.pop(job_id, None)
            try:
                found = self._read(job_id)
                if found is not None:
                    self._apply(*found)
                job = self._jobs.get(job_id)
                if job is not None and job.state == JobState.RUNNING:
                    job.last_version = max(job.last_version, self._latest_job_version(job))
                    job.replica = self.replica_id
                    log_event(log, "job_lease_expired", logging.WARNING, job_id=job_id,
                              owner=owner, replica=self.replica_id)
                    self._fail(job, f"replica {owner} stopped renewing its lease on the job "
                                    f"for {self.lease_seconds:g} s (it died or lost the store)")
            finally:
                self._delete_lease(job_id, mine)


def _owner(data: bytes) -> str:
    try:
        return str(json.loads(data)["owner"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


class SharedCorpusStore(CorpusStore):
    """Corpora kept in the store's records, so a corpus uploaded to one replica trains on
    another; each replica keeps a copy on its own disk (``root``) for its training workers."""

    def __init__(self, store, root: Path, max_bytes: int):
        super().__init__(root, max_bytes)
        self.store = store

    def put_chunks(self, chunks: Iterable[bytes], *, field: str = "data") -> CorpusInfo:
        info = super().put_chunks(chunks, field=field)
        key = CORPORA + info.id + ".txt"
        if not self.store.list_records(key):
            try:
                self.store.put_record(key, self._text_path(info.id).read_bytes(), if_absent=True)
            except RecordConflict:
                pass  # another replica stored the same text first
            except StoreError as exc:
                raise errors.Unavailable(f"cannot store the corpus in the shared store: {exc}")
        return info

    def exists(self, corpus_id: str) -> bool:
        key = CORPORA + check_corpus_id(corpus_id) + ".txt"
        return super().exists(corpus_id) or bool(self.store.list_records(key))

    def path(self, corpus_id: str) -> Path:
        local = self._text_path(check_corpus_id(corpus_id))
        if not local.is_file():
            record = self.store.get_record(CORPORA + corpus_id + ".txt")
            if record is None:
                raise errors.NotFound(f"corpus {corpus_id} not found (upload it with UploadCorpus)",
                                      field="corpus_id")
            atomic_write_bytes(local, record.data)
        return local
