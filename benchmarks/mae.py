"""Does masked pretraining pay off? Both of issue 6's criteria, measured in one run on generated videos.

1. Reconstruction: pretraining drives the masked-tubelet loss well below the loss of
   predicting the mean (for per-tubelet normalised targets: predicting zeros, about 1.0),
   on held-out clips of ``testsrc2`` and ``mandelbrot`` videos at the default mask ratio.
2. Fine-tuning: on a small labeled set of moving-square clips (the class is the direction
   of motion; the square is checkered, because VideoMAE's per-tubelet targets are all zeros
   on a flat tubelet), a classifier started from the MAE encoder (pretrained on unlabeled clips of
   the same kind, ``--init-from`` style: decoder dropped, new head, layer-wise lr decay,
   drop-path) reaches a target accuracy on held-out clips in fewer steps than the same
   classifier from scratch.

Run ``python -m vidshard.benchmarks.mae`` (about 2 minutes on 2 CPU cores); tests run a
smaller configuration of the same functions.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..preprocess.ffmpeg import Synth, synth_video
from ..train.checkpoint import encoder_state
from ..train.data import normalize
from ..train.mae import MAEConfig, MaskedVideoAutoencoder, build_mae, masked_mse
from ..train.model import VideoViT, ViTConfig
from ..train.optim import build_optimizer

DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # right, left, down, up: the motion classes


@dataclass(frozen=True, kw_only=True)
class MAEBenchConfig:
    """Sizes of the MAE benchmark (defaults: the full run; tests shrink them)."""

    size: int = 32
    """Clip side in pixels (videos are made at twice this and average-pooled)."""
    frames: int = 8
    """Frames per clip."""
    dim: int = 64
    """Encoder width (a small ViT: this runs on CPU)."""
    depth: int = 4
    """Encoder blocks."""
    recon_steps: int = 300
    """Pretraining steps for the reconstruction criterion."""
    recon_mask_ratio: float = 0.9
    """Mask ratio for the reconstruction criterion (the default of ``--mask-ratio``)."""
    pretrain_steps: int = 400
    """MAE steps on unlabeled moving-square clips before fine-tuning."""
    motion_mask_ratio: float = 0.6
    """Mask ratio for the motion pretraining (a 4x4 grid leaves too little visible at 0.9)."""
    finetune_steps: int = 150
    """Fine-tuning steps, from the MAE encoder and from scratch alike."""
    eval_every: int = 20
    """Held-out accuracy is measured every this many fine-tuning steps."""
    target_acc: float = 0.6
    """Accuracy (4 classes, chance 0.25) whose first crossing is compared."""
    box: int = 32
    """Side of the moving square in video pixels (the frame is ``2 * size``; clips are pooled 2x)."""
    speed: float = 48.0
    """Speed of the square in video pixels per second (it wraps around the frame)."""
    checker: int = 6
    """Checker cells painted on the moving square, in video pixels (3 clip pixels, so the pattern's
    period is not the patch's; 0: a flat square, whose tubelets have all-zero VideoMAE targets except
    on its edges, which leaves the motion pretraining little to learn)."""
    labeled_starts: int = 2
    """Labeled videos per direction (few labels, as in a lab)."""
    unlabeled_starts: int = 4
    """Unlabeled videos per direction for pretraining."""
    batch_size: int = 16
    """Clips per step."""
    lr: float = 1e-3
    """Learning rate (AdamW, constant) for pretraining."""
    finetune_lr: float = 2e-3
    """Learning rate (AdamW, constant) for fine-tuning, from the MAE encoder and from scratch alike."""
    layer_decay: float = 0.75
    """Layer-wise lr decay when fine-tuning from the MAE encoder."""
    drop_path: float = 0.1
    """Drop-path when fine-tuning (both arms)."""
    seed: int = 0
    """Seed of data, init, masks and batches."""

    def __post_init__(self) -> None:
        if self.size % 8 or self.frames % 2:
            raise ValueError("size must be a multiple of 8 and frames even (8-pixel, 2-frame tubelets)")
        if min(self.recon_steps, self.pretrain_steps, self.finetune_steps, self.eval_every) < 1:
            raise ValueError("step counts must be >= 1")

    def vit(self, num_classes: int = 0, drop_path: float = 0.0) -> ViTConfig:
        return ViTConfig(dim=self.dim, depth=self.depth, heads=max(1, self.dim // 32), patch_size=8,
                         tubelet=2, frames=self.frames, img_size=self.size, num_classes=num_classes,
                         drop_path=drop_path)

    def mae(self, mask_ratio: float) -> MAEConfig:
        return MAEConfig(mask_ratio=mask_ratio, decoder_dim=self.dim, decoder_depth=2)


# --- Data: generated videos decoded into clip tensors -----------------------------------------


def decode_clips(path: Path, frames: int, size: int, step: int) -> Tensor:
    """All ``frames``-long clips (every ``step`` frames) of a video: ``(N, C, T, size, size)`` uint8."""
    with av.open(str(path)) as container:
        video = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (T, H, W, 3)
    x = torch.from_numpy(video).permute(3, 0, 1, 2).float()  # (C, T, H, W)
    x = F.adaptive_avg_pool3d(x, (x.shape[1], size, size)).round().to(torch.uint8)
    starts = range(0, x.shape[1] - frames + 1, step)
    return torch.stack([x[:, s:s + frames] for s in starts])


def pattern_clips(root: Path, patterns: tuple[str, ...], cfg: MAEBenchConfig) -> Tensor:
    """Overlapping clips of 2-second ``testsrc2``/``mandelbrot`` videos: ``(N, C, T, H, W)`` uint8."""
    out = []
    for p in patterns:
        path = synth_video(root / f"{p}.mp4", Synth(pattern=p, seconds=2.0, width=2 * cfg.size,
                                                     height=2 * cfg.size))
        out.append(decode_clips(path, cfg.frames, cfg.size, step=2))
    return torch.cat(out)


def motion_clips(root: Path, starts: int, seed: int, cfg: MAEBenchConfig, step: int = 4
                 ) -> tuple[Tensor, Tensor]:
    """Clips of a checkered square moving right/left/down/up from random starts: (clips uint8, labels)."""
    rng = np.random.default_rng(seed)
    side, box, clips, labels = 2 * cfg.size, cfg.box, [], []
    for label, (dx, dy) in enumerate(DIRECTIONS):
        for i in range(starts):
            start = (float(rng.integers(0, side - box)), float(rng.integers(0, side - box)))
            spec = Synth(pattern="moving", seconds=2.0, width=side, height=side, box=box, start=start,
                         velocity=(cfg.speed * dx, cfg.speed * dy), checker=cfg.checker)
            c = decode_clips(synth_video(root / f"m{seed}_{label}_{i}.mp4", spec), cfg.frames, cfg.size, step)
            clips.append(c)
            labels.append(torch.full((len(c),), label))
    return torch.cat(clips), torch.cat(labels)


def _batch(clips: Tensor, n: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, len(clips), (n,), generator=gen)


# --- The two arms -------------------------------------------------------------------------------


def pretrain(model: MaskedVideoAutoencoder, clips: Tensor, steps: int, cfg: MAEBenchConfig) -> list[float]:
    """MAE steps on uint8 clips (AdamW, constant lr); returns the training losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=0.05, device=torch.device("cpu"))
    model.train()
    losses = []
    for _ in range(steps):
        video = normalize(clips[_batch(clips, cfg.batch_size, gen)], torch.device("cpu"))
        loss, _, _ = model(video, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def held_out_loss(model: MaskedVideoAutoencoder, clips: Tensor, seed: int = 1) -> tuple[float, float]:
    """(masked loss, loss of predicting the mean) on ``clips`` with one fixed set of tube masks.

    The mean of a per-tubelet normalised target is 0, so the baseline predicts zeros
    (for raw-pixel targets: the mean target over all clips and tubelets).
    """
    model.eval()
    video = normalize(clips, torch.device("cpu"))
    loss, pred, mask = model(video, torch.Generator().manual_seed(seed))
    target = model.targets(video)  # (B, N, L)
    mean = torch.zeros_like(target) if model.cfg.norm_pix_loss else target.mean((0, 1), keepdim=True)
    return loss.item(), masked_mse(mean.expand_as(target), target, mask).item()


def finetune_curve(init: dict[str, Tensor] | None, data: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                   cfg: MAEBenchConfig) -> list[tuple[int, float]]:
    """Train a classifier (from an encoder state or from scratch); held-out accuracy every eval_every.

    From an encoder, the blocks get layer-wise decayed learning rates (constant over the run).
    """
    torch.manual_seed(cfg.seed + 1)
    model = VideoViT(cfg.vit(num_classes=len(DIRECTIONS), drop_path=cfg.drop_path))
    if init is not None:
        model.load_state_dict(init, strict=False)  # the new head stays at its init
    opt = build_optimizer(model, lr=cfg.finetune_lr, weight_decay=0.05, device=torch.device("cpu"),
                          layer_decay=cfg.layer_decay if init is not None else 1.0)
    gen, cpu, curve = torch.Generator().manual_seed(cfg.seed + 2), torch.device("cpu"), []
    (x, y), (xt, yt) = data, test
    for step in range(1, cfg.finetune_steps + 1):
        model.train()
        idx = _batch(x, cfg.batch_size, gen)
        loss = F.cross_entropy(model(normalize(x[idx], cpu)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(normalize(xt, cpu)).argmax(-1) == yt).float().mean().item()
            curve.append((step, acc))
    return curve


def steps_to(curve: list[tuple[int, float]], acc: float) -> int | None:
    """First step at which the held-out accuracy reached ``acc`` (None: never within the run)."""
    return next((s for s, a in curve if a >= acc), None)


# --- The benchmark -----------------------------------------------------------------------------


def run_mae_bench(cfg: MAEBenchConfig = MAEBenchConfig(), log=print) -> dict:
    """Measure both criteria in one run; returns the figures (see the module docstring)."""
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="vidshard-mae-bench-") as tmp:
        root = Path(tmp)
        textured = pattern_clips(root, ("testsrc2", "mandelbrot"), cfg)
        unlabeled, _ = motion_clips(root, cfg.unlabeled_starts, cfg.seed + 10, cfg)  # labels unused
        labeled = motion_clips(root, cfg.labeled_starts, cfg.seed + 20, cfg, step=8)
        test = motion_clips(root, 3, cfg.seed + 30, cfg, step=8)
    held = torch.arange(len(textured)) % 4 == 1  # every 4th clip is held out of pretraining
    out: dict = {"config": asdict(cfg)}

    t0 = time.perf_counter()
    mae = build_mae(cfg.vit(), cfg.mae(cfg.recon_mask_ratio))
    before, baseline = held_out_loss(mae, textured[held])
    losses = pretrain(mae, textured[~held], cfg.recon_steps, cfg)
    after, _ = held_out_loss(mae, textured[held])
    out["reconstruction"] = {"mean_baseline": baseline, "before": before, "after": after,
                             "ratio_to_baseline": after / baseline, "train_loss_last": losses[-1],
                             "seconds": time.perf_counter() - t0}
    log(f"reconstruction (mask {cfg.recon_mask_ratio:.0%}, {cfg.recon_steps} steps): held-out masked loss "
        f"{before:.3f} -> {after:.3f}, predict-the-mean {baseline:.3f} ({after / baseline:.0%} of it)")

    t0 = time.perf_counter()
    mae = build_mae(cfg.vit(), cfg.mae(cfg.motion_mask_ratio))
    pretrain(mae, unlabeled, cfg.pretrain_steps, cfg)
    init = encoder_state({"model": mae.state_dict()})  # what --init-from loads: decoder dropped
    pre = finetune_curve(init, labeled, test, cfg)
    scratch = finetune_curve(None, labeled, test, cfg)
    out["finetune"] = {"target_acc": cfg.target_acc, "steps_pretrained": steps_to(pre, cfg.target_acc),
                       "steps_scratch": steps_to(scratch, cfg.target_acc), "curve_pretrained": pre,
                       "curve_scratch": scratch, "labeled_clips": len(labeled[1]), "test_clips": len(test[1]),
                       "unlabeled_clips": len(unlabeled), "seconds": time.perf_counter() - t0}
    fmt, ft = " ".join, out["finetune"]
    log(f"fine-tune to {cfg.target_acc:.0%} held-out accuracy ({len(labeled[1])} labeled clips): "
        f"from MAE {ft['steps_pretrained']} steps, from scratch {ft['steps_scratch']} (None: not reached)")
    log(f"  accuracy from MAE:     {fmt(f'{a:.2f}' for _, a in pre)}")
    log(f"  accuracy from scratch: {fmt(f'{a:.2f}' for _, a in scratch)}")
    return out


def main() -> None:
    """``python -m vidshard.benchmarks.mae [--json]``."""
    import sys

    torch.set_num_threads(1)  # spinning thread pools fight on shared cores; one is steadier
    result = run_mae_bench()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
