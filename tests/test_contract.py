"""Repository-level checks: the generated protobuf code matches the .proto, and the layers keep
to their side of the architecture (engine: NumPy only; client: protos + grpcio only)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_protobuf_code_is_current() -> None:
    pytest.importorskip("grpc_tools")
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def imported_top_modules(folder: Path) -> set[str]:
    """Every absolute module imported anywhere under ``folder`` (``a.b`` for ``import a.b.c``)."""
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(".".join(a.name.split(".")[:2]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(".".join(node.module.split(".")[:2]))
    return found


def test_engine_depends_on_numpy_alone() -> None:
    imports = imported_top_modules(ROOT / "engine")
    forbidden = {m for m in imports if m.split(".")[0] in {"grpc", "google", "safetensors"}}
    forbidden |= {m for m in imports if m.startswith(("charlstm.service", "charlstm.client", "charlstm.v1"))}
    assert not forbidden, f"engine/ must know nothing of gRPC or storage: {sorted(forbidden)}"


def test_client_knows_only_the_protos() -> None:
    imports = imported_top_modules(ROOT / "client")
    forbidden = {m for m in imports if m.split(".")[0] == "numpy" or m == "charlstm.engine"}
    assert not forbidden, f"client/ must not import the engine or NumPy: {sorted(forbidden)}"


def test_client_import_does_not_load_numpy() -> None:
    # `charlstm serve` is the one bridge to the server: imported lazily, only by that command.
    code = "import sys, charlstm.client, charlstm.client.cli; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
