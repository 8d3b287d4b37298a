"""Training objectives: what model a run builds and what loss a step minimises.

The loop is objective-agnostic: it asks :func:`get_objective` for an object with
``build_model(cfg, num_classes)`` and ``loss(model, video, labels)``. Adding an
objective is one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TrainConfig
from .mae import MAEObjective
from .model import VideoViT, ViTConfig


class Objective(Protocol):
    needs_labels: bool
    """Whether the shard set must be labeled."""

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module: ...

    def loss(self, model: nn.Module, video: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]: ...


def vit_config(cfg: TrainConfig, num_classes: int) -> ViTConfig:
    """The encoder config a training config asks for."""
    return ViTConfig.from_preset(
        cfg.model, frames=cfg.frames, img_size=cfg.size, num_classes=num_classes, drop_path=cfg.drop_path,
        pos_embed=cfg.pos_embed, pool=cfg.pool, grad_checkpointing=cfg.grad_checkpointing,
        attn_impl=cfg.attn_impl)


class Supervised:
    """Classification from the shard set's labels: cross-entropy with label smoothing."""

    needs_labels = True

    def __init__(self) -> None:
        self.label_smoothing = 0.0

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        if num_classes < 1:
            raise ValueError("supervised training needs a labeled shard set (the manifest has no classes); "
                             "preprocess with labels, or use --objective mae")
        self.label_smoothing = cfg.label_smoothing
        return VideoViT(vit_config(cfg, num_classes))

    def loss(self, model: nn.Module, video: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        """video: (B, C, T, H, W) normalised float; labels: (B,) int64, -1 = unlabeled (ignored)."""
        logits = model(video)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=-1, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            valid = labels >= 0
            hits = (logits.argmax(-1)[valid] == labels[valid]).float()
        return loss, {"acc": hits.mean().item() if valid.any() else 0.0}


OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "supervised": Supervised,
    "mae": MAEObjective,
}


def get_objective(name: str) -> Objective:
    """A fresh objective object by name (``supervised``, ``mae``)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()
