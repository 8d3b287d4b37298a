"""Where OUTPUT may be: never INPUT itself (however it is spelled) nor a folder holding INPUT;
inside INPUT is fine (the input walk skips it, so a re-run never reads the shard set as videos)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vidshard.cli import app

runner = CliRunner()
FAST = ["--chunk-seconds", "1", "--short-side", "64", "--workers", "1", "--quiet"]


@pytest.fixture
def videos(tmp_path: Path, make_video) -> Path:
    make_video("in/a.mp4", seconds=1.0)
    make_video("in/sub/b.mp4", seconds=1.0)
    return tmp_path / "in"


@pytest.mark.parametrize("spelling", ["same", "trailing slash", "dot", "symlink", "dotdot"])
def test_output_equal_to_input_is_refused(videos: Path, spelling: str, monkeypatch) -> None:
    src, out = str(videos), str(videos)
    if spelling == "trailing slash":
        out += "/"
    elif spelling == "dot":
        monkeypatch.chdir(videos)
        src = "."
    elif spelling == "symlink":
        (videos.parent / "link").symlink_to(videos)
        out = str(videos.parent / "link")
    elif spelling == "dotdot":
        out = str(videos / "sub" / "..")
    before = sorted(p.relative_to(videos) for p in videos.rglob("*"))
    res = runner.invoke(app, ["preprocess", src, out, *FAST])
    assert res.exit_code == 2, res.output
    assert "is the INPUT folder" in res.output and "separate folder" in res.output
    assert sorted(p.relative_to(videos) for p in videos.rglob("*")) == before  # nothing written


def test_input_inside_output_is_refused(videos: Path) -> None:
    res = runner.invoke(app, ["preprocess", str(videos / "sub"), str(videos), *FAST])
    assert res.exit_code == 2 and "is inside OUTPUT" in res.output, res.output
    assert not (videos / "manifest.json").exists()


def test_output_inside_input_is_skipped_by_the_walk(videos: Path) -> None:
    out = videos / "shards"
    for _ in range(2):  # the second run sees the first run's shards, manifest and journal under INPUT
        res = runner.invoke(app, ["preprocess", str(videos), str(out), *FAST])
        assert res.exit_code == 0, res.output
    assert (out / "failures.jsonl").read_text() == ""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["videos"] == 2 and manifest["totals"]["failed"] == 0
