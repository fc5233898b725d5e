"""One process or many: the ``torchrun`` environment, the process group, the shares.

Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) :func:`init` starts the default
process group from torchrun's variables (``env://``): NCCL when CUDA is there (each rank on
``cuda:LOCAL_RANK``), else gloo on the CPU. The group is destroyed at the end by
:meth:`Context.close` when flashtorch started it. A single process needs no group at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Context:
    """Where this process stands among the processes of a run.

    Attributes:
        rank: global rank, ``0 .. world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: this process's device.
        owns_group: whether flashtorch started the process group (and destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """Several processes (a process group is running)."""
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op on one process)."""
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (pickled; for small objects)."""
        if not self.distributed:
            return value
        box: list[Any] = [value if self.rank == 0 else None]
        dist.broadcast_object_list(
            box, src=0, device=self.device if self.device.type == "cuda" else None
        )
        return box[0]

    def gather_max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def close(self) -> None:
        """Destroy the process group if flashtorch started it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else default


def init(device: str | torch.device | None = None) -> Context:
    """The process's :class:`Context`, starting the process group under ``torchrun``.

    Args:
        device: ``None``/``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU;
            anything else is used as given (one process).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    auto = device is None or str(device) == "auto"
    if auto:
        if torch.cuda.is_available():
            dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        else:
            dev = torch.device("cpu")
    else:
        dev = torch.device(device)  # type: ignore[arg-type]
        if world > 1 and dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        store = _attempt_store(rank, world)
        if store is None:
            dist.init_process_group(backend=backend, init_method="env://")
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
        owns = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return Context(rank, world, local, dev, owns)


def _attempt_store(rank: int, world: int) -> Any:
    """The store of ``torchrun`` under a prefix for this attempt, or ``None`` (plain env://).

    After ``--max-restarts`` restarts the group, the agent's store can still hold the
    previous attempt's keys (the dead processes' addresses): a restarted group would then try
    to connect to them and fail. A prefix per ``TORCHELASTIC_RESTART_COUNT`` keeps every
    attempt's keys apart.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT", "")
    if not addr or not port.isdigit() or "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return None
    from datetime import timedelta

    from torch.distributed.rendezvous import _create_c10d_store

    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    base = _create_c10d_store(addr, int(port), rank, world, timedelta(minutes=30))
    return dist.PrefixStore(f"/flashtorch/attempt_{attempt}/", base)


def share(todo: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s part of ``todo``: a contiguous block, disjoint, no padding.

    The blocks of ranks ``0 .. W-1`` concatenate to ``todo`` in order; sizes differ by at most
    one (``DistributedSampler``'s default would pad with duplicates instead).
    """
    n = len(todo)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    return list(todo[lo:hi])


__all__ = ["Context", "init", "share"]
