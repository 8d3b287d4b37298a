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
