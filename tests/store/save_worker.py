"""A separate process that writes to a store, for the crash, concurrency and disk-full tests.

ROOT is a store location: a directory, or s3://BUCKET/PREFIX with the CHARLSTM_S3_* environment
variables saying how to reach it.

    save_worker.py pause ROOT MODEL SEED PAUSE_AT [OPERATION]
        Do one OPERATION: "save" (the default: save one version with a training state),
        "delete" (delete the latest version) or "label" (point label "stable" at the latest
        version). Just before the PAUSE_AT-th file-system call (local) or S3 request it makes,
        print "PAUSE <n> <call>" and wait for a line on stdin: the test kills the process there,
        or lets it go on. PAUSE_AT 0 never pauses. Ends with "CALLS <n>" and "DONE <result>".
    save_worker.py loop ROOT MODEL SEED
        Print "READY", then save versions with seeds SEED, SEED+1, ... until killed, printing
        "SAVED <version> <seed>" after each.
    save_worker.py writer ROOT MODEL WRITER COUNT GO_FILE
        Print "READY", wait until GO_FILE exists, save COUNT versions, printing
        "SAVED <version> <index>" after each.
    save_worker.py fsize ROOT MODEL LIMIT
        Save a 64 KiB version with the process's file size limit (RLIMIT_FSIZE) set to LIMIT
        bytes, so the kernel refuses the write as a full disk would. Prints "SAVED <version>" or
        "ERROR <exception type> <message>".
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import sys
import time

import numpy as np

from sample_data import random_tensors, random_training_tensors, sample_metadata

from charlstm.service.store import CheckpointStore, LocalStore, S3Store, StoreError, TrainingState
from charlstm.service.store import open_store

# The calls through which the store changes the file system (pathlib and shutil use them too).
WATCHED_CALLS = [(os, "mkdir"), (os, "open"), (os, "write"), (os, "fsync"), (os, "close"),
                 (os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"), (fcntl, "flock")]


class Tripwire:
    """Counts watched calls while armed and pauses before the ``pause_at``-th one."""

    def __init__(self, pause_at: int, store: CheckpointStore) -> None:
        self.pause_at = pause_at
        self.calls = 0
        self.armed = False
        if isinstance(store, S3Store):
            # Every S3 request passes this event just before it is sent.
            store._client.meta.events.register("before-send.s3", self._before_send)
        else:
            for module, name in WATCHED_CALLS:
                setattr(module, name, self._wrap(getattr(module, name), name))

    def _count(self, name: str) -> None:
        if self.armed:
            self.calls += 1
            if self.calls == self.pause_at:
                self.armed = False
                print(f"PAUSE {self.calls} {name}", flush=True)
                sys.stdin.readline()
                self.armed = True

    def _before_send(self, event_name: str, **kwargs) -> None:
        self._count(event_name.rsplit(".", 1)[-1])  # PutObject, GetObject, ListObjectsV2, ...

    def _wrap(self, real, name):
        def watched(*args, **kwargs):
            self._count(name)
            return real(*args, **kwargs)
        return watched


def save_one(store: CheckpointStore, model: str, seed: int) -> int:
    state = TrainingState(random_training_tensors(seed), {"step": seed, "seed": seed})
    return store.save(model, random_tensors(seed), dict(sample_metadata(step=seed), seed=seed),
                      training_state=state)


def main(argv: list[str]) -> None:
    mode, root, model = argv[:3]
    if mode == "pause":
        seed, pause_at = int(argv[3]), int(argv[4])
        operation = argv[5] if len(argv) > 5 else "save"
        store = open_store(root)
        latest = store.resolve(model) if operation != "save" else None
        tripwire = Tripwire(pause_at, store)
        tripwire.armed = True
        if operation == "save":
            result = save_one(store, model, seed)
        elif operation == "delete":
            result = store.delete(model, latest)
        elif operation == "label":
            result = store.set_label(model, "stable", latest)
        else:
            raise SystemExit(f"unknown operation {operation!r}")
        tripwire.armed = False
        print(f"CALLS {tripwire.calls}", flush=True)
        print(f"DONE {result}", flush=True)
    elif mode == "loop":
        store = open_store(root)
        print("READY", flush=True)
        seed = int(argv[3])
        while True:
            print(f"SAVED {save_one(store, model, seed)} {seed}", flush=True)
            seed += 1
    elif mode == "writer":
        writer, count, go_file = int(argv[3]), int(argv[4]), argv[5]
        store = open_store(root)
        print("READY", flush=True)
        while not os.path.exists(go_file):
            time.sleep(0.001)
        for index in range(count):
            tensors = {"who": np.array([writer, index], dtype=np.int64),
                       "weights": np.full((8, 8), writer * 1000 + index, dtype=np.float32)}
            version = store.save(model, tensors, {"writer": writer, "index": index})
            print(f"SAVED {version} {index}", flush=True)
    elif mode == "fsize":
        limit = int(argv[3])
        store = LocalStore(root)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        big = {"weights": np.ones(16384, dtype=np.float32)}  # 64 KiB
        try:
            version = store.save(model, big, {"big": True})
        except StoreError as exc:
            print(f"ERROR {type(exc).__name__} {exc}", flush=True)
        else:
            print(f"SAVED {version}", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
