"""Versioned, verifiable, pickle-free checkpoint storage for charlstm models.

Training writes versions, serving reads them. Weights are safetensors under the engine's PyTorch
names, metadata is JSON, and every read is checked against the sha256 recorded at save time. The
interface (:class:`CheckpointStore`) hides where versions live: :class:`LocalStore` keeps them in
a local directory, :class:`S3Store` in S3-compatible object storage (boto3, the ``s3`` extra).
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
from .s3 import S3Store
from .s3_settings import S3Settings
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
    "S3Settings",
    "S3Store",
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


def open_store(location: str | os.PathLike, s3: S3Settings | None = None) -> CheckpointStore:
    """Open the store at ``location``: a directory path (or ``file://`` URL), or
    ``s3://BUCKET/PREFIX`` for S3-compatible object storage, reached with ``s3`` (default:
    :meth:`S3Settings.from_env`, then boto3's own ``AWS_*`` configuration)."""
    text = os.fspath(location)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return LocalStore(text)
    if scheme == "file":
        return LocalStore(rest)
    if scheme == "s3":
        return S3Store(text, s3)
    raise StoreError(f"store location {text!r}: unknown scheme {scheme!r}; use a directory "
                     "path, file://PATH or s3://BUCKET/PREFIX")
