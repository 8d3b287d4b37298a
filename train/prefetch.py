"""From a loader batch to the batch an objective gets: on the device, normalised, padding marked.

:func:`device_batch` moves ``video`` (uint8, 4x less to copy than float), ``label`` and
``valid`` to the device with ``non_blocking`` copies (from pinned memory on CUDA, so the
copy does not wait for the GPU) and normalises the video there. Every other key passes
through untouched.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .data import MEAN, STD


@functools.cache
def _mean_std(device: torch.device) -> tuple[Tensor, Tensor]:
    """ImageNet mean and std as ``(3, 1, 1, 1)`` tensors on ``device``, made once per device (making them
    per step would be a blocking host-to-device copy every step)."""
    shape = (3, 1, 1, 1)  # broadcasts over (T, H, W)
    return torch.tensor(MEAN, device=device).view(shape), torch.tensor(STD, device=device).view(shape)


def normalize_on(video: Tensor, device: torch.device) -> Tensor:
    """uint8 ``(..., C, T, H, W)`` -> float32 on ``device``, ``(x/255 - mean) / std`` per channel."""
    mean, std = _mean_std(device)
    x = video.to(device, non_blocking=True).float().div_(255.0)
    return x.sub_(mean).div_(std)


def device_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The objective's view of a loader batch (see :mod:`vidshard.train.objectives`).

    ``video`` ``(B, C, T, H, W)`` uint8 -> normalised float32 on ``device``; ``label`` ``(B,)`` int64 and
    ``valid`` ``(B,)`` bool on ``device`` (``valid`` defaults to all True when the loader gives none).
    """
    video = batch["video"]
    valid = batch.get("valid")
    if valid is None:
        valid = torch.ones(video.shape[0], dtype=torch.bool)
    out = dict(batch)
    out["video"] = normalize_on(video, device)
    out["label"] = batch["label"].to(device, non_blocking=True)
    out["valid"] = torch.as_tensor(valid, dtype=torch.bool).to(device, non_blocking=True)
    return out
