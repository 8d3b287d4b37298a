"""Look at what a masked-autoencoder checkpoint reconstructs (``vidshard inspect --reconstruct``).

For each of a few samples the sheet shows three rows of frames: the original
clip, the clip as the encoder sees it (masked tubes greyed out) and the
reconstruction (visible tubes from the original, masked ones from the decoder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..shards.sheet import save_sheet
from .data import MEAN, STD, eval_loader, normalize
from .evaluate import model_from_checkpoint
from .mae import MaskedVideoAutoencoder

MAX_COLUMNS = 8  # frames per row
MASK_GREY = 0.35  # masked tubes are drawn as the frame dimmed to this share, so the layout stays visible


def to_uint8(video: Tensor) -> Tensor:
    """Normalised float ``(B, C, T, H, W)`` -> uint8 RGB with the ImageNet mean and std undone."""
    mean = torch.tensor(MEAN, device=video.device).view(3, 1, 1, 1)
    std = torch.tensor(STD, device=video.device).view(3, 1, 1, 1)
    return (video * std + mean).mul(255.0).round().clamp(0, 255).to(torch.uint8)


def reconstruction_rows(model: MaskedVideoAutoencoder, video_u8: Tensor, seed: int = 0
                        ) -> list[tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]]:
    """Per clip: (original, masked, reconstructed) frames as ``(H, W, 3)`` uint8 arrays.

    ``video_u8``: ``(B, C, T, H, W)`` uint8 as the loader gives it. One frame per
    tubelet is drawn (at most :data:`MAX_COLUMNS`); the mask is a fixed-seed tube mask.
    """
    device = next(model.parameters()).device
    video = normalize(video_u8, device)  # (B, C, T, H, W) float
    model.eval()
    recon, pixel_mask = model.reconstruct(video, torch.Generator().manual_seed(seed))  # (B, C, T, H, W) x2
    original = video_u8.to(device)
    masked = torch.where(pixel_mask.bool(), (original.float() * MASK_GREY).to(torch.uint8), original)
    filled = torch.where(pixel_mask.bool(), to_uint8(recon), original)
    frames = list(range(0, video.shape[2], model.tubelet))[:MAX_COLUMNS]

    def row(clip: Tensor) -> list[np.ndarray]:  # (C, T, H, W) uint8 -> frames
        return [clip[:, t].permute(1, 2, 0).cpu().numpy() for t in frames]

    return [(row(original[b]), row(masked[b]), row(filled[b])) for b in range(video.shape[0])]


def save_reconstruction_sheet(checkpoint: str, source: str, sheet: Path, samples: int = 4) -> Path:
    """Draw original, masked and reconstructed frames of ``samples`` clips of ``source`` into ``sheet``.

    ``checkpoint`` is a ``vidshard train --objective mae`` checkpoint (or its run
    folder); clips are read like evaluation reads them (centre crop, the frames,
    stride and size the model was trained with). Returns the written path.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    model, cfg, ckpt = model_from_checkpoint(checkpoint, torch.device("cpu"))
    if not isinstance(model, MaskedVideoAutoencoder):
        raise ValueError(f"{checkpoint}: a {ckpt['objective']!r} checkpoint has no decoder to reconstruct "
                         "with; pass one written by `vidshard train --objective mae`")
    loader = eval_loader(source, frames=cfg.frames, stride=cfg.stride, size=cfg.size, batch_size=samples,
                         workers=0, cache_dir=cfg.cache_dir)
    batch = next(iter(loader), None)
    if batch is None or len(batch["key"]) == 0:
        raise ValueError(f"{source}: no clip could be read from this shard set to reconstruct")
    video = batch["video"]  # (B, C, T, H, W), or (B, V, C, T, H, W) with views: take the first
    video = video[:, 0] if video.ndim == 6 else video
    rows: list[list[np.ndarray]] = []
    titles: list[str] = []
    ratio = f"{model.cfg.mask_ratio:.0%}"
    for key, (orig, masked, filled) in zip(batch["key"], reconstruction_rows(model, video),
                                           strict=True):
        rows += [orig, masked, filled]
        titles += [key, f"masked {ratio}", "reconstruction"]
    return save_sheet(rows, sheet, row_titles=titles)
