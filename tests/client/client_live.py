"""Helpers for the client tests that run the real command line against a real server."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--hidden", "16", "--embedding", "8", "--layers", "1", "--seq-len", "16", "--batch-size", "4"]
"""Hyperparameter flags for models that train in well under a second."""


@dataclasses.dataclass
class Live:
    """The session's real server and what was trained on it."""

    target: str
    corpus: Path  # ~20 kB of Shakespeare
    train_events: list[dict[str, Any]]  # `charlstm train tiny --json` output, parsed

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CHARLSTM_SERVER"] = self.target
        env.pop("CHARLSTM_TOKEN", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["COLUMNS"] = "200"
        return env

    def run(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``charlstm ARGS`` to completion (stdout/stderr as text)."""
        return subprocess.run(
            [sys.executable, "-m", "charlstm.client.cli", *args],
            input=input,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=self.env(),
            timeout=timeout,
        )

    def json(self, *args: str, input: str | None = None) -> list[dict[str, Any]]:
        """Runs ``charlstm ARGS --json``; every stdout line must be one JSON object."""
        result = self.run(*args, "--json", input=input)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]
