"""Which versions a retention pass may delete: a pure decision, the same for every backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import codec

if TYPE_CHECKING:
    from .base import VersionInfo


def versions_to_keep(versions: Sequence[VersionInfo], keep_last: int) -> set[int]:
    """The versions a pass must keep: the ``keep_last`` newest, every labelled one, and the one
    with the lowest finite ``metrics.val_loss`` (the newest of equals)."""
    numbers = sorted(v.version for v in versions)
    keep = set(numbers[-keep_last:]) if keep_last > 0 else set()
    keep.update(v.version for v in versions if v.labels)
    scored = [(loss, v.version) for v in versions
              if (loss := codec.validation_loss(v.metadata)) is not None]
    if scored:
        best_loss = min(loss for loss, _ in scored)
        keep.add(max(version for loss, version in scored if loss == best_loss))
    return keep


def versions_to_delete(versions: Sequence[VersionInfo], keep_last: int) -> list[int]:
    """Everything :func:`versions_to_keep` does not keep, oldest first."""
    keep = versions_to_keep(versions, keep_last)
    return sorted(v.version for v in versions if v.version not in keep)
