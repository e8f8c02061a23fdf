"""Load (issue 9, item 1), the 10-second version of ``benchmarks/soak.py``: 200 concurrent
Stream sessions generating with a tiny model plus Predict from 8 client threads, against
`charlstm serve` in a child process (so VmRSS and the thread count are the server's own).

200 is the issue's figure and fits the default thread model: the server holds one pool thread
per open session (pool = --max-streams 256 + 16) plus one request-reader thread per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from soak import ServeProcess, run_load

STREAMS, PREDICTORS, SECONDS = 200, 8, 10.0


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_200_streams_and_8_predict_callers_for_10_seconds(store_dir: Path) -> None:
    server = ServeProcess(store_dir)
    try:
        report = run_load(server, seconds=SECONDS, streams=STREAMS, predictors=PREDICTORS)
    finally:
        exit_code = server.stop()
    print("\n" + report.table())
    assert report.tally.errors == []
    assert report.tally.sessions_completed == STREAMS
    assert all(report.tally.latencies.values()), "every kind of call ran"
    assert report.rss_growth_second_half < 0.05, report.rss_kb
    assert report.active_streams_after == 0
    # Pool threads stay (up to one per concurrent call); the per-session readers must not.
    assert report.threads_after <= report.threads_before + STREAMS + PREDICTORS + 16
    assert exit_code == 0  # and it still drains cleanly on SIGTERM
