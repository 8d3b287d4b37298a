"""Shard sets whose class can only be told from motion: one white square, random start, and the
direction it moves in (right, left, down, up) is the label. Every frame alone looks alike."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.shards.schema import Manifest, SampleMeta, sample_members, video_id
from vidshard.shards.writer import ShardWriter

DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def motion_shardset(folder: Path, *, per_class: int, seed: int, size: int = 64, seconds: float = 1.0,
                    fps: float = 25.0, speed: float = 40.0, box: int = 16, samples_per_shard: int = 9,
                    ) -> Path:
    """Write a labeled shard set of ``4 * per_class`` moving-square clips to ``folder``.

    Classes are interleaved so every shard holds all of them; the last shard may be smaller
    (uneven shards). Returns ``folder``.
    """
    rng = random.Random(seed)
    names = list(DIRECTIONS)
    raw = folder.parent / f"{folder.name}_raw"
    infos, writer = [], ShardWriter(folder, max_bytes=1 << 40)
    n = 0
    for i in range(per_class):
        for label, name in enumerate(names):
            dx, dy = DIRECTIONS[name]
            start = (rng.uniform(0, size - box), rng.uniform(0, size - box))
            rel = f"{name}/{seed}_{i}.mp4"
            path = synth_video(raw / rel, Synth(pattern="moving", seconds=seconds, fps=fps, width=size,
                                                height=size, velocity=(dx * speed, dy * speed), start=start,
                                                box=box, gop=8))
            meta = SampleMeta(video=rel, video_id=video_id(rel), chunk=0, start_s=0.0, end_s=seconds,
                              frames=round(seconds * fps), fps=fps, width=size, height=size, label=label,
                              label_name=name)
            infos += writer.write(sample_members(meta, path.read_bytes()))
            n += 1
            if n % samples_per_shard == 0:
                infos.append(writer.close())
    last = writer.close()
    infos += [last] if last else []
    manifest = Manifest(settings={"synthetic": "moving square", "seed": seed}, shards=infos, classes=names)
    manifest.totals.update(videos=n, samples=n, seconds=n * seconds)
    manifest.save(folder)
    return folder


@pytest.fixture(scope="session")
def motion_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 training clips (16 per direction) in 8 shards: 7 of 9 clips and one of 1 (uneven)."""
    return motion_shardset(tmp_path_factory.mktemp("motion_train"), per_class=16, seed=1)


@pytest.fixture(scope="session")
def motion_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 held-out clips (8 per direction), other random start positions."""
    return motion_shardset(tmp_path_factory.mktemp("motion_val"), per_class=8, seed=2)
