"""Communicators for distributed training and inference: ``dsc.Comm`` wraps the C core's
``dsc_comm`` -- NCCL between GPUs, MPI between CPU processes, or a world of one -- behind one
interface, and ``dsc.Model(cfg, comm=...)`` runs expert- and data-parallel on it.

    from mpi4py import MPI
    comm = dsc.Comm.from_mpi(MPI.COMM_WORLD)             # CPU processes (mpirun -np 4 python ...)
    comm = dsc.Comm.from_torch(dist.group.WORLD)         # PyTorch's NCCL communicator (torchrun)
    uid = dsc.Comm.nccl_unique_id()                      # or NCCL from a unique id carried by the
    comm = dsc.Comm.from_nccl_unique_id(uid, rank, size, device=local_rank)   # launcher's channel
    model = dsc.Model(cfg, comm=comm, expert_parallel=4, data_parallel=1)
    stats = model.train_step(tokens, targets)            # each rank its own micro-batch

Collectives (``all_reduce``, ``reduce_scatter``, ``all_gather``, ``broadcast``,
``all_to_all_v`` with its counts exchanged first, ``barrier``) take arrays on the
communicator's device: NumPy (or any DLPack array) in host memory for MPI, CUDA arrays for
NCCL (stream-ordered on the current stream). MPI reductions are computed by deepseek_c in rank
order (bitwise the same on every rank, for every MPI). A peer that does not answer within the
timeout (it died, hangs, or called another collective) raises ``deepseek_c.CommError`` on every
rank that waits for it, instead of hanging.

mpi4py is needed only for ``from_mpi`` (``pip install mpi4py`` builds against the installed MPI;
the deepseek_c build must have found the same MPI: ``python -m deepseek_c info``).
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from . import _C

__all__ = ["Comm", "launched_by_mpi", "world"]

_OPS = {"sum": 0, "max": 1}


def launched_by_mpi() -> bool:
    """True when this process was started by an MPI launcher (mpirun / mpiexec / srun with PMI)."""
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"))


class Comm:
    """A group of processes (ranks 0 .. size-1) and the collectives the distributed model
    needs. Make one with ``from_mpi``, ``from_torch``, ``from_nccl_unique_id`` or ``single``.

    A Comm is used by one thread at a time (a second thread waits). Its operations are
    collective: every rank calls them in the same order with matching sizes."""

    def __init__(self, _cap: Any, _keep: Any = None) -> None:
        self._cap = _cap
        self._keep = _keep  # what must outlive it (a borrowed NCCL communicator's owner)
        info = _C.comm_info(_cap)
        self.rank: int = info["rank"]
        self.size: int = info["size"]
        self.backend: str = info["backend"]
        self.device: str = "cpu" if info["device_type"] == 1 else f"cuda:{info['device_id']}"

    # ------------------------------------------------------------------ constructors

    @classmethod
    def single(cls) -> "Comm":
        """A world of one (no library needed): a distributed model on it is the one-process model."""
        return cls(_C.comm_self())

    @classmethod
    def from_mpi(cls, comm: Any = None) -> "Comm":
        """From an mpi4py communicator (default ``MPI.COMM_WORLD``); deepseek_c uses a duplicate of
        it. Overlapped communication needs MPI_THREAD_MULTIPLE (mpi4py's default)."""
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError("Comm.from_mpi: mpi4py is not installed (pip install mpi4py)") from e
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"Comm.from_mpi: comm: expected an mpi4py communicator, got {type(comm).__name__}")
        if not _C.build_info()["mpi"]:
            raise RuntimeError("Comm.from_mpi: this build of deepseek_c has no MPI backend (no mpi.h at build time: "
                               "install an MPI, e.g. apt-get install libopenmpi-dev, and reinstall deepseek_c)")
        return cls(_C.comm_mpi(MPI._addressof(comm)), _keep=comm)

    @staticmethod
    def nccl_unique_id() -> bytes:
        """A new NCCL unique id (on one rank; the others get it through the launcher's channel)."""
        return _C.nccl_unique_id()

    @classmethod
    def from_nccl_unique_id(cls, uid: bytes, rank: int, size: int, device: int = 0) -> "Comm":
        """A new NCCL communicator of `size` ranks on CUDA device `device` (collective)."""
        return cls(_C.comm_nccl_uid(bytes(uid), int(rank), int(size), int(device)))

    @classmethod
    def from_nccl(cls, nccl_comm: int, device: int, owner: Any = None) -> "Comm":
        """Borrow an existing ``ncclComm_t`` (its address as an int) on CUDA device `device`;
        `owner` (e.g. the process group) is kept alive with the Comm."""
        return cls(_C.comm_nccl(int(nccl_comm), int(device)), _keep=owner)

    @classmethod
    def from_torch(cls, group: Any = None) -> "Comm":
        """From a ``torch.distributed`` process group (default the world). NCCL groups: PyTorch's
        own NCCL communicator where the installed torch exposes it (``_comm_ptr``), else a new one
        from a unique id broadcast over the group. A CPU (gloo) group cannot lend its transport:
        launch with mpirun and use ``from_mpi`` (raises ValueError)."""
        import torch
        import torch.distributed as tdist

        if not tdist.is_initialized():
            raise ValueError("Comm.from_torch: torch.distributed is not initialized (init_process_group first)")
        group = group if group is not None else tdist.group.WORLD
        backend = str(tdist.get_backend(group)).lower()
        rank, size = tdist.get_rank(group), tdist.get_world_size(group)
        if "nccl" in backend:
            dev = torch.cuda.current_device()
            ptr = 0
            try:
                be = group._get_backend(torch.device("cuda", dev))
                t = torch.zeros(1, device=f"cuda:{dev}")
                tdist.all_reduce(t, group=group)  # the communicator exists after a first collective
                torch.cuda.synchronize(dev)
                ptr = int(be._comm_ptr())
            except (AttributeError, RuntimeError):
                ptr = 0
            if ptr:
                return cls.from_nccl(ptr, dev, owner=group)
            box = [cls.nccl_unique_id() if rank == 0 else None]
            tdist.broadcast_object_list(box, src=tdist.get_global_rank(group, 0), group=group)
            return cls.from_nccl_unique_id(box[0], rank, size, dev)
        if launched_by_mpi():
            c = cls.from_mpi()
            if c.size == size:
                return c
        raise ValueError(f"Comm.from_torch: group: expected an NCCL process group, got backend {backend!r} (a CPU "
                         "group cannot lend its transport: launch with mpirun and use Comm.from_mpi)")

    # ------------------------------------------------------------------ settings

    @property
    def timeout(self) -> float:
        """Seconds any operation may wait for the other ranks (then CommError)."""
        return float(_C.comm_info(self._cap)["timeout"])

    def set_timeout(self, seconds: float) -> "Comm":
        _C.comm_set_timeout(self._cap, float(seconds))
        return self

    def split(self, color: int, key: Optional[int] = None) -> "Comm":
        """Ranks with the same color form a new communicator, ordered by (key, rank) (collective)."""
        return Comm(_C.comm_split(self._cap, int(color), int(self.rank if key is None else key)), _keep=self._keep)

    def stats(self, reset: bool = False) -> dict:
        """dict(ops, bytes_sent, bytes_received, wait_seconds, busy_seconds) since creation / reset."""
        return _C.comm_stats(self._cap, int(bool(reset)))

    def __repr__(self) -> str:
        return f"Comm(rank {self.rank} of {self.size}, {self.backend}, {self.device})"

    # ------------------------------------------------------------------ collectives

    def _out(self, shape: Sequence[int], dtype: Any, like: Any) -> Any:
        if isinstance(like, np.ndarray) or self.device == "cpu":
            return np.empty(tuple(shape), dtype=np.asarray(like).dtype if isinstance(like, np.ndarray) else dtype)
        from . import empty
        return empty(tuple(shape), str(like.dtype).replace("torch.", ""), self.device)

    @staticmethod
    def _op(op: str) -> int:
        if op not in _OPS:
            raise ValueError(f"Comm: op: expected 'sum' or 'max', got {op!r}")
        return _OPS[op]

    def all_reduce(self, x: Any, op: str = "sum", out: Any = None) -> Any:
        """The reduction over ranks of x (same shape and dtype everywhere); out may be x."""
        y = out if out is not None else self._out(np.shape(x), None, x)
        return _C.comm_all_reduce(self._cap, x, y, self._op(op))

    def reduce_scatter(self, x: Any, op: str = "sum", out: Any = None) -> Any:
        """x [size, ...] -> this rank's row of the reduction over ranks."""
        shp = tuple(np.shape(x))
        y = out if out is not None else self._out(shp[1:], None, x)
        return _C.comm_reduce_scatter(self._cap, x, y, self._op(op))

    def all_gather(self, x: Any, out: Any = None) -> Any:
        """[size, *x.shape]: every rank's x."""
        y = out if out is not None else self._out((self.size, *np.shape(x)), None, x)
        return _C.comm_all_gather(self._cap, x, y)

    def broadcast(self, x: Any, root: int = 0) -> Any:
        """x of rank `root` into x of every rank (in place); returns x."""
        return _C.comm_broadcast(self._cap, x, int(root))

    def exchange_counts(self, send_counts: Sequence[int]) -> list[int]:
        """recv[q] = the count rank q sends here (the first step of an all-to-all-v)."""
        return _C.comm_exchange_counts(self._cap, [int(c) for c in send_counts])

    def all_to_all_v(self, x: Any, send_counts: Sequence[int], recv_counts: Optional[Sequence[int]] = None,
                     out: Any = None) -> tuple[Any, list[int]]:
        """Rows of x (send_counts[q] rows for rank q, in rank order) to their ranks; returns
        (the rows received, in source-rank order, and recv_counts). The counts are exchanged
        first unless given."""
        rc = list(recv_counts) if recv_counts is not None else self.exchange_counts(send_counts)
        shp = tuple(np.shape(x))
        y = out if out is not None else self._out((sum(rc), *shp[1:]), None, x)
        _C.comm_all_to_all_v(self._cap, x, [int(c) for c in send_counts], y, rc)
        return y, rc

    def barrier(self) -> None:
        _C.comm_barrier(self._cap)

    def synchronize(self) -> None:
        """Wait (with the timeout) until everything issued has completed (NCCL: the stream)."""
        _C.comm_synchronize(self._cap)


def world() -> Comm:
    """The communicator of this launch: MPI's world under mpirun (mpi4py), PyTorch's world when
    torch.distributed is initialized, else a world of one."""
    if launched_by_mpi():
        return Comm.from_mpi()
    try:
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            return Comm.from_torch()
    except ImportError:
        pass
    return Comm.single()
