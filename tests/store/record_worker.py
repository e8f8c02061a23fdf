"""A separate process racing another on the records API (see test_records.py).

    record_worker.py LOCATION WRITER ROUNDS GO_FILE
        Open the store at LOCATION, print "READY", wait until GO_FILE exists, then for each round
        r: try to create "race/<r>" holding WRITER (if_absent), printing "WON <r>" or "LOST <r>",
        and add one to the JSON counter under "counter" by compare-and-swap, retrying on
        conflict. Ends with "CONFLICTS <n>" (compare-and-swap attempts that lost).
"""

from __future__ import annotations

import json
import os
import sys
import time

from charlstm.service.store import RecordConflict, open_store


def increment(store, key: str) -> int:
    """Add one to the counter; return how many attempts lost to the other writer."""
    lost = 0
    while True:
        current = store.get_record(key)
        value = json.loads(current.data) if current else 0
        data = json.dumps(value + 1).encode()
        try:
            if current is None:
                store.put_record(key, data, if_absent=True)
            else:
                store.put_record(key, data, if_match=current.etag)
            return lost
        except RecordConflict:
            lost += 1


def main(location: str, writer: str, rounds: str, go_file: str) -> None:
    store = open_store(location)
    print("READY", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.001)
    conflicts = 0
    for r in range(int(rounds)):
        try:
            store.put_record(f"race/{r:04d}", writer.encode(), if_absent=True)
            print(f"WON {r}", flush=True)
        except RecordConflict:
            print(f"LOST {r}", flush=True)
        conflicts += increment(store, "counter")
    print(f"CONFLICTS {conflicts}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
