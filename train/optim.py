"""AdamW with per-parameter weight decay and layer-wise lr decay, and the lr schedule.

The schedule is a pure function of the step (:func:`lr_at`), so restoring the step
restores the schedule.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token")


def lr_at(step: int, *, total: int, base_lr: float, warmup: int, min_lr: float = 0.0) -> float:
    """Learning rate before optimizer step ``step`` (0-based): linear warm-up to ``base_lr`` over
    ``warmup`` steps, then cosine decay to ``min_lr`` at step ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for ``blocks.i.``, ``depth + 1`` for everything after (norm, head,
    an MAE decoder). An ``encoder.`` prefix (MAE) is looked through."""
    name = name.removeprefix("encoder.").removeprefix("module.").removeprefix("_orig_mod.")
    if name.startswith(_EMBED_NAMES):
        return 0
    m = _BLOCK_RE.search(name)
    if m and not name.startswith("decoder"):
        return int(m.group(1)) + 1
    return depth + 1


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """Biases, norm weights (1-D), positional embeddings and tokens are not decayed."""
    return p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token"))


def param_groups(model: nn.Module, *, weight_decay: float, layer_decay: float = 1.0,
                 depth: int | None = None) -> list[dict[str, Any]]:
    """AdamW groups keyed by (layer, decay?); each carries ``lr_scale`` = layer_decay^(depth+1-layer).

    ``depth`` defaults to the number of ``blocks.i`` in the model.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if depth is None:
        ids = [int(m.group(1)) for n, _ in named if (m := _BLOCK_RE.search(n)) and "decoder" not in n]
        depth = max(ids) + 1 if ids else 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        lid, nd = layer_id(name, depth), no_weight_decay(name, p)
        g = groups.setdefault((lid, nd), {
            "params": [], "names": [], "weight_decay": 0.0 if nd else weight_decay,
            "lr_scale": layer_decay ** (depth + 1 - lid), "layer": lid})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float = 1.0,
                    betas: tuple[float, float] = (0.9, 0.999), device: torch.device | None = None
                    ) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel on CUDA."""
    groups = param_groups(model, weight_decay=weight_decay, layer_decay=layer_decay)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    fused = device is not None and device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set each group's lr to ``lr`` times its ``lr_scale``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
