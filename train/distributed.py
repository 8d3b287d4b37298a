"""Process-group setup, device choice and model wrapping (DDP, torch.compile): kept out of the model.

``torchrun --nproc-per-node N $(which vidshard) train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup` reads them and joins the group
(NCCL on CUDA, gloo on CPU). A plain ``vidshard train`` is a world of one.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    """This process's rank in the group (0 alone)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this machine (picks the GPU)."""
    device: torch.device
    """Where this process trains."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` is ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; a bare ``cuda`` is
    ``cuda:LOCAL_RANK`` too (under torchrun each process takes its own GPU); ``cuda:N`` is taken as is."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but this torch build / machine has no CUDA; "
                           "use --device cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def setup(device: str = "auto", timeout_s: float = 3600.0) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick this rank's device.

    The generous timeout covers validation, which rank 0 runs alone while the others wait.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# torch 2.13 renamed DDP's broadcast_buffers (which it deprecates) to forward_sync_buffers
_DDP_ARGS = inspect.signature(nn.parallel.DistributedDataParallel).parameters
_NO_BUFFER_SYNC = {"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS else {
    "broadcast_buffers": False}


def buffers_synced_every_step(ddp: nn.Module) -> bool | None:
    """Whether a DDP module sends its buffers from rank 0 before every forward (None: not DDP)."""
    return getattr(ddp, "forward_sync_buffers", getattr(ddp, "broadcast_buffers", None))


def wrap(model: nn.Module, info: DistInfo, compile: bool = False) -> nn.Module:
    """DDP across processes (when more than one), then optional ``torch.compile``.

    DDP copies rank 0's parameters and buffers to every rank when it wraps the model; after that, the
    buffers (the fixed sin-cos positions) never change, so they are not broadcast again every step.
    """
    if info.world_size > 1:
        ids = [info.device.index] if info.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids, **_NO_BUFFER_SYNC)
    if compile:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / compile wrappers (for state dicts)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def mean_across(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average scalar metrics over all ranks (a no-op alone)."""
    if info.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)  # on the device: NCCL reduces CUDA tensors only
    return {k: v / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def sum_across(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op alone); returned on the tensor's own device."""
    if info.world_size == 1:
        return t
    on_dev = t.to(info.device)
    dist.all_reduce(on_dev)
    return on_dev.to(t.device)
