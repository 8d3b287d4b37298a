"""``vidshard train``: the streaming training loop.

``train_step(...) -> metrics`` does one optimizer step; ``train(cfg)`` sets up
the run (process group, loader, model, optimizer, resume) and runs steps with
labelled "every N steps" blocks for logging, validation and checkpoints. Only
rank 0 logs and writes files.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..shards.schema import atomic_write
from . import distributed
from .checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_encoder,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .data import cache_metrics, train_loader, val_loader_for
from .distributed import DistInfo
from .evaluate import evaluate_model
from .metrics import Meter, RunLog, check_finite, progress_bar, truncate_metrics
from .model import flash_attn_problem, flash_attn_usable
from .objectives import Objective, get_objective
from .optim import build_optimizer, lr_at, set_lr
from .prefetch import Prefetcher, device_batch


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    """The run folder."""
    steps: int
    """Optimizer steps done in total (including before a resume)."""
    checkpoint: Path | None
    """The last checkpoint written (None on ranks other than 0)."""
    last_loss: float
    """Mean loss of the last logging interval."""
    val: dict[str, Any] | None
    """Final validation result, when ``val_data`` was given."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_step(model: nn.Module, objective: Objective, batch: dict[str, Any],
               optimizer: torch.optim.Optimizer, *, lr: float, clip_grad: float, amp: bool
               ) -> dict[str, Tensor]:
    """One optimizer step on one device batch (:func:`~vidshard.train.prefetch.device_batch`): forward
    under bf16 autocast on CUDA, backward, clip, step.

    Returns 0-dim device tensors (loss, grad_norm and the objective's metrics) without waiting for the
    GPU: nothing here reads a value back to the host. A non-finite loss shows in ``grad_norm``, which is
    the same on every rank after DDP's all-reduce; the loop checks it when it logs.
    """
    device = batch["video"].device
    set_lr(optimizer, lr)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        loss, metrics = objective.loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad if clip_grad > 0 else math.inf)
    optimizer.step()
    return {"loss": loss.detach(), "grad_norm": norm.detach(), **{k: v.detach() for k, v in metrics.items()}}


@dataclass
class _Run:
    """What a run carries between setup and the step loop."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    objective: Objective
    model: nn.Module  # the plain model (state dicts come from here)
    wrapped: nn.Module  # DDP / compiled (forward goes through here)
    optimizer: torch.optim.Optimizer
    loader: Any
    classes: list[str] | None
    total: int
    warmup: int
    step: int = 0
    rng: dict[str, Any] | None = None  # RNG state to restore once the resumed position is reached
    position: tuple | None = None  # the loader's position after the last batch trained on


def _setup(cfg: TrainConfig, info: DistInfo) -> _Run:
    seed_everything(cfg.seed)  # the same initial weights on every rank (DDP also copies rank 0's)
    run_dir = Path(cfg.out)
    objective = get_objective(cfg.objective)
    loader = train_loader(cfg, info.rank, info.world_size, text=caption_hook(objective, cfg, train=True))
    classes = list(loader.classes) if loader.classes else None
    model = objective.build_model(cfg, len(classes) if classes and objective.needs_labels else 0)
    if cfg.init_from:
        load_encoder(getattr(model, "encoder", model), cfg.init_from)
    model.to(info.device)
    seed_everything(cfg.seed + info.rank)  # from here on each rank draws its own masks and drop paths
    betas = (0.9, cfg.beta2 if cfg.beta2 is not None else getattr(objective, "beta2", 0.999))
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=betas,
                                layer_decay=cfg.layer_decay, device=info.device)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * len(loader)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * total)
    run = _Run(cfg, info, run_dir, objective, model, model, optimizer, loader, classes, total, warmup)
    if cfg.resume:
        _resume(run)
    if info.device.type == "cuda" and info.is_main:
        print(f"attention: {'flash-attn' if flash_attn_usable() else 'SDPA'} for attn_impl={cfg.attn_impl!r}"
              f" ({flash_attn_problem() or 'usable'})")
    run.wrapped = distributed.wrap(model, info, cfg.compile)
    if info.is_main:
        atomic_write(run_dir / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())
    return run


def caption_hook(objective: Objective, cfg: TrainConfig, train: bool) -> Any:
    """The loader hook of an objective that reads captions (``caption_hook``; clip), else None."""
    hook = getattr(objective, "caption_hook", None)
    return hook(cfg, train) if hook is not None else None


def _resume(run: _Run) -> None:
    path = latest_checkpoint(run.run_dir)
    if path is None:
        if run.info.is_main:
            print(f"--resume: no checkpoint in {run.run_dir / 'checkpoints'} yet, starting from step 0")
        return
    ckpt = load_checkpoint(path)  # on the CPU: load_state_dict moves model and optimizer state to the device
    if ckpt["objective"] != run.cfg.objective or ckpt["config"]["model"] != run.cfg.model:
        raise ValueError(f"{path}: was written by a {ckpt['config']['model']} {ckpt['objective']} run; "
                         "resume with the same --model and --objective, or use another --out")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.step = int(ckpt["step"])
    _resume_loader(run, ckpt.get("loader"))
    if run.info.is_main:
        truncate_metrics(run.run_dir, run.step)
    run.rng = ckpt["rng"][run.info.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"]


def _resume_loader(run: _Run, state: dict[str, Any] | None) -> None:
    """Put the loader where the checkpoint's run was (any number of ranks and workers: every sample of the
    epoch is still seen once); without ``--steps`` the run still ends with epoch ``--epochs``."""
    loader = run.loader
    if state is None:  # a checkpoint from before the loader kept its position: the same step count, by
        epoch, skip = divmod(run.step, len(loader))  # arithmetic (this epoch's order is a fresh one)
        layout = loader.cfg.layout(run.info.world_size, loader.cfg.workers)
        state = {**loader.state_dict(), "epoch": epoch, "segments": [] if not skip else
                 [{**layout.to_dict(), "steps": min(skip, loader.batches_left())}]}
    loader.load_state_dict(state)  # refuses another shard set or seed, saying why
    if run.cfg.steps is None:
        run.total = run.step + loader.batches_left() + max(0, run.cfg.epochs - 1 - loader.epoch) * len(loader)


def _save(run: _Run) -> Path | None:
    """Checkpoint of the current step (rank 0 writes; every rank's RNG state is gathered)."""
    states = [rng_state()]
    if run.info.world_size > 1:
        states = [None] * run.info.world_size
        torch.distributed.all_gather_object(states, rng_state())
    if not run.info.is_main:
        return None
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "step": run.step,
             "rng": states, "config": run.cfg.to_dict(), "objective": run.cfg.objective,
             "num_classes": len(run.classes) if run.classes else 0, "classes": run.classes,
             "loader": run.loader.state_dict(run.position),
             "model_config": run.model.cfg.to_dict() if hasattr(run.model, "cfg") and
             hasattr(run.model.cfg, "to_dict") else {}}
    return save_checkpoint(checkpoint_path(run.run_dir, run.step), state, keep=run.cfg.keep_checkpoints)


def _validate(run: _Run, val_loader: Any) -> dict[str, Any] | None:
    """Validation on rank 0 while the others wait: top-1/top-5 for a classifier, the mean held-out
    loss for an objective without labels (MAE: masked reconstruction loss)."""
    result = None
    if run.info.is_main and val_loader is not None:
        if run.objective.needs_labels and run.classes:
            result = evaluate_model(run.model, val_loader, run.info.device, run.classes)
        elif not run.objective.needs_labels:
            result = _validation_loss(run, val_loader)
        run.model.train()
    if run.info.world_size > 1:
        torch.distributed.barrier()
    return result


@torch.no_grad()
def _validation_loss(run: _Run, val_loader: Any) -> dict[str, float]:
    """Mean objective loss over the validation clips (first view of each sample)."""
    run.model.eval()
    total = torch.zeros((), dtype=torch.float64, device=run.info.device)
    clips = torch.zeros((), dtype=torch.int64, device=run.info.device)
    for batch in val_loader:
        first_view = {**batch, "video": batch["video"][:, 0]}  # (B, V, C, T, H, W) -> (B, C, T, H, W)
        dev = device_batch(first_view, run.info.device)
        loss, _ = run.objective.loss(run.model, dev)  # mean over the batch's valid clips
        n = dev["valid"].sum()
        total, clips = total + loss.double() * n, clips + n
    n = int(clips.item())
    return {"loss": total.item() / max(n, 1), "clips": n}


def _batches(run: _Run):
    """Batches from the loader's position on (a resumed run's: ``_resume_loader``), epoch after epoch;
    each carries the loader's position after it (``"position"``), since the prefetcher fetches ahead."""
    if len(run.loader) == 0:
        raise ValueError(f"{run.cfg.data}: no batches for this rank (batch size {run.cfg.batch_size}); "
                         "use a smaller --batch-size or more data")
    epoch = run.loader.epoch
    while True:
        run.loader.set_epoch(epoch)
        _restore_rng(run)  # before the first fetch, as in the run that wrote the checkpoint
        for batch in run.loader:
            batch["position"] = run.loader.position()
            yield epoch, batch
        epoch += 1


def _restore_rng(run: _Run) -> None:
    if run.rng is not None:
        set_rng_state(run.rng)
        run.rng = None


def train(cfg: TrainConfig) -> TrainResult:
    """Train as ``cfg`` says; under torchrun, every process calls this."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = distributed.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, info: DistInfo) -> TrainResult:
    run = _setup(cfg, info)
    val_loader = val_loader_for(cfg, caption_hook(run.objective, cfg, train=False)) if info.is_main else None
    log = RunLog(run.run_dir, enabled=info.is_main, resumed_at=run.step if run.step else None)
    meter, summary, val = Meter(), {"loss": float("nan")}, None
    ckpt = latest_checkpoint(run.run_dir) if info.is_main else None  # a finished run resumed: its last
    stop_at = min(run.total, run.step + cfg.stop_after) if cfg.stop_after else run.total
    run.wrapped.train()
    bar = progress_bar(enabled=cfg.progress and info.is_main)
    with bar:
        task = bar.add_task("train", total=run.total, completed=run.step, loss=float("nan"),
                            clips_per_s=0.0, data_wait=0.0)
        batches = Prefetcher(_batches(run), info.device)  # the next batch goes to the device during a step
        while run.step < stop_at:
            epoch, batch = next(batches)
            run.position = batch.pop("position")
            lr = lr_at(run.step, total=run.total, base_lr=cfg.lr, warmup=run.warmup, min_lr=cfg.min_lr)
            m = train_step(run.wrapped, run.objective, batch, run.optimizer, lr=lr, clip_grad=cfg.clip_grad,
                           amp=cfg.amp)
            run.step += 1
            meter.add(wait_s=batches.take_wait(), clips=len(batch["label"]), values=m)
            # -- every log_every steps: metrics.jsonl, TensorBoard, progress bar (the one host sync)
            if run.step % cfg.log_every == 0 or run.step == stop_at:
                summary = distributed.mean_across(meter.summary(info.world_size) | cache_metrics(run.loader),
                                                  info)
                check_finite(summary, run.step)
                summary["lr"], summary["epoch"] = lr, epoch
                log.write(run.step, summary)
                bar.update(task, completed=run.step, loss=summary["loss"],
                           clips_per_s=summary["clips_per_s"], data_wait=summary["data_wait"])
                meter.reset()
            # -- every eval_every steps: validation (its time is not counted in the throughput)
            if cfg.eval_every and run.step % cfg.eval_every == 0 and run.step < run.total:
                with meter.paused():
                    if (v := _validate(run, val_loader)) is not None:
                        log.write(run.step, _scalars(v), prefix="val")
            # -- every ckpt_every steps, and where this invocation stops: checkpoint (never of NaN weights)
            if run.step % cfg.ckpt_every == 0 or run.step == stop_at:
                with meter.paused():
                    check_finite(meter.summary(), run.step)
                    ckpt = _save(run) or ckpt
    if run.step == run.total and (val := _validate(run, val_loader)) is not None:
        log.write(run.step, _scalars(val), prefix="val")
        if info.is_main:
            atomic_write(run.run_dir / "val.json", (json.dumps(val, indent=2) + "\n").encode())
    log.close()
    run.loader.close()  # its workers would otherwise wait for the next epoch until garbage collected
    if val_loader is not None:
        val_loader.close()
    return TrainResult(run.run_dir, run.step, ckpt, float(summary["loss"]), val)


def _scalars(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}
