"""The two store backends, seen the same way by the tests: open a store, reach behind it to read,
damage or remove a stored file, and run worker processes on it.

Paths are relative to the store's root, e.g. ``models/m/versions/00000002/weights.safetensors``:
a file under the local root, an object under the S3 prefix.
"""

from __future__ import annotations

from pathlib import Path

from charlstm.service.store import CheckpointStore, LocalStore, open_store


def version_file(model: str, version: int, name: str) -> str:
    return f"models/{model}/versions/{version:08d}/{name}"


class LocalBackend:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
        self.env: dict[str, str] | None = None  # workers inherit ours

    def open(self) -> LocalStore:
        return LocalStore(self.root)

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        (self.root / path).write_bytes(data)

    def remove(self, path: str) -> None:
        (self.root / path).unlink()

    def exists(self, path: str) -> bool:
        return (self.root / path).exists()

    def listing(self) -> list[str]:
        """Every file in the store (what a refused call must not change)."""
        if not self.root.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))

    def leftovers(self) -> list[str]:
        """Partial writes left behind; a store opened after a crash must have none."""
        scratch = self.root / "models" / ".tmp"
        return sorted(p.name for p in scratch.iterdir()) if scratch.exists() else []


class S3Backend:
    name = "s3"

    def __init__(self, server, location: str) -> None:
        self.server = server
        self.location = location
        self.bucket, _, prefix = location[len("s3://"):].partition("/")
        self.prefix = prefix + "/"
        self.env = server.env()
        self._client = server.client

    def open(self) -> CheckpointStore:
        return open_store(self.location, self.server.settings())

    def read(self, path: str) -> bytes:
        return self._client.get_object(Bucket=self.bucket, Key=self.prefix + path)["Body"].read()

    def write(self, path: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + path, Body=data)

    def remove(self, path: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self.prefix + path)

    def exists(self, path: str) -> bool:
        return path in self.listing() or any(k.startswith(path + "/") for k in self.listing())

    def listing(self) -> list[str]:
        keys = []
        for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix):
            keys += [e["Key"][len(self.prefix):] for e in page.get("Contents", [])]
        return sorted(keys)

    def leftovers(self) -> list[str]:
        """Objects of versions that have no manifest: what killed saves leave behind. They are
        invisible, so they are reported here for the tests to look at, not treated as errors."""
        folders: dict[str, set[str]] = {}
        for key in self.listing():
            parts = key.split("/")
            if len(parts) == 5 and parts[0] == "models" and parts[2] == "versions":
                folders.setdefault("/".join(parts[:4]), set()).add(parts[4])
        return sorted(f for f, names in folders.items()
                      if "metadata.json" not in names and "deleted.json" not in names)

