"""Versioned, verifiable, pickle-free checkpoint storage for charlstm models.

Training writes versions, serving reads them. Weights are safetensors under the engine's PyTorch
names, metadata is JSON, and every read is checked against the sha256 recorded at save time. The
interface (:class:`CheckpointStore`) hides the filesystem so that an object-storage backend can be
added later; :class:`LocalStore` keeps checkpoints in a local directory.
"""

from __future__ import annotations

import os

from .base import Checkpoint, CheckpointStore, Record, TrainingState, VersionInfo
from .errors import (
    CorruptCheckpoint,
    InvalidName,
    LabelInUse,
    LabelNotFound,
    ModelNotFound,
    RecordConflict,
    StoreError,
    StoreInputError,
    StoreWriteError,
    VersionNotFound,
)
from .local import LocalStore
from .names import validate_label, validate_name, validate_record_key

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "CorruptCheckpoint",
    "InvalidName",
    "LabelInUse",
    "LabelNotFound",
    "LocalStore",
    "ModelNotFound",
    "Record",
    "RecordConflict",
    "StoreError",
    "StoreInputError",
    "StoreWriteError",
    "TrainingState",
    "VersionInfo",
    "VersionNotFound",
    "open_store",
    "validate_label",
    "validate_name",
    "validate_record_key",
]


def open_store(location: str | os.PathLike) -> CheckpointStore:
    """Open the store at ``location``: a directory path (or ``file://`` URL) for now.

    Object-storage locations (``s3://BUCKET/PREFIX``) are recognised but not supported yet.
    """
    text = os.fspath(location)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return LocalStore(text)
    if scheme == "file":
        return LocalStore(rest)
    raise StoreError(f"store location {text!r}: the {scheme!r} backend is not available; "
                     "use a directory path")
