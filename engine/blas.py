"""Best-effort control of the BLAS thread count behind NumPy's matrix products.

OpenBLAS parallelises every large-enough GEMM over all cores and its threads busy-wait
between calls. When the cores are shared with other busy processes, or the matrices are
small (a few hundred thousand multiply-adds, as in small models), a multithreaded GEMM can
be many times slower than a single-threaded one (measured here: 20x on a 2-core machine
with two busy neighbours). The Trainer therefore runs its steps with single-threaded BLAS
and takes its parallelism from its own worker threads (``Trainer(workers=...)``), except for
models too small to shard, where it times one worker with BLAS on all cores against that and
keeps the faster (see :mod:`parallelism`); inference leaves the thread count alone, and these
helpers let a caller choose.

Only NumPy's bundled OpenBLAS (``scipy_openblas``, as in the PyPI wheels) is recognised; with
another BLAS the functions do nothing and return None.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_lib = None
_searched = False
_lock = threading.Lock()
_single_users = 0  # threads inside single_threaded()
_saved: int | None = None  # the count to restore when the last one leaves


def _openblas():
    global _lib, _searched
    if not _searched:
        _searched = True
        libs_dir = os.path.dirname(np.__file__) + ".libs"  # where the wheel bundles OpenBLAS
        for path in sorted(glob.glob(os.path.join(libs_dir, "libscipy_openblas*"))):
            try:
                lib = ctypes.CDLL(path)  # already loaded by NumPy: this returns the same copy
                lib.scipy_openblas_get_num_threads64_.restype = ctypes.c_int
                lib.scipy_openblas_set_num_threads64_.argtypes = [ctypes.c_int]
                _lib = lib
                break
            except (OSError, AttributeError):
                continue
    return _lib


def get_num_threads() -> int | None:
    """Threads OpenBLAS uses for a matrix product, or None if unknown."""
    lib = _openblas()
    return None if lib is None else int(lib.scipy_openblas_get_num_threads64_())


def set_num_threads(n: int) -> int | None:
    """Use ``n`` BLAS threads from now on (process-wide); returns the previous count, or
    None if the BLAS is not recognised (then nothing changes)."""
    lib = _openblas()
    if lib is None:
        return None
    previous = int(lib.scipy_openblas_get_num_threads64_())
    lib.scipy_openblas_set_num_threads64_(max(1, int(n)))
    return previous


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """``with blas_threads(1): ...`` runs the block with ``n`` BLAS threads, then restores."""
    previous = set_num_threads(n)
    try:
        yield
    finally:
        if previous is not None:
            set_num_threads(previous)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with single-threaded BLAS. Safe to nest and to enter from several
    threads at once: the previous count is restored when the last user leaves."""
    global _single_users, _saved
    with _lock:
        if _single_users == 0:
            _saved = set_num_threads(1)
        _single_users += 1
    try:
        yield
    finally:
        with _lock:
            _single_users -= 1
            if _single_users == 0 and _saved is not None:
                set_num_threads(_saved)
                _saved = None
