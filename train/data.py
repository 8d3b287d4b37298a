"""From the shard loader to the model: build a :class:`ClipLoader` for a run, normalise clips on
the device.

Clips arrive as uint8 ``(B, C, T, H, W)`` (eval with views: ``(B, V, C, T, H, W)``);
they are moved to the device as uint8 (4x less to copy than float) and only
there converted and normalised with the ImageNet mean and std.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..shards.loader import ClipLoader, LoaderConfig
from .config import EvalConfig, TrainConfig, cache_limit_bytes

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(video: Tensor, device: torch.device) -> Tensor:
    """uint8 (..., C, T, H, W) -> float32 on ``device``, (x/255 - mean) / std per channel."""
    x = video.to(device, non_blocking=True).float().div_(255.0)
    shape = (3, 1, 1, 1)  # broadcasts over (T, H, W)
    mean = torch.tensor(MEAN, device=device).view(shape)
    std = torch.tensor(STD, device=device).view(shape)
    return x.sub_(mean).div_(std)


def cache_metrics(loader: ClipLoader) -> dict[str, float]:
    """``cache_hits``, ``cache_misses``, ``cache_bytes_downloaded``, ``cache_evicted``,
    ``cache_evicted_bytes`` of the loader's shard cache since the run (this invocation) started; {}
    without a cache. Logged to metrics.jsonl (the mean over ranks under torchrun)."""
    return {f"cache_{k}": float(v) for k, v in loader.cache_stats.items()}


def train_loader(cfg: TrainConfig, rank: int, world_size: int, text: Any = None) -> ClipLoader:
    """The training stream: random crops and flips, shuffled, ``len`` equal on every rank. ``text``: the
    objective's caption hook (``LoaderConfig.text``), for objectives that read captions."""
    lc = LoaderConfig(source=cfg.data, frames=cfg.frames, stride=cfg.stride, size=cfg.size, train=True,
                      scale=tuple(cfg.crop_scale), flip=cfg.flip, batch_size=cfg.batch_size,
                      workers=cfg.workers, seed=cfg.seed,
                      clips_per_sample=cfg.clips_per_sample, cache_dir=cfg.cache_dir, timeout_s=cfg.timeout,
                      cache_limit=cache_limit_bytes(cfg.cache_limit), follow=cfg.follow,
                      text=text)
    return ClipLoader(lc, rank=rank, world_size=world_size)


def eval_loader(source: str, *, frames: int, stride: int, size: int, batch_size: int, workers: int,
                temporal_views: int = 1, spatial_views: int = 1, cache_dir: str | None = None,
                timeout_s: float = LoaderConfig.timeout_s, cache_limit: str | None = None,
                text: Any = None) -> ClipLoader:
    """A deterministic pass over ``source`` (centre/evenly spread crops), every sample once."""
    lc = LoaderConfig(source=source, frames=frames, stride=stride, size=size, train=False,
                      batch_size=batch_size, workers=workers, drop_last=False,
                      temporal_views=temporal_views, spatial_views=spatial_views, cache_dir=cache_dir,
                      timeout_s=timeout_s, cache_limit=cache_limit_bytes(cache_limit), text=text)
    return ClipLoader(lc, rank=0, world_size=1)


def val_loader_for(cfg: TrainConfig, text: Any = None) -> ClipLoader | None:
    """Single-view validation during training (rank 0), or None without ``val_data``."""
    if cfg.val_data is None:
        return None
    return eval_loader(cfg.val_data, frames=cfg.frames, stride=cfg.stride, size=cfg.size,
                       batch_size=cfg.batch_size, workers=cfg.workers, cache_dir=cfg.cache_dir,
                       timeout_s=cfg.timeout, cache_limit=cfg.cache_limit, text=text)


def eval_loader_for(cfg: EvalConfig, train_cfg: TrainConfig) -> ClipLoader:
    """Multi-view evaluation with the clip settings the model was trained with."""
    return eval_loader(cfg.data, frames=train_cfg.frames, stride=train_cfg.stride, size=train_cfg.size,
                       batch_size=cfg.batch_size, workers=cfg.workers, temporal_views=cfg.temporal_views,
                       spatial_views=cfg.spatial_views, cache_dir=cfg.cache_dir, timeout_s=cfg.timeout,
                       cache_limit=cfg.cache_limit)
