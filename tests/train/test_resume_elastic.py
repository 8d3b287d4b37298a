"""The training loop saves the loader's position in every checkpoint and resumes from it: with other
workers every sample of the epoch is still trained on once; another shard set is refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import vidshard.train.loop as loop
from vidshard.train.checkpoint import latest_checkpoint, load_checkpoint
from vidshard.train.config import TrainConfig
from vidshard.train.loop import train

CLIP = dict(frames=8, stride=2, size=32, crop_scale=(0.5, 1.0), flip=False, progress=False, threads=1)


def test_resume_with_other_workers_trains_on_each_sample_once(motion_train: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: Counter = Counter()
    step = loop.train_step

    def recording_step(model, objective, batch, *args, **kw):
        seen.update(k for k, v in zip(batch["key"], batch["valid"].tolist(), strict=True) if v)
        return step(model, objective, batch, *args, **kw)

    monkeypatch.setattr(loop, "train_step", recording_step)
    # 64 samples at batch 16: one epoch is 4 steps; stop after 2 with 2 workers, go on with 1 (and 3).
    base = dict(data=str(motion_train), out=str(tmp_path / "run"), batch_size=16, epochs=1, lr=1e-3,
                warmup_steps=1, log_every=1, ckpt_every=100, **CLIP)
    assert train(TrainConfig(workers=2, stop_after=2, **base)).steps == 2
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))["loader"]
    assert state["epoch"] == 0 and state["samples"] == 32
    assert len(seen) == 32
    resumed = train(TrainConfig(workers=1, resume=True, **base))
    assert resumed.steps == 4
    assert len(seen) == 64 and set(seen.values()) == {1}  # each sample once in the epoch
    end = load_checkpoint(latest_checkpoint(tmp_path / "run"))["loader"]
    assert end["epoch"] == 1 and end["segments"] == []


def test_resume_refuses_another_shard_set(motion_train: Path, motion_val: Path, tmp_path: Path) -> None:
    base = dict(out=str(tmp_path / "run"), batch_size=16, steps=4, log_every=1, ckpt_every=100, workers=0,
                **CLIP)
    train(TrainConfig(data=str(motion_train), stop_after=1, **base))
    with pytest.raises(ValueError, match="another shard set"):
        train(TrainConfig(data=str(motion_val), resume=True, **base))
