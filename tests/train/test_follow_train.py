"""``vidshard train --follow`` on a set that grows while it trains: the epoch after the growth holds the
new videos' samples, every sample exactly once."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
from vidshard.shards.loader import ClipLoader
from vidshard.train.config import TrainConfig
from vidshard.train.loop import train

from ..shards.test_follow import grow

CLIP = dict(frames=4, stride=2, size=32, flip=False, workers=0, progress=False, threads=1)


def test_trainer_with_follow_sees_videos_added_while_it_runs(tiny_shardset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shardset, shards)
    seen: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    set_epoch, iterate = ClipLoader.set_epoch, ClipLoader.__iter__

    def set_epoch_growing(self: ClipLoader, epoch: int) -> None:
        if epoch == 1 and self.cfg.train:  # the set grows while epoch 0 trains (the service adds videos)
            grow(shards, tmp_path / "raw")
        set_epoch(self, epoch)

    def recording(self: ClipLoader):
        for batch in iterate(self):
            seen[self.epoch].update(k for k, ok in zip(batch["key"], batch["valid"].tolist(), strict=True)
                                    if ok)
            yield batch

    monkeypatch.setattr(ClipLoader, "set_epoch", set_epoch_growing)
    monkeypatch.setattr(ClipLoader, "__iter__", recording)
    # 18 samples at batch 6: 3 steps in epoch 0; 24 after the growth: 4 steps in epoch 1.
    cfg = TrainConfig(data=str(shards), out=str(tmp_path / "run"), model="vit-t", batch_size=6, steps=7,
                      lr=1e-3, warmup_steps=1, log_every=7, ckpt_every=100, follow=True, **CLIP)
    assert train(cfg).steps == 7
    assert len(seen[0]) == 18 and len(seen[1]) == 24
    assert set(seen[0].values()) == set(seen[1].values()) == {1}  # each sample once per epoch
    new = set(seen[1]) - set(seen[0])
    assert len(new) == 6
