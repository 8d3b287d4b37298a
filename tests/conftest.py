"""Shared fixtures: test videos are generated with ffmpeg's own sources, never committed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from vidshard.preprocess.ffmpeg import Synth, synth_video


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """``make_video("a/b.mkv", codec="vp9", seconds=3)``: a synthetic video under tmp_path."""

    def make(name: str, **spec: object) -> Path:
        return synth_video(tmp_path / name, Synth(**spec))

    return make


@pytest.fixture(scope="session")
def tiny_shardset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real shard set made by ``vidshard.preprocess`` (session-scoped, read-only: copy before changing it).

    Six tiny videos in two classes (``--labels-from-dirs``): ``left/`` and ``right/`` hold a white
    square moving left or right (160x120, 10 fps, 3 s, mp4 / avi / webm). Chunks of 1 s, short side
    64, gop 5, shards of at most 64 KiB, so there are 18 samples in more than one shard and
    ``manifest.json`` has ``classes == ["left", "right"]``.
    """
    from rich.console import Console
    from vidshard.preprocess.config import PreprocessConfig
    from vidshard.preprocess.run import preprocess

    root = tmp_path_factory.mktemp("tiny_shardset")
    for label, vx in (("left", -40.0), ("right", 40.0)):
        for i, (ext, codec) in enumerate((("mp4", "h264"), ("avi", "mpeg4"), ("webm", "vp8"))):
            spec = Synth(seconds=3.0, fps=10.0, width=160, height=120, pattern="moving", codec=codec,
                         velocity=(vx, 0.0), start=(20.0 * i, 10.0 + 30.0 * i), box=24)
            synth_video(root / "videos" / label / f"{label}{i}.{ext}", spec)
    cfg = PreprocessConfig(input=root / "videos", output=root / "shards", labels_from_dirs=True,
                           chunk_seconds=1.0, min_chunk_seconds=0.5, short_side=64, gop=5,
                           shard_size=1 << 16, workers=2, quiet=True)
    result = preprocess(cfg, console=Console(quiet=True))
    assert result.total.videos_ok == 6 and result.total.videos_failed == 0, result
    return root / "shards"
