"""Data-parallel training: the communicator the :class:`~charlstm.engine.Trainer` talks to.

A communicator is the small part of MPI that training needs: this process's ``rank`` among
``size`` processes, ``local_size`` processes on this host (they share its cores), an in-place
sum or mean of arrays over all processes (``allreduce_sum`` / ``allreduce_mean``), and
``bcast`` / ``allgather`` of small picklable objects. Every method is collective: all ranks
call it, in the same order.

- :class:`LocalCommunicator` is the single-process default: rank 0 of 1, every call returns at
  once. The Trainer runs the same code with it, so the single-process path is the one tested
  everywhere.
- :class:`MpiCommunicator` wraps ``mpi4py`` (the optional ``mpi`` extra). :func:`from_environment`
  creates it only when the process was started by an MPI launcher (``mpirun``), which it tells
  from the launcher's environment variables; mpi4py is imported then and never otherwise, so
  the default install does not need it.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

# Set by OpenMPI's mpirun (OMPI_*), by PMIx launchers (PMIX_*) and by MPICH's hydra (PMI_*).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")


@runtime_checkable
class Communicator(Protocol):
    """What the Trainer needs from a group of processes training one model together."""

    rank: int  # 0 .. size-1; rank 0 writes checkpoints and reports progress
    size: int  # processes in the group
    local_size: int  # processes of the group on this host (they share its cores)

    def allreduce_sum(self, arrays: Sequence[np.ndarray]) -> None:
        """Replace every array, in place, by its element-wise sum over all ranks."""

    def allreduce_mean(self, arrays: Sequence[np.ndarray]) -> None:
        """Replace every array, in place, by its element-wise mean over all ranks."""

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (picklable), returned on every rank."""

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, returned on every rank."""

    def abort(self, code: int = 1) -> None:
        """End every process of the group at once (after an error on one of them)."""


class LocalCommunicator:
    """One process on its own: rank 0 of 1. Every collective is the identity."""

    rank = 0
    size = 1
    local_size = 1

    def allreduce_sum(self, arrays: Sequence[np.ndarray]) -> None:
        pass

    def allreduce_mean(self, arrays: Sequence[np.ndarray]) -> None:
        pass

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def abort(self, code: int = 1) -> None:
        os._exit(code)


class MpiCommunicator:
    """The processes of an MPI communicator (default ``MPI.COMM_WORLD``), through mpi4py.

    Several arrays given to one reduction are packed into one contiguous buffer so that they
    cost a single ``MPI_Allreduce``; a single C-contiguous array is reduced where it lies
    (``MPI_IN_PLACE``, no copy). Arrays reduced together must share one dtype.
    """

    def __init__(self, comm: Any = None):
        mpi = _import_mpi()
        self._mpi = mpi
        self._comm = mpi.COMM_WORLD if comm is None else comm
        self.rank = int(self._comm.Get_rank())
        self.size = int(self._comm.Get_size())
        # The ranks sharing this host's memory (and cores).
        node = self._comm.Split_type(mpi.COMM_TYPE_SHARED)
        self.local_size = int(node.Get_size())
        node.Free()
        self._pack: np.ndarray | None = None  # reused buffer for multi-array reductions

    def allreduce_sum(self, arrays: Sequence[np.ndarray]) -> None:
        arrays = list(arrays)
        if not arrays:
            return
        if len(arrays) == 1 and arrays[0].flags.c_contiguous:
            self._comm.Allreduce(self._mpi.IN_PLACE, arrays[0], op=self._mpi.SUM)
            return
        dtype = arrays[0].dtype
        if any(a.dtype != dtype for a in arrays):
            raise TypeError(f"arrays reduced together must share one dtype (got {[str(a.dtype) for a in arrays]})")
        n = sum(a.size for a in arrays)
        if self._pack is None or self._pack.dtype != dtype or self._pack.size < n:
            self._pack = np.empty(n, dtype)
        buf = self._pack[:n]
        offset = 0
        for a in arrays:
            buf[offset : offset + a.size] = a.reshape(-1)
            offset += a.size
        self._comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)
        offset = 0
        for a in arrays:
            a[...] = buf[offset : offset + a.size].reshape(a.shape)
            offset += a.size

    def allreduce_mean(self, arrays: Sequence[np.ndarray]) -> None:
        arrays = list(arrays)
        self.allreduce_sum(arrays)
        for a in arrays:
            a /= self.size

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._comm.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        return list(self._comm.allgather(obj))

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)


def launched_by_mpi(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started by an MPI launcher as one of several ranks."""
    env = os.environ if environ is None else environ
    for name in _SIZE_VARIABLES:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


def from_environment() -> Communicator:
    """The communicator for this process: :class:`MpiCommunicator` over ``MPI.COMM_WORLD``
    when started by ``mpirun`` with more than one rank, else :class:`LocalCommunicator`.

    Raises RuntimeError when started as one of several ranks without mpi4py installed (each
    rank would otherwise train a model of its own).
    """
    if not launched_by_mpi():
        return LocalCommunicator()
    return MpiCommunicator()


def _import_mpi():
    try:
        import mpi4py
    except ImportError:
        rank = next((os.environ[v] for v in _RANK_VARIABLES if v in os.environ), "?")
        raise RuntimeError(
            f"this process is rank {rank} of an MPI job, but mpi4py is not installed; install "
            "the `mpi` extra (pip install 'charlstm[mpi]') in the environment mpirun starts"
        ) from None
    # Only the thread that runs the Trainer calls MPI (the step's worker threads never do),
    # and asking for less than MPI_THREAD_MULTIPLE lets the library skip its locking.
    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    return MPI
