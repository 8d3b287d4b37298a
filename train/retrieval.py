"""Retrieval metrics as pure functions of a similarity matrix and a relevance matrix.

``sim`` is ``(Q, N)`` (a row per query, a column per item, higher = more alike); ``rel`` is the same
shape, 1 where an item fully answers a query, fractions for partial relevance (EPIC-KITCHENS-100
multi-instance retrieval), 0 otherwise. Video-to-text uses ``sim``/``rel`` as they are, text-to-video
their transposes.

- rank of a query: the 1-based position of its first relevant item in the order of ``sim`` (ties keep
  column order); queries without any relevant item are left out of recall and median rank;
- recall@K: share of queries whose rank is at most K; median rank: the median of the ranks;
- mAP and nDCG exactly as the EPIC-KITCHENS-100 MIR evaluation code computes them:
  AP = mean over the items with ``rel == 1`` of (summed relevance up to that position) / position;
  nDCG = DCG / IDCG with DCG = sum over the first k positions of rel / log2(position + 1), where k is
  the number of items with ``rel > 0`` for that query, and IDCG the DCG of the ideal order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def first_relevant_ranks(sim: Tensor, rel: Tensor) -> Tensor:
    """``(Q, N)``, ``(Q, N)`` -> ``(Q',)`` int64 1-based ranks of each query's first relevant item
    (``rel > 0``), for the Q' queries that have one."""
    order = sim.argsort(dim=1, descending=True, stable=True)  # (Q, N)
    hit = rel.gather(1, order) > 0  # (Q, N) in ranked order
    has = hit.any(dim=1)
    return hit[has].int().argmax(dim=1) + 1


def recall_at(ranks: Tensor, k: int) -> float:
    """Share of queries with rank <= k."""
    return float((ranks <= k).float().mean()) if ranks.numel() else 0.0


def median_rank(ranks: Tensor) -> float:
    """Median of the ranks (the mean of the two middle ones for an even count)."""
    if not ranks.numel():
        return math.nan
    return float(ranks.double().quantile(0.5))


def mean_average_precision(sim: Tensor, rel: Tensor) -> float:
    """EPIC-KITCHENS-100 MIR mAP over the queries with at least one ``rel == 1`` item."""
    order = sim.argsort(dim=1, descending=True, stable=True)
    ranked = rel.double().gather(1, order)  # (Q, N)
    cumulative = ranked.cumsum(dim=1) * (ranked == 1)  # summed relevance, kept at the fully relevant items
    positions = torch.arange(1, ranked.shape[1] + 1, dtype=torch.float64)
    count = (ranked == 1).sum(dim=1)
    has = count > 0
    ap = (cumulative / positions).sum(dim=1)[has] / count[has]
    return float(ap.mean()) if ap.numel() else 0.0


def _dcg(sim: Tensor, rel: Tensor, k_counts: Tensor) -> Tensor:
    order = sim.argsort(dim=1, descending=True, stable=True)
    discounts = torch.log2(torch.arange(rel.shape[1], dtype=torch.float64) + 2)  # log2(position + 1)
    return (rel.double().gather(1, order) * k_counts / discounts).sum(dim=1)


def ndcg(sim: Tensor, rel: Tensor) -> float:
    """EPIC-KITCHENS-100 MIR nDCG over the queries with any relevant item."""
    k_counts = (rel.double().sort(dim=1, descending=True).values > 0).double()  # first k positions count
    ideal = _dcg(rel.double(), rel, k_counts)
    has = ideal > 0
    return float((_dcg(sim, rel, k_counts)[has] / ideal[has]).mean()) if has.any() else 0.0


def direction_metrics(sim: Tensor, rel: Tensor) -> dict[str, float]:
    """R@1/5/10, median rank, mAP and nDCG of one direction (rows are the queries)."""
    ranks = first_relevant_ranks(sim, rel)
    return {"R@1": recall_at(ranks, 1), "R@5": recall_at(ranks, 5), "R@10": recall_at(ranks, 10),
            "median_rank": median_rank(ranks), "mAP": mean_average_precision(sim, rel),
            "nDCG": ndcg(sim, rel), "queries": int(ranks.numel())}


def retrieval_metrics(sim: Tensor, rel: Tensor) -> dict[str, object]:
    """Both directions of a ``(videos, texts)`` similarity matrix, and the averages of mAP and nDCG
    over them (how EPIC-KITCHENS-100 MIR reports its two headline numbers)."""
    if sim.shape != rel.shape or sim.ndim != 2:
        raise ValueError(f"similarity {tuple(sim.shape)} and relevance {tuple(rel.shape)} must be equal 2-D")
    v2t, t2v = direction_metrics(sim, rel), direction_metrics(sim.T, rel.T)
    return {"video_to_text": v2t, "text_to_video": t2v, "mAP": (v2t["mAP"] + t2v["mAP"]) / 2,
            "nDCG": (v2t["nDCG"] + t2v["nDCG"]) / 2}


def caption_relevance(captions: list[list[str]]) -> tuple[list[str], Tensor]:
    """Relevance from identical captions: the distinct captions (sorted) and a ``(clips, texts)``
    matrix, 1 where the clip carries that caption."""
    texts = sorted({c for caps in captions for c in caps})
    index = {t: j for j, t in enumerate(texts)}
    rel = torch.zeros(len(captions), len(texts))
    for i, caps in enumerate(captions):
        for c in caps:
            rel[i, index[c]] = 1.0
    return texts, rel
