"""Every benchmark in one command: a table of ours / reference / ratio / target, and a JSON file.

    python benchmarks/run.py [--quick] [--only train,inference,memory,serving] [--json FILE]

Each benchmark module (``train_throughput``, ``inference_step``, ``training_memory`` and, when
present, ``serving``) exposes ``run(quick) -> list[dict]``. Every module runs in a child process
once per ``OPENBLAS_CORETYPE`` setting: as this process was given it, and unset (NumPy's bundled
OpenBLAS reads the variable once, when NumPy loads, so only a fresh process can change it; the
product itself never changes it). ``--coretypes`` lists other settings to try, e.g.
``--coretypes given,unset,Zen``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# --only name -> module file in this folder.
MODULES = {"train": "train_throughput", "inference": "inference_step",
           "memory": "training_memory", "serving": "serving"}
UNSET = "unset"


def available(names: list[str]) -> list[str]:
    """The selected benchmarks whose module exists (``serving`` arrives with another branch)."""
    return [n for n in names if (HERE / f"{MODULES[n]}.py").exists()]


def child_main(module: str, quick: bool, out: Path) -> None:
    """In the child: import the module from this folder and write its results as JSON."""
    sys.path.insert(0, str(HERE))
    mod = importlib.import_module(module)  # registered in sys.modules, as dataclasses need
    out.write_text(json.dumps(mod.run(quick)))


def run_child(module: str, quick: bool, coretype: str | None) -> tuple[list[dict[str, Any]], float]:
    """Run one module in a child with OPENBLAS_CORETYPE = ``coretype`` (None: unset)."""
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    if coretype is not None:
        env["OPENBLAS_CORETYPE"] = coretype
    with tempfile.TemporaryDirectory(prefix="charlstm-bench-") as tmp:
        out = Path(tmp) / "results.json"
        cmd = [sys.executable, __file__, "--child", module, "--out", str(out)]
        if quick:
            cmd.append("--quick")
        start = time.perf_counter()
        load = os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{module} (OPENBLAS_CORETYPE={coretype or UNSET}) failed:\n"
                               f"{proc.stderr[-3000:]}")
        results = json.loads(out.read_text())
    for r in results:
        r["module"] = module
        r["openblas_coretype"] = coretype
        r["details"]["load_average_at_start"] = load
    return results, seconds


def coretype_settings(spec: str) -> list[str | None]:
    """``given,unset,...`` -> the values to run with (None = unset), without duplicates."""
    given = os.environ.get("OPENBLAS_CORETYPE")
    settings: list[str | None] = []
    for word in spec.split(","):
        value = given if word == "given" else (None if word == UNSET else word)
        if value not in settings:
            settings.append(value)
    return settings


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'measurement':<52} {'CORETYPE':<8} {'ours':>11} {'reference':>11} {'unit':<8}"
            f" {'ratio':>6}  {'target':<8} pass")
    lines = [head, "-" * len(head)]
    for r in results:
        ok = {True: "yes", False: "NO", None: "-"}[r["passed"]]
        lines.append(f"{r['name'][:52]:<52} {r['openblas_coretype'] or UNSET:<8} "
                     f"{fmt(r['ours']):>11} {fmt(r['reference']):>11} {r['unit']:<8} "
                     f"{fmt(r['ratio'], 2):>6}  {r['target']:<8} {ok}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="everything in under 3 minutes")
    parser.add_argument("--only", default=",".join(MODULES),
                        help=f"comma-separated subset of {','.join(MODULES)}")
    parser.add_argument("--json", type=Path, default=HERE / "results.json", help="results file")
    parser.add_argument("--coretypes", default=f"given,{UNSET}",
                        help="OPENBLAS_CORETYPE settings: given (as in this environment), "
                             "unset, or a kernel name")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.quick, args.out)
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(MODULES)}")
    missing = sorted(set(names) - set(available(names)))
    if missing:
        print(f"skipped (module not present): {', '.join(missing)}")
    results: list[dict[str, Any]] = []
    timings = {}
    start = time.perf_counter()
    for name in available(names):
        for coretype in coretype_settings(args.coretypes):
            rows, seconds = run_child(MODULES[name], args.quick, coretype)
            timings[f"{name} OPENBLAS_CORETYPE={coretype or UNSET}"] = round(seconds, 1)
            results.extend(rows)
    total = time.perf_counter() - start
    print(table(results))
    print(f"\n{total:.0f} s in all ({', '.join(f'{k}: {v} s' for k, v in timings.items())})")
    args.json.write_text(json.dumps({"quick": args.quick, "seconds": total, "timings": timings,
                                     "results": results}, indent=2))
    print(f"wrote {args.json}")
    return 0 if all(r["passed"] is not False for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
