import hashlib
import tarfile

import pytest
import webdataset as wds
from vidshard.shards.schema import (
    Manifest,
    SampleMeta,
    parse_shard_name,
    sample_key,
    sample_members,
    shard_name,
    video_id,
)
from vidshard.shards.writer import ShardWriter


def meta(i: int, label: int | None = None) -> SampleMeta:
    vid = video_id(f"class a/v{i}.mp4")
    return SampleMeta(video=f"class a/v{i}.mp4", video_id=vid, chunk=i % 3, start_s=0.0, end_s=2.0,
                      frames=50, fps=25.0, width=320, height=240, label=label,
                      label_name=None if label is None else f"c{label}")


def test_keys_are_stable_and_dot_free():
    assert video_id("a/b.mp4") == video_id("a/b.mp4")
    assert video_id("a/b.mp4") != video_id("a/b.mp4", 1.0, 2.0)
    key = sample_key(video_id("x.y.z.mp4"), 7)
    assert "." not in key and key.endswith("_00007")
    assert parse_shard_name(shard_name("train", 12)) == ("train", 12)
    assert parse_shard_name("train-12.tar") is None
    with pytest.raises(ValueError):
        shard_name("a.b", 0)


def test_manifest_round_trip(tmp_path):
    m = Manifest(settings={"crf": 23}, classes=["a", "b"])
    m.save(tmp_path)
    assert Manifest.load(tmp_path).to_dict() == m.to_dict()
    with pytest.raises(ValueError, match="format"):
        Manifest.from_dict({"format": "other/2"})
    with pytest.raises(FileNotFoundError, match="vidshard preprocess"):
        Manifest.load(tmp_path / "nope")


def test_meta_round_trip_keeps_extra_fields():
    d = meta(1, label=0).to_dict() | {"source_codec": "vp9"}
    assert SampleMeta.from_dict(d).to_dict() == d


def test_writer_rolls_over_atomically_and_hashes(tmp_path):
    with ShardWriter(tmp_path, max_bytes=20_000) as w:
        infos = []
        for i in range(10):
            infos += w.write(sample_members(meta(i, label=i % 2), b"\0" * 5000))
        infos.append(w.close())
    assert [i.name for i in infos] == [shard_name("train", k) for k in range(len(infos))]
    assert sum(i.samples for i in infos) == 10
    assert not list(tmp_path.glob(".*.tmp"))
    for info in infos:
        data = (tmp_path / info.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info.sha256 and len(data) == info.bytes
        with tarfile.open(tmp_path / info.name) as t:  # stock tar reads it
            assert all("." in n for n in t.getnames())
    urls = [str(tmp_path / i.name) for i in infos]
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert len(keys) == len(set(keys)) == 10 and len(infos) > 1


def test_writer_abort_publishes_nothing(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path) as w:
        w.write(sample_members(meta(0), b"x"))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_world_readable(tmp_path):
    path = Manifest(settings={}).save(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o644
