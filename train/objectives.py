"""Training objectives: what model a run builds and what loss a step minimises.

The loop is objective-agnostic: it asks :func:`get_objective` for an object with
``build_model(cfg, num_classes)`` and ``loss(model, batch)``. Adding an objective
is one line in :data:`OBJECTIVES`.

The batch an objective gets holds at least:

- ``video``: ``(B, C, T, H, W)`` float, ImageNet-normalised, on the training device;
- ``label``: ``(B,)`` int64 on the device, -1 = unlabeled;
- ``valid``: ``(B,)`` bool on the device, False for padding clips (a rank that came up short
  repeats clips to fill its quota), which every loss and metric must leave out.

Other keys (sample keys, tokenised text, ...) pass through from the loader untouched.
Metrics are 0-dim tensors on the device: the loop sums them without waiting for the
GPU and reads them (one host sync) only when it logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip import ClipObjective
from .config import TrainConfig
from .mae import MAEObjective
from .model import VideoViT, ViTConfig


class Objective(Protocol):
    needs_labels: bool
    """Whether the shard set must be labeled."""
    beta2: float
    """AdamW beta2 this objective trains with unless ``--beta2`` says otherwise."""

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module: ...

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]: ...


def vit_config(cfg: TrainConfig, num_classes: int) -> ViTConfig:
    """The encoder config a training config asks for."""
    return ViTConfig.from_preset(
        cfg.model, frames=cfg.frames, img_size=cfg.size, num_classes=num_classes, drop_path=cfg.drop_path,
        pos_embed=cfg.pos_embed, pool=cfg.pool, grad_checkpointing=cfg.grad_checkpointing,
        attn_impl=cfg.attn_impl)


def masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` (B,) over ``keep`` (B,) bool; 0 (still part of the graph) when none is kept."""
    keep = keep.to(values.dtype)
    return (values * keep).sum() / keep.sum().clamp(min=1.0)


class Supervised:
    """Classification from the shard set's labels: cross-entropy with label smoothing."""

    needs_labels = True
    beta2 = 0.999

    def __init__(self) -> None:
        self.label_smoothing = 0.0

    def build_model(self, cfg: TrainConfig, num_classes: int) -> nn.Module:
        if num_classes < 1:
            raise ValueError("supervised training needs a labeled shard set (the manifest has no classes); "
                             "preprocess with labels, or use --objective mae")
        self.label_smoothing = cfg.label_smoothing
        return VideoViT(vit_config(cfg, num_classes))

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean cross-entropy over the valid, labeled clips; ``acc``: their top-1 accuracy."""
        labels = batch["label"]  # (B,)
        keep = (labels >= 0) & batch["valid"]  # (B,)
        logits = model(batch["video"])  # (B, K)
        per_clip = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none",
                                   label_smoothing=self.label_smoothing)  # (B,)
        with torch.no_grad():
            hits = (logits.argmax(-1) == labels).float()  # (B,)
        return masked_mean(per_clip, keep), {"acc": masked_mean(hits, keep)}


OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "supervised": Supervised,
    "mae": MAEObjective,
    "clip": ClipObjective,
}


def get_objective(name: str) -> Objective:
    """A fresh objective object by name (``supervised``, ``mae``, ``clip``)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()
