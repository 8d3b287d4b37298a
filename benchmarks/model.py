"""``vidshard bench model``: training-step time and peak memory of the fused attention path
(flash-attn / SDPA) against the plain reference path, measured in one run; and the FLOP count
behind the GPU plan in the README.

Step times are measured with the paths' steps interleaved in one process (fair under
load from other processes); peak memory on CPU in a fresh child process per path (its own
``ru_maxrss``), on CUDA with ``max_memory_allocated``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from vidshard.train.config import TrainConfig
from vidshard.train.model import ViTConfig

# (label, objective, attention impl): the rows of the table. "auto" is flash-attn on CUDA in
# bf16 when installed, else SDPA; the first row is the baseline the ratios refer to.
ROWS: list[tuple[str, str, str]] = [
    ("reference attention", "supervised", "reference"),
    ("fused attention (auto)", "supervised", "auto"),
    ("MAE pretraining, mask 0.9 (auto)", "mae", "auto"),  # encoder on the visible 10% of tokens
]


@dataclass(frozen=True, kw_only=True)
class ModelBenchConfig:
    """What ``bench model`` measures."""

    model: str = "vit-t"
    """Model preset."""
    frames: int = 16
    """Frames per clip."""
    size: int = 224
    """Crop side in pixels."""
    batch_size: int = 1
    """Clips per step."""
    steps: int = 3
    """Timed steps per path (after one untimed warm-up step); the median is reported."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    num_classes: int = 400
    """Classifier outputs."""
    threads: int = 0
    """CPU threads (0 = torch's default); 1 gives steadier figures on a machine shared with other jobs."""
    grad_checkpointing: bool = False
    """``--objective clip``: recompute the video blocks' activations in backward."""

    def __post_init__(self) -> None:
        ViTConfig.from_preset(self.model, frames=self.frames, img_size=self.size)  # validates all three
        if self.batch_size < 1 or self.steps < 1:
            raise ValueError("batch_size and steps must be at least 1")


def flops_per_clip(cfg: ViTConfig, frames: int | None = None, size: int | None = None) -> float:
    """Forward FLOPs (2 per multiply-add) of one clip through the encoder: patch embedding,
    per block q/k/v/proj (8 N D^2), attention scores and weighted sum (4 N^2 D), MLP (4 r N D^2)."""
    t, h, w = cfg.grid(frames, size)
    N, D = t * h * w, cfg.dim
    embed = 2 * N * D * cfg.in_chans * cfg.tubelet * cfg.patch_size**2
    block = 8 * N * D * D + 4 * N * N * D + 4 * cfg.mlp_ratio * N * D * D
    return float(embed + cfg.depth * block + 2 * D * cfg.num_classes)


def gpu_plan(preset: str = "vit-b", frames: int = 16, size: int = 224, mfu: float = 0.4
             ) -> list[dict[str, Any]]:
    """Expected training clips/s on one and eight GPUs from the FLOP count (train = 3x forward) at an
    assumed model-FLOPs utilisation ``mfu``, bf16 dense peak; eight GPUs at 90% scaling."""
    vit = ViTConfig.from_preset(preset, frames=frames, img_size=size, num_classes=400)
    train_flops = 3 * flops_per_clip(vit)
    peaks = {"A100 (312 TFLOP/s bf16)": 312e12, "H100 SXM (989 TFLOP/s bf16)": 989e12}
    out = []
    for gpu, peak in peaks.items():
        one = peak * mfu / train_flops
        out.append({"gpu": gpu, "train_tflop_per_clip": train_flops / 1e12, "mfu": mfu,
                    "clips_per_s_1": one, "clips_per_s_8": 8 * one * 0.9})
    return out


class _Path:
    """One row's model, optimizer and fixed batch; ``step()`` runs one timed training step."""

    def __init__(self, cfg: ModelBenchConfig, objective: str, impl: str, device: str) -> None:
        from vidshard.train.objectives import get_objective
        from vidshard.train.optim import build_optimizer

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(0)
        self.dev = torch.device(device)
        tc = TrainConfig(data="(bench)", model=cfg.model, frames=cfg.frames, size=cfg.size, attn_impl=impl,
                         objective=objective, batch_size=cfg.batch_size)
        self.obj = get_objective(objective)
        self.model = self.obj.build_model(tc, cfg.num_classes).to(self.dev).train()
        self.opt = build_optimizer(self.model, lr=1e-4, weight_decay=0.05, device=self.dev)
        B = cfg.batch_size
        self.batch = {"video": torch.randn(B, 3, cfg.frames, cfg.size, cfg.size, device=self.dev),
                      "label": torch.randint(0, cfg.num_classes, (B,), device=self.dev),
                      "valid": torch.ones(B, dtype=torch.bool, device=self.dev)}

    def step(self) -> float:
        t0 = time.perf_counter()
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda"):
            loss, _ = self.obj.loss(self.model, self.batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        return time.perf_counter() - t0


def _peak_mb(cfg: ModelBenchConfig, objective: str, impl: str, device: str) -> float:
    """Peak memory of two training steps of one path, over the state before them (MiB)."""
    path = _Path(cfg, objective, impl, device)
    if path.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(path.dev)
        before = torch.cuda.memory_allocated(path.dev)
        path.step(), path.step()
        return (torch.cuda.max_memory_allocated(path.dev) - before) / 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    path.step(), path.step()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: KiB on Linux, bytes on macOS
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale / 2**20


def run_bench(cfg: ModelBenchConfig) -> dict[str, Any]:
    """Measure every row of :data:`ROWS`; ratios are against the first row.

    Step times: all paths in this process, steps interleaved (path A, path B, A, B, ...) so load
    from other processes hits them alike; the median per path. Peak memory: on CPU a fresh child
    process per path (``ru_maxrss`` only ever grows), on CUDA ``max_memory_allocated`` per path.
    """
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    peaks = []
    for _, objective, impl in ROWS:
        if device == "cpu":
            with mp.get_context("spawn").Pool(1) as pool:
                peaks.append(pool.apply(_peak_mb, (cfg, objective, impl, device)))
        else:
            peaks.append(_peak_mb(cfg, objective, impl, device))
    paths = [_Path(cfg, objective, impl, device) for _, objective, impl in ROWS]
    times: list[list[float]] = [[] for _ in paths]
    for i in range(cfg.steps + 1):  # the first round warms up
        for p, ts in zip(paths, times, strict=True):
            t = p.step()
            if i:
                ts.append(t)
    rows = []
    for (label, objective, impl), ts, peak in zip(ROWS, times, peaks, strict=True):
        step_s = statistics.median(ts)
        rows.append({"path": label, "objective": objective, "attn_impl": impl, "step_s": step_s,
                     "clips_per_s": cfg.batch_size / step_s, "peak_mb": peak})
    base = rows[0]
    for r in rows:
        r["speedup"] = base["step_s"] / r["step_s"]
        r["memory_ratio"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
    vit = ViTConfig.from_preset(cfg.model, frames=cfg.frames, img_size=cfg.size, num_classes=cfg.num_classes)
    return {"config": asdict(cfg), "device": device, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "tokens": vit.grid()[0] * vit.grid()[1] * vit.grid()[2],
            "gflop_per_clip_forward": flops_per_clip(vit) / 1e9, "rows": rows, "gpu_plan": gpu_plan()}


def print_report(result: dict[str, Any], json_path: str | Path | None = None) -> None:
    """The table (rows, ratios against the first) and the GPU plan; optionally the JSON too."""
    from rich.console import Console
    from rich.table import Table

    c = result["config"]
    table = Table(title=f"{c['model']} {c['frames']}x{c['size']}x{c['size']}, batch {c['batch_size']}, "
                        f"{result['device']} ({result['threads']} threads), {result['tokens']} tokens/clip")
    for col in ("path", "step (s)", "clips/s", "peak memory (MiB)", "speed-up", "memory ratio"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for r in result["rows"]:
        table.add_row(r["path"], f"{r['step_s']:.3f}", f"{r['clips_per_s']:.2f}", f"{r['peak_mb']:.0f}",
                      f"{r['speedup']:.2f}x", f"{r['memory_ratio']:.2f}")
    plan = Table(title="GPU plan on paper: vit-b 16x224, training, from the FLOP count")
    for col in ("GPU", "TFLOP/clip", "MFU", "clips/s x1", "clips/s x8"):
        plan.add_column(col, justify="right")
    for p in result["gpu_plan"]:
        plan.add_row(p["gpu"], f"{p['train_tflop_per_clip']:.2f}", f"{p['mfu']:.0%}",
                     f"{p['clips_per_s_1']:.0f}", f"{p['clips_per_s_8']:.0f}")
    console = Console()
    console.print(table)
    console.print(plan)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_path}")


# == --objective clip: peak memory of each tower per batch size ==================================


def _tower_peak(cfg: ModelBenchConfig, tower: str, batch: int, text_model: str, device: str
                ) -> tuple[float, float]:
    """Peak memory (MiB, over the state before) and time (s) of a forward + backward of one tower of a
    clip model at ``batch`` clips or captions; run in a fresh process on CPU (``ru_maxrss``)."""
    from vidshard.train.clip import ClipObjective

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    tc = TrainConfig(data="(bench)", objective="clip", model=cfg.model, frames=cfg.frames, size=cfg.size,
                     text_model=text_model, grad_checkpointing=cfg.grad_checkpointing)
    model = ClipObjective().build_model(tc, 0).to(dev).train()
    if tower == "video":
        x = torch.randn(batch, 3, cfg.frames, cfg.size, cfg.size, device=dev)

        def run() -> torch.Tensor:
            return model.encode_video(x).sum()
    else:
        ids = torch.randint(0, model.text.config.vocab_size, (batch, model.spec.context), device=dev)
        ids[:, -1] = model.eos_id

        def run() -> torch.Tensor:
            return model.encode_text(ids).sum()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        run().backward()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20, time.perf_counter() - t0
    scale = 1 if sys.platform == "darwin" else 1024
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale / 2**20
    return peak, time.perf_counter() - t0


def clip_memory(cfg: ModelBenchConfig, batch_sizes: list[int], text_model: str = "clip-b16"
                ) -> dict[str, Any]:
    """Peak memory and time of a training forward + backward of the video and the text tower of a clip
    model, per batch size, each measurement in a fresh process (on CUDA: ``max_memory_allocated``)."""
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    rows = []
    for tower in ("video", "text"):
        for b in batch_sizes:
            with mp.get_context("spawn").Pool(1) as pool:
                peak, secs = pool.apply(_tower_peak, (cfg, tower, b, text_model, device))
            rows.append({"tower": tower, "batch": b, "peak_mb": peak, "mb_per_item": peak / b,
                         "step_s": secs})
    return {"config": asdict(cfg), "device": device, "text_model": text_model, "torch": torch.__version__,
            "rows": rows}


def print_clip_memory(result: dict[str, Any], json_path: str | Path | None = None) -> None:
    """The per-tower memory table (and the JSON when asked)."""
    from rich.console import Console
    from rich.table import Table

    c = result["config"]
    table = Table(title=f"clip towers: video {c['model']} {c['frames']}x{c['size']}x{c['size']}"
                        f"{' + grad checkpointing' if c['grad_checkpointing'] else ''}, text "
                        f"{result['text_model']}; forward + backward on {result['device']}")
    for col in ("tower", "batch", "peak memory (MiB)", "MiB per clip/caption", "time (s)"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(r["tower"], str(r["batch"]), f"{r['peak_mb']:.0f}", f"{r['mb_per_item']:.1f}",
                      f"{r['step_s']:.2f}")
    console = Console()
    console.print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_path}")
