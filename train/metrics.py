"""What a run reports: ``metrics.jsonl``, TensorBoard events and a rich progress bar (rank 0 only).

:class:`Meter` keeps a logging interval's step metrics on the device and reads them back in
one copy when the run logs; it reports clips/s over the interval's wall time and the share of it
spent blocked on the loader.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

METRICS_FILE = "metrics.jsonl"


class Meter:
    """One logging interval: the step metrics as device tensors, read back in one host sync.

    ``add`` only keeps references (no ``.item()``, so the GPU is never waited for); ``summary`` stacks
    them, copies them to the host once and averages. Throughput is clips over the interval's wall time
    (taken after that sync, so it counts finished GPU work); ``data_wait`` is the share of it spent
    blocked on the loader.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.wait_s = 0.0
        self.clips = 0
        self.rows: list[dict[str, Tensor]] = []
        self._host: list[dict[str, float]] | None = None
        self.start = time.perf_counter()

    def add(self, *, wait_s: float, clips: int, values: dict[str, Tensor]) -> None:
        self.wait_s += wait_s
        self.clips += clips
        self.rows.append(values)
        self._host = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the time spent inside (validation, checkpoints) out of the interval."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - t0

    def read(self) -> list[dict[str, float]]:
        """Every step's values on the host (one device-to-host copy for the whole interval)."""
        if self._host is None:
            keys = sorted(self.rows[0]) if self.rows else []
            table = torch.stack([torch.stack([r[k].float() for k in keys]) for r in self.rows]).tolist() \
                if self.rows else []
            self._host = [dict(zip(keys, row, strict=True)) for row in table]
        return self._host

    def summary(self, world_size: int = 1) -> dict[str, float]:
        """Means over the interval; ``clips_per_s`` counts every rank (all step at the same pace)."""
        rows = self.read()
        total = time.perf_counter() - self.start
        out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
        out["clips_per_s"] = self.clips * world_size / total if total > 0 else 0.0
        out["data_wait"] = min(1.0, self.wait_s / total) if total > 0 else 0.0
        return out


def check_finite(summary: dict[str, float], step: int) -> None:
    """Stop on a non-finite gradient norm (a loss that became inf/NaN on any rank).

    The norm is taken after DDP's all-reduce, so every rank sees the same value and all stop together
    with this message instead of waiting for a rank that stopped alone.
    """
    norm = summary.get("grad_norm", 0.0)
    if not math.isfinite(norm):
        raise FloatingPointError(f"step {step}: the loss or its gradients became non-finite (mean grad norm "
                                 f"over the last steps: {norm}); try a lower --lr or a longer warm-up")


class RunLog:
    """``metrics.jsonl`` lines plus TensorBoard scalars; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool = True, resumed_at: int | None = None) -> None:
        self.enabled = enabled
        self._tb = None
        self._file = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides events a killed run wrote after its last checkpoint
            self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resumed_at and resumed_at + 1)

    def write(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": prefix, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self._tb.add_scalar(f"{prefix}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tb.close()
            self._file = self._tb = None


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (for tests and notebooks)."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run redoes those steps), atomically."""
    from ..shards.schema import atomic_write

    path = Path(run_dir) / METRICS_FILE
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write(path, "".join(line + "\n" for line in keep).encode())


def describe_validation(result: dict[str, Any]) -> str:
    """One line for a validation result: accuracy for a classifier, the held-out loss otherwise (MAE)."""
    if "top1" in result:
        return (f"validation: top-1 {result['top1']:.1%}, top-5 {result['top5']:.1%} "
                f"on {result['samples']} samples")
    return f"validation: loss {result['loss']:.4f} on {result['clips']} clips"


def progress_bar(enabled: bool = True) -> Progress:
    """Step N/M, loss, clips/s and data-wait share, with elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[clips_per_s]:.1f} clips/s"),
        TextColumn("data wait {task.fields[data_wait]:.0%}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled,
    )
