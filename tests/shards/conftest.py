"""Fixtures for the sharing tests (verify, serve, cache, inspect, merge): a tiny labeled shard set."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.shards.schema import (
    FAILURES,
    Manifest,
    SampleMeta,
    ShardInfo,
    failure_record,
    sample_members,
    video_id,
)
from vidshard.shards.writer import ShardWriter

CLASSES = ["moving", "counter"]
SETTINGS = {"chunk_s": 1.0, "short_side": 48, "fps": 25.0, "crf": 30, "codec": "h264"}


def _build_shardset(folder: Path, clips: list[tuple[str, int, bytes]], *, settings: dict | None = None,
                   classes: list[str] | None = CLASSES, max_bytes: int = 12_000) -> Manifest:
    """Write ``clips`` (source path, label, mp4 bytes) as a shard set with small shards."""
    infos = []
    with ShardWriter(folder, max_bytes=max_bytes) as w:
        for i, (rel, label, mp4) in enumerate(clips):
            meta = SampleMeta(video=rel, video_id=video_id(rel), chunk=i % 2, start_s=0.0, end_s=1.0,
                              frames=25, fps=25.0, width=64, height=48,
                              label=None if classes is None else label,
                              label_name=None if classes is None else classes[label])
            infos += w.write(sample_members(meta, mp4))
        last = w.close()
    infos += [last] if last else []
    totals = {"videos": len(clips), "failed": 1, "samples": len(clips), "seconds": float(len(clips)),
              "bytes_in": 0, "bytes_out": sum(i.bytes for i in infos)}
    m = Manifest(settings=dict(settings or SETTINGS), shards=infos, totals=totals, classes=classes)
    bad = failure_record(f"{folder.name}/broken.mp4", "no video stream")
    (folder / FAILURES).write_text(json.dumps(bad) + "\n")
    m.save(folder)
    return m


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> list[tuple[str, int, bytes]]:
    """Six 1-second 64x48 H.264 clips, two classes."""
    out = tmp_path_factory.mktemp("clips")
    result = []
    for i in range(6):
        label = i % 2
        spec = Synth(seconds=1.0, width=64, height=48, codec="h264", pattern=CLASSES[label],
                     start=(4.0 * i, 2.0 * i))
        mp4 = synth_video(out / f"v{i}.mp4", spec).read_bytes()
        result.append((f"{CLASSES[label]}/v{i}.mp4", label, mp4))
    return result


@pytest.fixture(scope="session")
def pristine_set(tmp_path_factory, clips) -> Path:
    folder = tmp_path_factory.mktemp("set") / "set"
    _build_shardset(folder, clips)
    return folder


@pytest.fixture
def shardset(tmp_path, pristine_set) -> Path:
    """A private copy of the tiny shard set that a test may corrupt."""
    return Path(shutil.copytree(pristine_set, tmp_path / "set"))



@pytest.fixture(scope="session")
def build_shardset():
    """``build_shardset(folder, clips, settings=..., classes=..., max_bytes=...) -> Manifest``."""
    return _build_shardset


def _hostile_set(folder: Path, members: list[dict], name: str = "train-000000.tar",
                 samples: int = 1) -> Manifest:
    """A one-shard set whose tar holds exactly ``members``, each ``{"name", "data"=b"", "type"=REGTYPE,
    "link"="", "size"=len(data)}``: any member type, any size claim. The manifest's size and hash
    match the tar, so only the members are wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for spec in members:
            info, data = tarfile.TarInfo(spec["name"]), spec.get("data", b"")
            info.type, info.linkname = spec.get("type", tarfile.REGTYPE), spec.get("link", "")
            regular = info.type == tarfile.REGTYPE
            info.size = spec.get("size", len(data)) if regular else 0
            tf.addfile(info, io.BytesIO(data) if regular else None)
    raw = buf.getvalue()
    (folder / name).write_bytes(raw)
    m = Manifest(settings={}, shards=[ShardInfo(name=name, samples=samples, bytes=len(raw),
                                                sha256=hashlib.sha256(raw).hexdigest())],
                 totals={"samples": samples}, classes=None)
    m.save(folder)
    return m


@pytest.fixture(scope="session")
def hostile_set():
    """``hostile_set(folder, [{"name": ..., "data": ..., "type": ..., "link": ...}], ...) -> Manifest``."""
    return _hostile_set
