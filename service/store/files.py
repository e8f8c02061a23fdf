"""Durable local-file primitives for :class:`LocalStore`: write-and-fsync, atomic replace,
directory fsync, advisory locks and ownership of temporary entries.

Writes go through ``os`` calls (not ``open()``) so that each is one obvious sequence of system
calls whose failure is an ``OSError``, and so the crash tests can stop a writer between any two.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, scratch: Path) -> None:
    """Atomically give ``path`` the content ``data``: a reader sees the old or the new file,
    never a mix, and after a crash one of the two is there.

    The new content is written and fsynced as a fresh file in ``scratch`` (same filesystem),
    renamed over ``path``, and the directory fsynced.
    """
    temporary = scratch / temp_name()
    try:
        write_new_file(temporary, data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_dir(path.parent)


def read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree, ignoring what has already gone."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block.

    flock locks belong to the open file, so two threads of one process exclude each other as two
    processes do, and the kernel releases the lock when its holder dies, even by SIGKILL.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the only descriptor releases the lock; Linux frees the descriptor even when
        # close() reports an error, and an error here says nothing about the data written.
        with contextlib.suppress(OSError):
            os.close(fd)


# --- Temporary entries -------------------------------------------------------------------------
# Each temporary file or folder is named "<pid>-<random>-<host>" so that cleanup can tell whether
# its writer is still running: a live writer's entries must never be removed under it.

_HOST = "".join(c if c.isalnum() or c in ".-" else "_" for c in socket.gethostname()) or "host"


def temp_name() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex}-{_HOST}"


def _process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:  # a killed child that has not been reaped yet is a zombie: it will write nothing more
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def temp_entry_is_abandoned(name: str, age_seconds: float, max_age_seconds: float) -> bool:
    """True if the temporary entry ``name`` can be removed: its writer on this host is gone, or
    (for entries of other hosts, unknown names, or pids possibly reused) it is older than
    ``max_age_seconds``."""
    if age_seconds > max_age_seconds:
        return True
    pid_text, _, rest = name.partition("-")
    _, _, host = rest.partition("-")
    if host != _HOST or not pid_text.isdigit():
        return False
    return not _process_is_running(int(pid_text))


def is_collision(exc: OSError) -> bool:
    """Does a failed rename of a folder onto ``target`` mean the target is already taken?"""
    return exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)
