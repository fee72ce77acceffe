"""Data-parallel training across the processes that ``torchrun`` starts.

``torchrun --nproc_per_node=P -m trafficcast train ...`` starts P copies of the command, each told
its place by the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). :func:`distributed_session` turns that into a process group (gloo on CPU, nccl
when the model lives on a GPU) and back; the trainer then wraps the model in
``DistributedDataParallel`` and shards each global batch across the ranks.

A process started without ``torchrun`` (or with ``WORLD_SIZE=1``) gets no session at all, so the
single-process path is exactly the one that existed before.

Shutting down cleanly matters: with gloo, a process that destroys its group while a
``DistributedDataParallel`` reducer still holds communication work, or that leaves without the
others, sometimes aborts at exit ("terminate called without an active exception"). The session
therefore collects garbage (the trainer has already dropped its DDP wrapper and optimizer), waits
for every rank at a barrier, then destroys the group.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from trafficcast.models.errors import ConfigError


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it; 1 when unset (a plain process)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError as exc:
        raise ConfigError(f"WORLD_SIZE = {raw!r} is not a whole number") from exc
    if size < 1:
        raise ConfigError(f"WORLD_SIZE = {size} must be >= 1")
    return size


def env_rank() -> int:
    """This process's ``RANK`` (0 for a plain process)."""
    raw = os.environ.get("RANK", "0")
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"RANK = {raw!r} is not a whole number") from exc


def is_main_process() -> bool:
    """True in a plain process and in rank 0 of a torchrun job: the one that writes and prints."""
    return env_world_size() == 1 or env_rank() == 0


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of ``rank``'s contiguous share of ``n`` items; shares differ by at most one,
    the larger ones first (``numpy.array_split``'s rule)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job, and the collectives the trainer needs.

    ``device`` is where collective tensors must live: the GPU for nccl, the CPU for gloo.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: np.ndarray) -> np.ndarray:
        lo, hi = shard_bounds(len(items), self.rank, self.world_size)
        return items[lo:hi]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (a new tensor on ``values``' device)."""
        buf = values.detach().to(self.device, copy=True)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(values.device)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any: one decision for all."""
        buf = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
        return bool(buf.item() > 0)

    def all_agree(self, flag: bool) -> bool:
        """True if ``flag`` has the same value on every rank."""
        count = self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64))
        return int(count.item()) in (0, self.world_size)

    def barrier(self) -> None:
        dist.barrier()

    def broadcast_json(self, obj: object) -> object:
        """Rank 0's JSON-able ``obj`` on every rank (sent as UTF-8 bytes: no pickle)."""
        if self.is_main:
            data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
            size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buf = (
            data.to(self.device)
            if self.is_main
            else torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        )
        dist.broadcast(buf, src=0)
        return json.loads(bytes(buf.cpu().tolist()).decode())


def process_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` without an index means the GPU of ``LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextmanager
def distributed_session(device: torch.device) -> Iterator[DistContext | None]:
    """A process group for the duration of the block when torchrun started this process.

    Yields None in a plain process. If the caller already made a group, it is used and left
    alone; otherwise it is created here (gloo for a CPU ``device``, nccl for CUDA) and, when the
    block ends normally, torn down cleanly: garbage collected, a barrier, then destroyed. When
    the block raises, the group is destroyed without the barrier (the other ranks may never come;
    torchrun stops them when this one fails).
    """
    world_size = env_world_size()
    if world_size == 1:
        yield None
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(
            f"WORLD_SIZE = {world_size} but {' and '.join(missing)} not set: start distributed "
            f"training with torchrun (e.g. torchrun --nproc_per_node={world_size} -m trafficcast train ...)"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    ctx = DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device if device.type == "cuda" else torch.device("cpu"),
    )
    if not owns:
        yield ctx
        return
    try:
        yield ctx
    except BaseException:
        dist.destroy_process_group()
        raise
    gc.collect()  # frees what is left of DDP reducers before the group goes
    dist.barrier()
    dist.destroy_process_group()
