"""``vidshard eval``: top-1 / top-5 and per-class accuracy of a checkpoint, several views per sample.

Each sample is seen as ``temporal_views x spatial_views`` clips; the softmax
scores of the views are averaged before taking the top-k.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from ..shards.loader import ClipLoader
from ..shards.schema import atomic_write
from .checkpoint import load_checkpoint
from .config import EvalConfig, TrainConfig
from .distributed import pick_device


def view_scores(model: nn.Module, video: torch.Tensor) -> torch.Tensor:
    """Class probabilities averaged over views: (B, C, T, H, W) or (B, V, C, T, H, W) -> (B, K)."""
    if video.ndim == 5:
        video = video[:, None]
    B, V = video.shape[:2]
    logits = model(video.flatten(0, 1))  # (B*V, K)
    return logits.float().softmax(-1).view(B, V, -1).mean(1)


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader: Any, device: torch.device, classes: list[str],
                   progress: Progress | None = None) -> dict[str, Any]:
    """Accuracy of ``model`` over every batch of ``loader`` (labels -1 are skipped)."""
    from .data import normalize

    was_training = model.training
    model.eval()
    K = len(classes)
    hits = torch.zeros(2, dtype=torch.long)  # top-1, top-5 hits
    per_class = torch.zeros(K, 2, dtype=torch.long)  # (hits, samples) per class
    task = progress.add_task("eval", total=len(loader)) if progress is not None else None
    for batch in loader:
        labels = batch["label"]
        keep = labels >= 0  # unlabeled clips and clips repeated to fill a quota do not count
        if "valid" in batch:
            keep &= torch.as_tensor(batch["valid"], dtype=torch.bool)
        if keep.any():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                scores = view_scores(model, normalize(batch["video"][keep], device)).cpu()  # (B, K)
            topk = scores.topk(min(5, K), dim=-1).indices  # (B, k)
            y = labels[keep]
            top1 = topk[:, 0] == y
            hits += torch.stack([top1.sum(), (topk == y[:, None]).any(-1).sum()])
            per_class.index_add_(0, y, torch.stack([top1.long(), torch.ones_like(y)], dim=1))
        if task is not None:
            progress.advance(task)
    model.train(was_training)
    n = int(per_class[:, 1].sum())
    return {
        "samples": n,
        "top1": hits[0].item() / n if n else 0.0,
        "top5": hits[1].item() / n if n else 0.0,
        "per_class": {name: {"accuracy": (h / c if c else None), "samples": c}
                      for name, (h, c) in zip(classes, per_class.tolist(), strict=True)},
    }


def model_from_checkpoint(path: str | Path, device: torch.device) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild the trained model from a checkpoint alone (objective + config stored in it)."""
    from .objectives import get_objective

    ckpt = load_checkpoint(path, skip=("optimizer", "rng"))  # on the CPU, without what eval does not use
    cfg = TrainConfig.from_dict(ckpt["config"])
    objective = get_objective(ckpt["objective"])
    if hasattr(objective, "restore"):  # objectives whose model needs more than the config (clip: text spec)
        objective.restore(ckpt["model"])
    model = objective.build_model(cfg, ckpt["num_classes"])
    model.load_state_dict(ckpt.pop("model"))
    return model.to(device), cfg, ckpt


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN`` for ``RUN`` or ``RUN/checkpoints/step-N.pt``)."""
    p = Path(checkpoint).resolve()
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` on ``cfg.data``; writes the JSON result and returns it."""
    from .data import eval_loader_for

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model, train_cfg, ckpt = model_from_checkpoint(cfg.checkpoint, device)
    zero_shot = cfg.retrieval or cfg.zero_shot
    if zero_shot and not hasattr(model, "encode_text"):
        raise ValueError(f"{cfg.checkpoint}: --retrieval and --zero-shot need a checkpoint of "
                         "`vidshard train --objective clip`")
    if not zero_shot and (ckpt["objective"] != "supervised" or not ckpt.get("classes")):
        raise ValueError(f"{cfg.checkpoint}: a {ckpt['objective']} checkpoint has no classifier; "
                         "fine-tune it first (vidshard train --init-from ...), or for a clip checkpoint "
                         "use --retrieval / --zero-shot")
    loader = eval_loader_for(cfg, train_cfg)
    if zero_shot:
        return _write(cfg, ckpt, _evaluate_zero_shot(cfg, model, loader, device), loader)
    if loader.classes and list(loader.classes) != list(ckpt["classes"]):
        raise ValueError(f"{cfg.data}: its classes {list(loader.classes)[:5]}... differ from the "
                         f"checkpoint's {ckpt['classes'][:5]}...; use a shard set with the same labels")
    with Progress(disable=not cfg.progress) as progress:
        result = evaluate_model(model, loader, device, ckpt["classes"], progress)
    return _write(cfg, ckpt, result, loader)


def _evaluate_zero_shot(cfg: EvalConfig, model: nn.Module, loader: ClipLoader, device: torch.device
                        ) -> dict[str, Any]:
    """``--retrieval`` / ``--zero-shot`` of a clip checkpoint (see ``train/clip_eval.py``)."""
    from .clip_eval import embed_clips, retrieval, zero_shot

    if cfg.zero_shot and not loader.classes:
        raise ValueError(f"{cfg.data}: --zero-shot needs a labeled shard set (class names in the manifest)")
    model.eval()
    with Progress(disable=not cfg.progress) as progress:
        keys, labels, embs = embed_clips(model, loader, device, progress)
    result: dict[str, Any] = {}
    if cfg.retrieval:
        result["retrieval"] = retrieval(model, cfg.data, keys, embs, device, cfg.relevance)
    if cfg.zero_shot:
        result["zero_shot"] = zero_shot(model, labels, embs, list(loader.classes), cfg.prompts, device)
    return result


def _write(cfg: EvalConfig, ckpt: dict, result: dict[str, Any], loader: ClipLoader) -> dict[str, Any]:
    """Add what was evaluated, write the JSON (default ``RUN/eval.json``), return the result."""
    result = {"checkpoint": str(cfg.checkpoint), "data": cfg.data, "step": ckpt["step"],
              "views": {"temporal": cfg.temporal_views, "spatial": cfg.spatial_views}, **result}
    if loader.cache_stats:
        result["cache"] = loader.cache_stats  # hits, misses, bytes_downloaded, evicted
    out = Path(cfg.out) if cfg.out else run_folder(cfg.checkpoint) / "eval.json"
    atomic_write(out, (json.dumps(result, indent=2) + "\n").encode())
    result["out"] = str(out)
    return result


def print_result(result: dict[str, Any], console: Console | None = None) -> None:
    """The tables of any eval result: accuracy (supervised) or retrieval / zero-shot (clip)."""
    if "retrieval" in result or "zero_shot" in result:
        from .clip_eval import print_clip_result

        print_clip_result(result, console)
    else:
        print_table(result, console)


def print_table(result: dict[str, Any], console: Console | None = None) -> None:
    """Per-class accuracy and the top-1 / top-5 totals as a rich table."""
    table = Table(title=f"{result.get('data', '')}: {result['samples']} samples")
    table.add_column("class")
    table.add_column("samples", justify="right")
    table.add_column("top-1", justify="right")
    for name, r in result["per_class"].items():
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        table.add_row(name, str(r["samples"]), acc)
    table.add_section()
    table.add_row("[bold]all", str(result["samples"]), f"[bold]{result['top1']:.1%}")
    table.add_row("top-5", "", f"{result['top5']:.1%}")
    (console or Console()).print(table)
