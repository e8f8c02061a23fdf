"""The store's error vocabulary: one class per thing that can go wrong, each saying when it is raised.

Callers (the gRPC layer) map these to status codes in one place; the store never raises a bare
``OSError`` or ``KeyError`` at them.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the checkpoint store raises."""


class StoreInputError(StoreError, ValueError):
    """An argument was refused before anything was read or written (bad tensors, metadata that is
    not JSON, a retention count below 1, a reference of the wrong type).

    ``field`` names the offending argument; the message says what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidName(StoreInputError):
    """A model or label name was refused; the message states the naming rule that it broke."""


class ModelNotFound(StoreError):
    """The model has no complete version in the store."""


class VersionNotFound(StoreError):
    """The model exists but the requested version does not (never written, or deleted)."""


class LabelNotFound(StoreError):
    """The model has no label of that name."""


class LabelInUse(StoreError):
    """A version cannot be deleted because a label points at it; move or remove the label first."""


class CorruptCheckpoint(StoreError):
    """A stored file is missing, truncated or altered: its size, sha256, tensor names, dtypes or
    shapes disagree with the version's metadata.

    ``model``, ``version`` and ``file`` say exactly where; other versions are unaffected.
    ``version`` is ``None`` when the damaged file is a label pointer rather than part of a version.
    """

    def __init__(self, model: str, version: int | None, file: str, reason: str) -> None:
        where = f"version {version}" if version is not None else "pointer"
        super().__init__(f"checkpoint of model {model!r} {where} is corrupt: {file}: {reason}")
        self.model = model
        self.version = version
        self.file = file
        self.reason = reason


class StoreWriteError(StoreError):
    """A write failed (disk full, permission denied, I/O error). Whatever was half written has
    been removed: no new version, label or pointer became visible."""


class RecordConflict(StoreError):
    """A conditional write lost: the record changed or exists."""
