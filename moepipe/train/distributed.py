"""Data-parallel training across processes, GPUs and hosts, launched by `torchrun`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1 we
join a process group (NCCL on CUDA, gloo on CPU). Gradients are averaged with all-reduce after
each backward pass, and buffers (BatchNorm statistics, w_avg) are broadcast from rank 0, which is
what DistributedDataParallel does; doing it by hand keeps the G and D steps, which freeze each
other's parameters, free of DDP's unused-parameter bookkeeping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_type: str) -> World:
    """Join the torchrun process group if there is one; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=size)
    return World(rank=rank, size=size, local_rank=local_rank)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(module: torch.nn.Module, world: World) -> None:
    """All-reduce every gradient of `module` and divide by the world size (one flat bucket)."""
    if not world.distributed:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world.size)
    offset = 0
    for grad in grads:
        count = grad.numel()
        grad.copy_(flat[offset:offset + count].view_as(grad))
        offset += count


def broadcast_state(module: torch.nn.Module, world: World, buffers_only: bool = False) -> None:
    """Make every rank hold rank 0's buffers (and parameters unless `buffers_only`)."""
    if not world.distributed:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


def gather_cat(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate an equally sized tensor from every rank (e.g. real logits for ADA)."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)
