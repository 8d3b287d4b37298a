"""``vidshard bench model --objective clip``: peak memory and time of a training forward and backward
of each tower of a video-text model (video ViT, CLIP text transformer) per batch size, each measurement
in a fresh process (CPU: growth of ``ru_maxrss``; CUDA: ``max_memory_allocated``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from vidshard.benchmarks.model import ModelBenchConfig
from vidshard.train.config import TrainConfig


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
