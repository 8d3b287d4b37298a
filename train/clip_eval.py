"""Zero-shot evaluation of a contrastive (clip) checkpoint: retrieval and classification, no fine-tuning.

- ``--retrieval``: every clip and every distinct caption of the shard set are embedded; the similarity
  matrix (clips x captions) is scored in both directions with :mod:`~vidshard.train.retrieval`
  (R@1/5/10, median rank, mAP, nDCG). Relevance comes from identical captions, or from a ``--relevance``
  file (``.npz`` with ``keys`` (N,), ``texts`` (M,) and ``relevance`` (N, M) in [0, 1]; EPIC-KITCHENS-100
  multi-instance retrieval's matrix converts to it).
- ``--zero-shot``: each class name is put into the ``--prompt`` templates, their text embeddings are
  averaged per class, and each clip takes the class of highest similarity: top-1/top-5/per-class.

Views: a clip's similarities are averaged over its ``temporal x spatial`` views (retrieval: the mean of
the views' unit embeddings; zero-shot: the mean of the views' softmax scores, as supervised eval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import Tensor, nn

from ..shards.inspect import sample_metadata
from ..shards.schema import sample_captions
from .prefetch import normalize_on
from .retrieval import caption_relevance, retrieval_metrics

TEXT_BATCH = 256


@torch.inference_mode()
def embed_clips(model: nn.Module, loader: Any, device: torch.device, progress: Progress | None = None
                ) -> tuple[list[str], Tensor, Tensor]:
    """Every valid clip of ``loader``: keys, labels ``(N,)`` and unit embeddings per view ``(N, V, E)``."""
    keys, labels, embs = [], [], []
    task = progress.add_task("embed clips", total=len(loader)) if progress is not None else None
    for batch in loader:
        keep = torch.as_tensor(batch.get("valid", torch.ones(len(batch["key"]), dtype=torch.bool)))
        if keep.any():
            video = batch["video"][keep]  # (B, V, C, T, H, W)
            B, V = video.shape[:2]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                e = model.encode_video(normalize_on(video.flatten(0, 1), device))  # (B*V, E)
            embs.append(e.float().view(B, V, -1).cpu())
            labels.append(batch["label"][keep])
            keys += [k for k, m in zip(batch["key"], keep.tolist(), strict=True) if m]
        if task is not None:
            progress.advance(task)
    if not keys:
        raise ValueError("no clip of the shard set could be decoded")
    return keys, torch.cat(labels), torch.cat(embs)


@torch.inference_mode()
def embed_texts(model: nn.Module, texts: list[str], device: torch.device) -> Tensor:
    """``(M, E)`` unit text embeddings, tokenised with the model's own tokenizer."""
    hook = model.spec.hooks(train=False)
    out = []
    for i in range(0, len(texts), TEXT_BATCH):
        out.append(model.encode_text(hook.batch(texts[i:i + TEXT_BATCH]).to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


def read_relevance(path: str | Path, keys: list[str]) -> tuple[list[str], Tensor, list[int]]:
    """A ``--relevance`` file (untrusted): texts, the ``(rows, texts)`` matrix, and each row's index in
    ``keys``. Every row key must be a sample of the evaluated set."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            rkeys, texts, rel = z["keys"], z["texts"], z["relevance"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{p}: not a relevance file (.npz with arrays keys, texts, relevance): {e}"
                         ) from None
    if rel.ndim != 2 or rel.shape != (len(rkeys), len(texts)) or not np.issubdtype(rel.dtype, np.number):
        raise ValueError(f"{p}: relevance must be a numeric matrix of len(keys) x len(texts), got "
                         f"{rel.shape} for {len(rkeys)} keys and {len(texts)} texts")
    if not np.isfinite(rel).all() or rel.min(initial=0) < 0 or rel.max(initial=0) > 1:
        raise ValueError(f"{p}: relevance values must lie in [0, 1]")
    index = {k: i for i, k in enumerate(keys)}
    missing = [str(k) for k in rkeys if str(k) not in index]
    if missing:
        raise ValueError(f"{p}: {len(missing)} keys are not samples of the evaluated set (first: "
                         f"{missing[:3]}); keys are the sample keys KEY of KEY.json")
    return [str(t) for t in texts], torch.from_numpy(rel.astype(np.float32)), [index[str(k)] for k in rkeys]


def retrieval(model: nn.Module, data: str, keys: list[str], embs: Tensor, device: torch.device,
              relevance: str | None = None) -> dict[str, Any]:
    """Video-text retrieval over the evaluated clips (see the module docstring)."""
    video = embs.mean(dim=1)  # (N, E): similarity averaged over views
    if relevance is not None:
        texts, rel, rows = read_relevance(relevance, keys)
        video = video[rows]
    else:
        captions = _captions(data)
        per_clip = [captions.get(k, []) for k in keys]
        if not any(per_clip):
            raise ValueError(f"{data}: no sample has a caption; --retrieval needs 'caption' or 'captions' in "
                             "KEY.json (preprocess a list with a caption column) or a --relevance file")
        texts, rel = caption_relevance(per_clip)
    sim = video @ embed_texts(model, texts, device).T  # (N, M)
    return {"clips": int(sim.shape[0]), "texts": len(texts), **retrieval_metrics(sim, rel)}


def _captions(data: str) -> dict[str, list[str]]:
    """Each sample's captions; a sample whose caption fields are malformed counts as uncaptioned."""
    out = {}
    for key, meta in sample_metadata(data):
        try:
            out[key] = sample_captions(meta)
        except ValueError:
            out[key] = []
    return out


def zero_shot(model: nn.Module, labels: Tensor, embs: Tensor, classes: list[str], prompts: tuple[str, ...],
              device: torch.device) -> dict[str, Any]:
    """Zero-shot classification: top-1/top-5 and per-class accuracy over the labeled clips."""
    per_class = [embed_texts(model, [p.format(name) for p in prompts], device).mean(0) for name in classes]
    weights = torch.nn.functional.normalize(torch.stack(per_class), dim=-1)  # (K, E)
    scale = float(model.scale().detach())
    keep = labels >= 0
    scores = (scale * embs[keep] @ weights.T).softmax(-1).mean(dim=1)  # (N, K): mean over views
    y, K = labels[keep], len(classes)
    topk = scores.topk(min(5, K), dim=-1).indices
    top1 = topk[:, 0] == y
    counts = torch.bincount(y, minlength=K)
    hits = torch.bincount(y[top1], minlength=K)
    n = int(keep.sum())
    return {"samples": n, "top1": top1.float().mean().item() if n else 0.0,
            "top5": (topk == y[:, None]).any(-1).float().mean().item() if n else 0.0,
            "prompts": list(prompts), "chance": 1 / K,
            "per_class": {name: {"accuracy": (h / c if c else None), "samples": c}
                          for name, h, c in zip(classes, hits.tolist(), counts.tolist(), strict=True)}}


def print_clip_result(result: dict[str, Any], console: Console | None = None) -> None:
    """Retrieval (both directions) and zero-shot accuracy as rich tables."""
    console = console or Console()
    if "retrieval" in result:
        r = result["retrieval"]
        t = Table(title=f"retrieval: {r['clips']} clips, {r['texts']} captions")
        for col in ("direction", "R@1", "R@5", "R@10", "median rank", "mAP", "nDCG"):
            t.add_column(col, justify="left" if col == "direction" else "right")
        for name, d in (("video -> text", r["video_to_text"]), ("text -> video", r["text_to_video"])):
            t.add_row(name, *(f"{d[k]:.1%}" for k in ("R@1", "R@5", "R@10")), f"{d['median_rank']:g}",
                      f"{d['mAP']:.1%}", f"{d['nDCG']:.1%}")
        console.print(t)
    if "zero_shot" in result:
        z = result["zero_shot"]
        t = Table(title=f"zero-shot classification: {z['samples']} clips, chance {z['chance']:.1%}")
        t.add_column("class")
        t.add_column("samples", justify="right")
        t.add_column("top-1", justify="right")
        for name, r in z["per_class"].items():
            t.add_row(name, str(r["samples"]), "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}")
        t.add_section()
        t.add_row("[bold]all", str(z["samples"]), f"[bold]{z['top1']:.1%}")
        t.add_row("top-5", "", f"{z['top5']:.1%}")
        console.print(t)
