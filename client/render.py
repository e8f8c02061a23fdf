"""Human-readable output of the command line: tables, characters, times, training progress.

The ``--json`` output does not come through here: it is `charlstm.client.types.to_jsonable`,
one object per line.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Sequence
from typing import IO

from tqdm import tqdm

from charlstm.client.types import CharDistribution, Job, Model, TrainEvent, TrainProgress


def show_char(char: str) -> str:
    """A character as a person can read it in a table: quoted, with escapes for whitespace
    and control characters (``'e'``, ``' '``, ``'\\n'``)."""
    return repr(char)


def show_time(moment: _dt.datetime | None) -> str:
    """Local time to the second, or ``-``."""
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def show_float(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def show_duration(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def show_count(value: int) -> str:
    """A large count with a unit prefix: 1234567 -> 1.23M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.3g}{suffix}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Aligned columns under a header; columns whose index is in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def distribution_table(distribution: CharDistribution) -> str:
    """Next characters with their probabilities and a bar."""
    rows = [
        [show_char(c), f"{p:.4f}", "#" * max(1, round(p * 40)) if p > 0 else ""] for c, p in distribution
    ]
    return table(["CHAR", "PROB", ""], rows, right=(1,))


def jobs_table(jobs: Sequence[Job]) -> str:
    rows = []
    for job in jobs:
        p = job.progress
        rows.append([
            job.id,
            job.model,
            job.state,
            f"{p.step}/{p.total_steps}" if p else "-",
            show_float(p.train_loss if p else None),
            show_float(p.val_loss if p else None),
            str(job.last_version or "-"),
            show_time(job.created),
        ])  # fmt: skip
    return table(
        ["JOB", "MODEL", "STATE", "STEP", "LOSS", "VAL LOSS", "VERSION", "CREATED"],
        rows,
        right=(3, 4, 5, 6),
    )


def models_table(models: Sequence[Model]) -> str:
    rows = []
    for m in models:
        a = m.architecture
        rows.append([
            m.name,
            str(m.latest_version),
            f"{a.num_layers}x{a.hidden_size}" if a else "-",
            str(a.embedding_size) if a else "-",
            str(a.vocab_size) if a else "-",
            show_count(a.num_parameters) if a else "-",
            ", ".join(f"{label}={version}" for label, version in m.labels.items()) or "-",
        ])  # fmt: skip
    return table(
        ["MODEL", "LATEST", "LAYERSxHIDDEN", "EMBED", "VOCAB", "PARAMS", "LABELS"],
        rows,
        right=(1, 3, 4, 5),
    )


def model_details(m: Model) -> str:
    lines = [f"model:          {m.name}", f"latest version: {m.latest_version}"]
    a = m.architecture
    if a:
        layers = f"{a.num_layers} layer{'s' if a.num_layers != 1 else ''}"
        lines.append(
            f"architecture:   {layers} x {a.hidden_size} hidden, embedding {a.embedding_size}, "
            f"vocabulary {a.vocab_size}, dropout {a.dropout:g}, {a.num_parameters:,} parameters"
        )
    labels = ", ".join(f"{label} -> {version}" for label, version in m.labels.items())
    lines.append(f"labels:         {labels or '-'}")
    vocabulary = repr(m.vocabulary if len(m.vocabulary) <= 100 else m.vocabulary[:100] + "...")
    lines.append(f"vocabulary:     {vocabulary} ({len(m.vocabulary)} characters)")
    rows = [
        [
            str(v.version),
            show_time(v.created),
            str(v.step),
            show_float(v.train_loss),
            show_float(v.val_loss),
            show_count(v.size_bytes) + "B",
            ", ".join(v.labels) or "-",
            "yes" if v.resumable else "no",
            v.job_id or "-",
        ]
        for v in m.versions
    ]
    headers = ["VERSION", "CREATED", "STEP", "LOSS", "VAL LOSS", "SIZE", "LABELS", "RESUMABLE", "JOB"]
    lines += ["", table(headers, rows, right=(0, 2, 3, 4, 5))]
    return "\n".join(lines)


class TrainingDisplay:
    """Shows a training job's events on stderr: a live tqdm bar (step/total, loss, validation
    loss, chars/s, ETA) on a terminal, or a plain line every few seconds otherwise (logs)."""

    LINE_INTERVAL = 5.0  # seconds between plain progress lines

    def __init__(
        self, file: IO[str] | None = None, *, live: bool | None = None, progress: bool = True
    ) -> None:
        """``live``: a tqdm bar (default: when ``file`` is a terminal); ``progress``: False
        shows only the job's milestones (accepted, checkpoints), no step progress."""
        self.file = file or sys.stderr
        self.live = self.file.isatty() if live is None else live
        self.show_progress = progress
        self._bar: tqdm | None = None
        self._last_line = 0.0

    def say(self, text: str) -> None:
        """A message line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def handle(self, event: TrainEvent) -> None:
        if event.accepted is not None:
            job = event.accepted
            self.say(f"job {job.id}: training model {job.model!r} ({job.state})")
            if job.progress is not None:
                self._progress(job.progress)
        elif event.progress is not None:
            self._progress(event.progress)
        elif event.checkpoint is not None:
            c = event.checkpoint
            val = f", val loss {c.val_loss:.4f}" if c.val_loss is not None else ""
            self.say(f"saved version {c.version} at step {c.step}{val}")
        elif event.terminal:
            self.close()

    def _progress(self, p: TrainProgress) -> None:
        if not self.show_progress:
            return
        summary = (
            f"loss {p.train_loss:.4f}, val {show_float(p.val_loss)}, "
            f"{p.chars_per_second:,.0f} chars/s, ETA {show_duration(p.eta_seconds)}"
        )
        if not self.live:
            now = time.monotonic()
            if now - self._last_line >= self.LINE_INTERVAL or p.step >= p.total_steps:
                self._last_line = now
                print(f"step {p.step}/{p.total_steps}: {summary}", file=self.file, flush=True)
            return
        if self._bar is None:
            self._bar = tqdm(
                total=p.total_steps,
                initial=p.step,
                unit="step",
                file=self.file,
                dynamic_ncols=True,
                mininterval=0.1,
                postfix=summary,
                # The server's ETA (in the postfix) knows the job; tqdm's own guess would not.
                bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]",
            )
        self._bar.set_postfix_str(summary, refresh=False)
        self._bar.update(p.step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
