"""``vidshard bench model``: training-step time and peak memory of the fused attention path
(flash-attn / SDPA) against the plain reference path, measured in one run; and the FLOP count
behind the GPU plan in the README.

Step times are measured with the paths' steps interleaved in one process (fair under
load from other processes); peak memory on CPU in a fresh child process per path (its own
``ru_maxrss``), on CUDA with ``max_memory_allocated``.

Per row also: achieved TFLOP/s (the training FLOPs of the step, 3x the forward count, over its
time) and MFU, their share of the device's peak dense bf16 rate (:data:`PEAK_BF16_TFLOPS` by GPU
name, or ``peak_tflops``); on CUDA, with ``fit``, the largest batch that fits in memory with and
without gradient checkpointing (:func:`largest_batch`: doubling, then bisection).
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
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
    peak_tflops: float | None = None
    """The device's peak dense bf16 TFLOP/s for MFU; default: looked up by GPU name (none on CPU)."""
    fit: bool = True
    """On CUDA: search the largest batch that fits, with and without gradient checkpointing."""
    fit_limit: int = 4096
    """Largest batch the fit search tries."""
    grad_checkpointing: bool = False
    """``--objective clip``: recompute the video blocks' activations in backward."""

    def __post_init__(self) -> None:
        ViTConfig.from_preset(self.model, frames=self.frames, img_size=self.size)  # validates all three
        if self.batch_size < 1 or self.steps < 1 or self.fit_limit < 1:
            raise ValueError("batch_size, steps and fit_limit must be at least 1")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be positive, got {self.peak_tflops}")


# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by a substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("RTX 6000 Ada", 364.0), ("RTX A6000", 155.0), ("A40", 150.0), ("A30", 165.0),
    ("RTX 4090", 165.0), ("RTX 3090", 71.0),
]


def peak_tflops_for(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s of a GPU by its name; None when unknown (or without bf16 tensor cores)."""
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def largest_batch(fits: Callable[[int], bool], limit: int, start: int = 1) -> int:
    """The largest batch ``b <= limit`` with ``fits(b)``, assuming ``fits`` is monotone (a batch that
    fits means every smaller one does): double from ``start`` until one does not fit, then bisect.
    0 when not even ``start`` fits. Calls ``fits`` O(log limit) times."""
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(2 * good, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    if bad is None:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def flops_per_clip(cfg: ViTConfig, frames: int | None = None, size: int | None = None) -> float:
    """Forward FLOPs (2 per multiply-add) of one clip through the encoder: patch embedding,
    per block q/k/v/proj (8 N D^2), attention scores and weighted sum (4 N^2 D), MLP (4 r N D^2)."""
    t, h, w = cfg.grid(frames, size)
    N, D = t * h * w, cfg.dim
    embed = 2 * N * D * cfg.in_chans * cfg.tubelet * cfg.patch_size**2
    block = 8 * N * D * D + 4 * N * N * D + 4 * cfg.mlp_ratio * N * D * D
    return float(embed + cfg.depth * block + 2 * D * cfg.num_classes)


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one transformer block over ``tokens`` tokens of width ``dim``."""
    N, D = tokens, dim
    return 8 * N * D * D + 4 * N * N * D + 4 * mlp_ratio * N * D * D


def train_flops_per_clip(objective: str, vit: ViTConfig, mask_ratio: float = 0.9, decoder_dim: int = 192,
                         decoder_depth: int = 4) -> float:
    """Training FLOPs of one clip (forward + backward = 3x forward). MAE: the encoder sees only the
    visible tubes, the decoder every token, its last linear predicts every pixel."""
    if objective != "mae":
        return 3 * flops_per_clip(vit)
    from vidshard.train.mae import num_masked

    t, h, w = vit.grid()
    n, visible = t * h * w, t * (h * w - num_masked(mask_ratio, h * w))
    D, d, pixels = vit.dim, decoder_dim, vit.in_chans * vit.tubelet * vit.patch_size**2
    embed = 2 * n * D * pixels
    encoder = vit.depth * block_flops(visible, D, vit.mlp_ratio)
    decoder = 2 * visible * D * d + decoder_depth * block_flops(n, d, vit.mlp_ratio) + 2 * n * d * pixels
    return 3 * float(embed + encoder + decoder)


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

    def __init__(self, cfg: ModelBenchConfig, objective: str, impl: str, device: str,
                 grad_checkpointing: bool = False) -> None:
        from vidshard.train.objectives import get_objective
        from vidshard.train.optim import build_optimizer

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(0)
        self.dev = torch.device(device)
        tc = TrainConfig(data="(bench)", model=cfg.model, frames=cfg.frames, size=cfg.size, attn_impl=impl,
                         objective=objective, batch_size=cfg.batch_size,
                         grad_checkpointing=grad_checkpointing)
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


def _fits(cfg: ModelBenchConfig, objective: str, batch: int, checkpointing: bool, device: str) -> bool:
    """Whether one training step at ``batch`` clips runs without running out of GPU memory."""
    try:
        path = _Path(replace(cfg, batch_size=batch), objective, "auto", device, checkpointing)
        path.step()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        path = None  # free the model and activations before the next try
        gc.collect()
        torch.cuda.empty_cache()


def fit_rows(cfg: ModelBenchConfig, device: str) -> list[dict[str, Any]]:
    """The largest batch per objective that fits on the GPU, without and with gradient checkpointing."""
    rows = []
    for objective in ("supervised", "mae"):
        for checkpointing in (False, True):
            best = largest_batch(lambda b, o=objective, c=checkpointing: _fits(cfg, o, b, c, device),
                                 cfg.fit_limit)
            rows.append({"objective": objective, "grad_checkpointing": checkpointing, "largest_batch": best})
    return rows


def throughput(row: dict[str, Any], cfg: ModelBenchConfig, peak_tflops: float | None) -> dict[str, Any]:
    """A row's achieved TFLOP/s (training FLOPs of the step over its time) and MFU against the peak."""
    vit = ViTConfig.from_preset(cfg.model, frames=cfg.frames, img_size=cfg.size,
                                num_classes=cfg.num_classes if row["objective"] != "mae" else 0)
    flops = train_flops_per_clip(row["objective"], vit) * cfg.batch_size
    tflops = flops / row["step_s"] / 1e12
    return {"train_tflop_per_step": flops / 1e12, "tflops": tflops,
            "mfu": tflops / peak_tflops if peak_tflops else None}


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
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu"
    peak = cfg.peak_tflops or (peak_tflops_for(name) if cuda else None)
    base = rows[0]
    for r in rows:
        r["speedup"] = base["step_s"] / r["step_s"]
        r["memory_ratio"] = r["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")
        r.update(throughput(r, cfg, peak))
    vit = ViTConfig.from_preset(cfg.model, frames=cfg.frames, img_size=cfg.size, num_classes=cfg.num_classes)
    return {"config": asdict(cfg), "device": device, "device_name": name, "peak_tflops": peak,
            "fit": fit_rows(cfg, device) if cuda and cfg.fit else None, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "tokens": vit.grid()[0] * vit.grid()[1] * vit.grid()[2],
            "gflop_per_clip_forward": flops_per_clip(vit) / 1e9, "rows": rows, "gpu_plan": gpu_plan()}


def print_report(result: dict[str, Any], json_path: str | Path | None = None) -> None:
    """The table (rows, ratios against the first) and the GPU plan; optionally the JSON too."""
    from rich.console import Console
    from rich.table import Table

    c = result["config"]
    table = Table(title=f"{c['model']} {c['frames']}x{c['size']}x{c['size']}, batch {c['batch_size']}, "
                        f"{result['device']} ({result['threads']} threads), {result['tokens']} tokens/clip")
    for col in ("path", "step (s)", "clips/s", "TFLOP/s", "MFU", "peak memory (MiB)", "speed-up",
                "memory ratio"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for r in result["rows"]:
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        table.add_row(r["path"], f"{r['step_s']:.3f}", f"{r['clips_per_s']:.2f}", f"{r['tflops']:.3f}", mfu,
                      f"{r['peak_mb']:.0f}", f"{r['speedup']:.2f}x", f"{r['memory_ratio']:.2f}")
    table.caption = (f"{result['device_name']}: MFU against a peak of {result['peak_tflops']} TFLOP/s bf16"
                     if result["peak_tflops"] else "MFU: no peak known for this device (give --peak-tflops)")
    plan = Table(title="GPU plan on paper: vit-b 16x224, training, from the FLOP count")
    for col in ("GPU", "TFLOP/clip", "MFU", "clips/s x1", "clips/s x8"):
        plan.add_column(col, justify="right")
    for p in result["gpu_plan"]:
        plan.add_row(p["gpu"], f"{p['train_tflop_per_clip']:.2f}", f"{p['mfu']:.0%}",
                     f"{p['clips_per_s_1']:.0f}", f"{p['clips_per_s_8']:.0f}")
    console = Console()
    console.print(table)
    if result.get("fit"):
        fit = Table(title=f"largest batch that fits on {result['device_name']} (fused attention, bf16)")
        for col in ("objective", "grad checkpointing", "largest batch"):
            fit.add_column(col, justify="right")
        for r in result["fit"]:
            fit.add_row(r["objective"], "yes" if r["grad_checkpointing"] else "no", str(r["largest_batch"]))
        console.print(fit)
    console.print(plan)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_path}")
