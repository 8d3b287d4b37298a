"""From a loader batch to the batch an objective gets: on the device, normalised, padding marked.

:func:`device_batch` moves ``video`` (uint8, 4x less to copy than float), ``label`` and
``valid`` to the device with ``non_blocking`` copies (from pinned memory on CUDA, so the
copy does not wait for the GPU) and normalises the video there. Every other key passes
through untouched.

:class:`Prefetcher` keeps one batch ahead: while the GPU runs step n, batch n+1 is copied
and normalised on a side CUDA stream, and the time spent blocked on the loader (not on
the GPU) is counted as data wait.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
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


class Prefetcher:
    """``(epoch, device batch)`` pairs from an iterator of ``(epoch, loader batch)``, one batch ahead.

    On CUDA the copy and normalisation of the next batch are queued on a side stream right after the
    current batch is handed out, so they overlap the step; the step's stream waits for that copy before
    it uses the batch. Note for resume bookkeeping: after ``n`` batches handed out, the loader has
    produced ``n + 1``.
    """

    def __init__(self, batches: Iterator[tuple[int, dict[str, Any]]], device: torch.device) -> None:
        self.batches = batches
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.wait_s = 0.0
        self._next: tuple[int, dict[str, Any]] | None = None

    def _fetch(self) -> tuple[int, dict[str, Any]]:
        t0 = time.perf_counter()
        epoch, raw = next(self.batches)
        self.wait_s += time.perf_counter() - t0  # blocked on the loader only
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            return epoch, device_batch(raw, self.device)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> tuple[int, dict[str, Any]]:
        epoch, batch = self._next if self._next is not None else self._fetch()
        if self.stream is not None:
            step_stream = torch.cuda.current_stream(self.device)
            step_stream.wait_stream(self.stream)  # the copy is done before the step reads the batch
            for v in batch.values():
                if isinstance(v, Tensor) and v.is_cuda:
                    v.record_stream(step_stream)  # made on the side stream, freed after the step's use
        self._next = self._fetch()
        return epoch, batch

    def take_wait(self) -> float:
        """Seconds blocked on the loader since the last call."""
        wait, self.wait_s = self.wait_s, 0.0
        return wait
