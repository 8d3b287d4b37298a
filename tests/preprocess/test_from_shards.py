"""A shard set as preprocess INPUT: a vidshard set and a foreign WebDataset are re-encoded with new
settings, labels, captions and timing carried over; bad samples are counted failures."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.preprocess.report import balance_lines
from vidshard.preprocess.run import preprocess
from vidshard.shards.schema import Manifest

from .test_run import read_samples


def _run(src: Path, out: Path, **kw: object):
    cfg = PreprocessConfig(input=src, output=out, short_side=32, fps=5.0, chunk_seconds=1.0,
                           min_chunk_seconds=0.5, gop=5, workers=2, quiet=True, **kw)
    return preprocess(cfg, console=Console(quiet=True))


def test_reencode_a_vidshard_set(tiny_shardset: Path, tmp_path: Path) -> None:
    old = read_samples(tiny_shardset)
    result = _run(tiny_shardset, tmp_path / "new")
    assert result.total.videos_ok == len(old) and result.total.videos_failed == 0
    new = read_samples(tmp_path / "new")
    assert Manifest.load(tmp_path / "new").classes == Manifest.load(tiny_shardset).classes
    by_source = {s["meta"].extra["source_key"]: s for s in new.values()}
    assert set(by_source) == set(old)  # every old sample, once
    for key, s in by_source.items():
        m, o = s["meta"], old[key]["meta"]
        assert (m.video, m.label_name, m.label) == (o.video, o.label_name, o.label)
        assert s["cls"] == o.label.__str__().encode()
        assert m.extra["source_video_id"] == o.video_id
        assert abs(m.start_s - o.start_s) < 1e-3 and abs(m.end_s - o.end_s) < 0.25  # the old timeline
        assert min(m.width, m.height) == 32 and m.fps == pytest.approx(5.0)
    # The summary's balance: hours per class and per source (top folder: the class folders here).
    assert result.hours_by["class"] == pytest.approx({"left": 9.0, "right": 9.0}, abs=0.5)
    assert set(result.hours_by["source"]) == {"left", "right"}
    assert balance_lines(result.hours_by)[0].startswith("hours by class: ")
    again = _run(tiny_shardset, tmp_path / "new")  # resumes: nothing left to do
    assert again.skipped == len(old) and again.run.videos_ok == 0


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def foreign_set(tmp_path: Path) -> Path:
    """A video2dataset-like WebDataset: mp4 + txt + json (+ cls), and four bad samples."""
    mp4 = synth_video(tmp_path / "v.mp4", Synth(seconds=1.2, fps=10, width=96, height=64)).read_bytes()
    root = tmp_path / "v2d"
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i in range(3):
            _member(tar, f"0000{i}.mp4", mp4)
            _member(tar, f"0000{i}.txt", f"a caption {i}".encode())
            meta = {"url": f"https://x/{i}.mp4", "key": f"0000{i}"}
            _member(tar, f"0000{i}.json", json.dumps(meta).encode())
            if i < 2:
                _member(tar, f"0000{i}.cls", str(i).encode())
        _member(tar, "twice.mp4", mp4)
        _member(tar, "twice.webm", mp4)
        _member(tar, "badjson.mp4", mp4)
        _member(tar, "badjson.json", b"[1, 2]")
        _member(tar, "../escape.mp4", mp4)
        _member(tar, "noise.mp4", b"not a video at all" * 100)
    (root / "00000.parquet").write_bytes(b"ignored")
    return root


def test_reencode_a_foreign_webdataset(foreign_set: Path, tmp_path: Path) -> None:
    result = _run(foreign_set, tmp_path / "new")
    new = {s["meta"].extra["source_key"]: s["meta"] for s in read_samples(tmp_path / "new").values()}
    assert set(new) == {"00000", "00001", "00002"}
    assert new["00001"].caption == "a caption 1" and new["00001"].video == "https://x/1.mp4"
    assert new["00001"].label_name == "1" and new["00002"].label is None
    failures = {json.loads(line)["path"]: json.loads(line)["reason"]
                for line in (tmp_path / "new" / "failures.jsonl").read_text().splitlines()}
    assert set(failures) == {"twice", "badjson", "00000.tar/../escape.mp4", "noise"}, failures
    assert "2 video members" in failures["twice"] and "JSON object" in failures["badjson"]
    assert "unsafe" in failures["00000.tar/../escape.mp4"]
    assert result.total.videos_ok == 3 and result.total.videos_failed == 4
    assert not list((tmp_path / "new" / ".vidshard").glob("staging/*"))  # no copied-out video left
