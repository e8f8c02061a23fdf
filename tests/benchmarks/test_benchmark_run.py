"""benchmarks/run.py and result.py: pass/fail logic, the OPENBLAS_CORETYPE settings and a real
child run of one benchmark module with the variable unset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import result  # noqa: E402
import run  # noqa: E402


def test_make_result_checks_the_ratio_against_the_target():
    assert result.make_result("a", 2.0, 1.0, "x", ">= 1.0", {})["passed"] is True
    assert result.make_result("a", 0.9, 1.0, "x", ">= 1.0", {})["passed"] is False
    low = result.make_result("b", 100.0, 300.0, "us", "<= 0.5", {})
    assert low["ratio"] == pytest.approx(1 / 3) and low["passed"] is True
    assert result.make_result("c", 1.0, 1.0, "MB", "report", {})["passed"] is None
    assert result.make_result("d", 1.0, None, "x", ">= 1.0", {})["passed"] is None
    paired = result.make_result("e", 10.0, 20.0, "x", ">= 1.0", {}, ratio=1.2)
    assert paired["ratio"] == 1.2 and paired["passed"] is True


def test_median_ratio_is_taken_per_pair():
    assert result.median_ratio([1.0, 2.0, 30.0], [1.0, 1.0, 1.0]) == 2.0
    assert result.median_ratio([1.0, 4.0, 2.0], [2.0, 2.0, 2.0], invert=True) == 1.0
    assert result.median_ratio([1.0], []) is None


def test_coretype_settings_always_include_unset(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert run.coretype_settings("given,unset") == ["Haswell", None]
    assert run.coretype_settings("given,unset,Zen,Haswell") == ["Haswell", None, "Zen"]
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert run.coretype_settings("given,unset") == [None]


def test_run_py_runs_a_module_in_a_child_and_writes_json(tmp_path, monkeypatch):
    # A stand-in module in a copy of the folder keeps this test to a second.
    for name in ("run.py", "result.py"):
        (tmp_path / name).write_text((BENCH / name).read_text())
    (tmp_path / "inference_step.py").write_text(
        "import os\nfrom result import make_result\n"
        "def run(quick):\n"
        "    return [make_result('probe', 1.0, 4.0, 'us', '<= 0.5', "
        "{'seen': os.environ.get('OPENBLAS_CORETYPE'), 'quick': quick})]\n")
    out = tmp_path / "out.json"
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_CORETYPE": "Haswell"}
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py"), "--quick", "--only", "inference",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [(r["openblas_coretype"], r["details"]["seen"]) for r in rows] == [("Haswell", "Haswell"), (None, None)]
    assert all(r["passed"] and r["details"]["quick"] for r in rows)
    assert "probe" in proc.stdout and "Haswell" in proc.stdout and "unset" in proc.stdout
    bad = subprocess.run([sys.executable, str(tmp_path / "run.py"), "--only", "nosuch"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode != 0 and "unknown benchmark" in bad.stderr
