"""The loader's position: exact resume, resume by arithmetic (counted decodes), elastic resume on other
ranks and workers, refusals; and workers that live across epochs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from vidshard.shards.loader import ClipLoader, LoaderConfig
from vidshard.shards.schema import video_id

from .test_loader import COUNTS, build_shard_set

ALL = Counter({video_id(f"v{n}.mp4") + "_00000": 1 for n in range(sum(COUNTS))})


def _cfg(source: Path, **kw) -> LoaderConfig:
    base = dict(frames=4, stride=3, size=32, batch_size=2, workers=2, shuffle_buffer=4, drop_last=False)
    return LoaderConfig(source=str(source), **{**base, **kw})


def _valid(batches: list[dict]) -> Counter:
    return Counter(k for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v)


def _take(loader: ClipLoader, n: int | None) -> list[dict]:
    """The first ``n`` batches of the loader's current epoch (all with None), then stop."""
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def _run(cfg: LoaderConfig, world: int, epoch: int, steps: int | None, state: dict | None = None
         ) -> tuple[list[list[dict]], dict]:
    """Every rank of a ``world``-rank job reads ``steps`` batches of ``epoch`` (from ``state``)."""
    batches, states = [], []
    for rank in range(world):
        loader = ClipLoader(cfg, rank=rank, world_size=world)
        if state is not None:
            loader.load_state_dict(state)
        loader.set_epoch(epoch)
        batches.append(_take(loader, steps))
        states.append(loader.state_dict())
        loader.close()
    assert all(s == states[0] for s in states)  # every rank saves the same position
    return batches, states[0]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, counter_mp4: bytes) -> Path:
    folder = tmp_path_factory.mktemp("set")
    build_shard_set(folder, COUNTS, counter_mp4)
    return folder


@pytest.fixture(scope="module")
def counter_mp4(tmp_path_factory) -> bytes:
    from vidshard.preprocess.ffmpeg import Synth, synth_video

    path = tmp_path_factory.mktemp("clip") / "counter.mp4"
    return synth_video(path, Synth(seconds=1.6, fps=25, width=64, height=64, pattern="counter", gop=8)
                       ).read_bytes()


def test_resume_with_the_same_layout_continues_exactly(shard_set: Path) -> None:
    cfg = _cfg(shard_set)
    (whole,), _ = _run(cfg, 1, epoch=3, steps=None)
    (first,), state = _run(cfg, 1, epoch=3, steps=4)
    assert state["epoch"] == 3 and state["samples"] == 8
    (rest,), end = _run(cfg, 1, epoch=3, steps=None, state=state)
    assert len(first) + len(rest) == len(whole) == 11
    for a, b in zip(whole, first + rest, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["video"], b["video"])  # same samples, same clips
    assert end["epoch"] == 4 and end["segments"] == []


@pytest.mark.parametrize("at", [1, 9])
def test_resume_decodes_only_what_is_left(shard_set: Path, at: int) -> None:
    """A late resume costs no more than an early one: consumed samples are never decoded again."""
    cfg = _cfg(shard_set, workers=1)
    _, state = _run(cfg, 1, epoch=0, steps=at)
    loader = ClipLoader(cfg)
    loader.load_state_dict(state)
    rest = list(loader)
    assert loader.stats.decoded == sum(COUNTS) - state["samples"] == sum(len(b["key"]) for b in rest)
    assert state["samples"] == 2 * at


@pytest.mark.parametrize("before,after", [((2, 2), (1, 3)), ((1, 2), (3, 1)), ((1, 1), (3, 2))])
def test_elastic_resume_sees_each_sample_exactly_once(shard_set: Path, before: tuple[int, int],
                                                      after: tuple[int, int]) -> None:
    (world_a, workers_a), (world_b, workers_b) = before, after
    done, state = _run(_cfg(shard_set, workers=workers_a), world_a, epoch=2, steps=3)
    rest, end = _run(_cfg(shard_set, workers=workers_b, batch_size=3), world_b, epoch=2, steps=None,
                     state=state)
    assert state["samples"] == 3 * 2 * world_a
    seen = _valid([b for rank in done + rest for b in rank])
    assert seen == ALL
    assert end["epoch"] == 3


def test_resume_refuses_what_cannot_continue(shard_set: Path, tmp_path: Path, counter_mp4: bytes) -> None:
    _, state = _run(_cfg(shard_set), 1, epoch=0, steps=2)
    build_shard_set(tmp_path, [4, 4], counter_mp4)
    with pytest.raises(ValueError, match="another shard set"):
        ClipLoader(_cfg(tmp_path)).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        ClipLoader(_cfg(shard_set, seed=5)).load_state_dict(state)
    with pytest.raises(ValueError, match="does not fit"):
        ClipLoader(_cfg(shard_set)).load_state_dict({**state, "segments": [{**state["segments"][0],
                                                                              "steps": 99}]})


def test_workers_live_across_epochs(shard_set: Path) -> None:
    loader = ClipLoader(_cfg(shard_set, workers=2))
    pids = []
    for epoch in range(3):
        loader.set_epoch(epoch)
        assert _valid(list(loader)) == ALL
        pids.append([w.pid for w in loader._live.workers._workers])
    assert pids[0] == pids[1] == pids[2]
    loader.close()
    assert loader._live is None


def test_leaving_an_epoch_early_stops_its_workers_and_the_next_epoch_is_whole(shard_set: Path) -> None:
    loader = ClipLoader(_cfg(shard_set, workers=2))
    _take(loader, 2)
    assert loader._live is None
    loader.set_epoch(1)
    assert _valid(list(loader)) == ALL
    loader.close()
