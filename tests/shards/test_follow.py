"""A growing shard set (``preprocess --watch`` adds shards): with ``follow`` the loader takes in the new
shards at the start of each epoch, every sample once per epoch, also through ``vidshard serve``;
without it the set, and the epoch length, stay as they were when it opened."""

from __future__ import annotations

import collections
import shutil
import threading
from pathlib import Path

import pytest
from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.preprocess.run import preprocess
from vidshard.shards.loader import ClipLoader, LoaderConfig
from vidshard.shards.schema import Manifest
from vidshard.shards.serve import ServeConfig, make_shard_server, url_of


def grow(shards: Path, raw: Path) -> int:
    """Add two labeled videos (3 samples each) with the settings ``tiny_shardset`` was made with;
    return the set's sample count after."""
    for label, vx in (("left", -40.0), ("right", 40.0)):
        synth_video(raw / label / f"new_{label}.mp4", Synth(seconds=3.0, fps=10.0, width=160, height=120,
                                                           pattern="moving", velocity=(vx, 0.0), box=24))
    cfg = PreprocessConfig(input=raw, output=shards, labels_from_dirs=True, chunk_seconds=1.0,
                           min_chunk_seconds=0.5, short_side=64, gop=5, shard_size=1 << 16, workers=1,
                           quiet=True)
    assert preprocess(cfg, console=Console(quiet=True)).run.videos_ok == 2
    return Manifest.load(shards).num_samples


def epoch_keys(loader: ClipLoader, epoch: int) -> collections.Counter:
    loader.set_epoch(epoch)
    keys = collections.Counter()
    for batch in loader:
        keys.update(k for k, ok in zip(batch["key"], batch["valid"].tolist(), strict=True) if ok)
    return keys


def _loader(source: str, follow: bool) -> ClipLoader:
    return ClipLoader(LoaderConfig(source=source, frames=2, stride=1, size=16, batch_size=3, workers=0,
                                   drop_last=False, follow=follow), rank=0, world_size=1)


@pytest.fixture
def growing(tiny_shardset: Path, tmp_path: Path) -> Path:
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shardset, shards)
    return shards


def test_follow_takes_in_new_shards_each_epoch(growing: Path, tmp_path: Path) -> None:
    follow, fixed = _loader(str(growing), True), _loader(str(growing), False)
    first = epoch_keys(follow, 0)
    assert len(first) == 18 and set(first.values()) == {1} and epoch_keys(fixed, 0) == first
    total = grow(growing, tmp_path / "raw")
    assert total == 24
    second = epoch_keys(follow, 1)
    assert len(second) == 24 and set(second.values()) == {1}  # the new samples, each once
    assert set(first) < set(second)
    assert epoch_keys(fixed, 1).keys() == first.keys()  # without follow: the set as it opened
    assert len(follow) > len(fixed)


def test_follow_resumes_a_position_from_before_the_set_grew(growing: Path, tmp_path: Path) -> None:
    loader = _loader(str(growing), True)
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # one batch into epoch 0
    state = loader.state_dict()
    loader.close()
    grow(growing, tmp_path / "raw")
    with pytest.raises(ValueError, match="another shard set"):
        _loader(str(growing), False).load_state_dict(state)  # without follow: refused, as before
    resumed = _loader(str(growing), True)
    resumed.load_state_dict(state)  # with follow: the next whole epoch, on the grown set
    assert resumed.epoch == 1
    keys = epoch_keys(resumed, 1)
    assert len(keys) == 24 and set(keys.values()) == {1}


def test_follow_through_serve(growing: Path, tmp_path: Path) -> None:
    srv = make_shard_server(ServeConfig(shardset=growing, port=0))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        loader = _loader(url_of(srv), True)
        assert len(epoch_keys(loader, 0)) == 18
        grow(growing, tmp_path / "raw")
        second = epoch_keys(loader, 1)
        assert len(second) == 24 and set(second.values()) == {1}
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)
