"""Regenerates the Python code for the protos with grpcio-tools.

Usage: python protos/generate.py [--check]

The generated modules (``charlstm_pb2.py``, its ``.pyi`` stub and ``charlstm_pb2_grpc.py``) are
committed beside the .proto, so that ``pip install .`` needs no code generator. ``--check``
regenerates into a temporary folder and exits 1 if the committed files differ (used by the
tests and by CI).
"""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent
SOURCES = sorted(PROTOS.glob("charlstm/v1/*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Runs protoc on every .proto under protos/charlstm/v1, writing into ``out_dir``."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(s.relative_to(PROTOS)) for s in SOURCES],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(root: Path) -> list[Path]:
    """The generated files below ``root``, relative to it."""
    return sorted(
        p.relative_to(root)
        for p in root.glob("charlstm/v1/*")
        if p.name.endswith(GENERATED_SUFFIXES)
    )


def check() -> list[str]:
    """Returns the generated files that are missing or differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = []
        for rel in generated_files(fresh):
            committed = PROTOS / rel
            if not committed.exists() or not filecmp.cmp(committed, fresh / rel, shallow=False):
                stale.append(str(rel))
        return stale


def main() -> None:
    if "--check" in sys.argv[1:]:
        stale = check()
        if stale:
            print("stale generated code, run `python protos/generate.py`:", *stale, sep="\n  ")
            raise SystemExit(1)
        print("generated protobuf code is current")
        return
    generate(PROTOS)
    print("generated:", *generated_files(PROTOS), sep="\n  ")


if __name__ == "__main__":
    main()
