import json

import pytest
from vidshard.shards.merge import MergeConfig, MergeError, merge, shard_keys
from vidshard.shards.schema import Manifest
from vidshard.shards.verify import VerifyConfig, verify

SETTINGS = {"chunk_s": 1.0, "short_side": 48, "crf": 30, "prefix": "train"}


@pytest.fixture
def two_parts(tmp_path, clips, build_shardset):
    a = tmp_path / "OUT_1"
    b = tmp_path / "OUT_2"
    build_shardset(a, clips[:4], settings=SETTINGS | {"part": "1/2", "shard_size": 12_000})
    build_shardset(b, clips[4:], settings=SETTINGS | {"part": "2/2", "shard_size": 20_000})
    return a, b


def all_keys(folder):
    return [k for s in Manifest.load(folder).shards for k in shard_keys(folder / s.name)]


def test_merge_holds_exactly_the_samples_of_the_parts(two_parts, tmp_path):
    a, b = two_parts
    out = tmp_path / "MERGED"
    m = merge(MergeConfig(sets=(a, b), output=out, progress=False))
    assert all_keys(out) == all_keys(a) + all_keys(b) and len(set(all_keys(out))) == 6
    assert [s.name for s in m.shards] == [f"train-{i:06d}.tar" for i in range(len(m.shards))]
    assert m.totals["samples"] == 6 and m.totals["failed"] == 2 and m.num_samples == 6
    assert m.settings["part"] is None and m.settings["shard_size"] == 20_000 and m.settings["crf"] == 30
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2
    assert Manifest.load(out).to_dict() == m.to_dict()
    assert verify(VerifyConfig(location=str(out), progress=False)).ok
    src = a / Manifest.load(a).shards[0].name
    assert (out / m.shards[0].name).stat().st_ino == src.stat().st_ino  # hard-linked, no copy


def test_copy_mode_copies(two_parts, tmp_path):
    a, b = two_parts
    m = merge(MergeConfig(sets=(a, b), output=tmp_path / "M", copy=True, progress=False))
    src = a / Manifest.load(a).shards[0].name
    dst = tmp_path / "M" / m.shards[0].name
    assert dst.stat().st_ino != src.stat().st_ino and dst.read_bytes() == src.read_bytes()


def test_refuses_other_settings_naming_the_keys(tmp_path, clips, build_shardset):
    build_shardset(tmp_path / "a", clips[:2], settings=SETTINGS)
    build_shardset(tmp_path / "b", clips[2:4], settings=SETTINGS | {"crf": 23, "short_side": 96})
    with pytest.raises(MergeError, match=r"other settings.*crf \(.*30.*23\).*short_side"):
        merge(MergeConfig(sets=(tmp_path / "a", tmp_path / "b"), output=tmp_path / "m", progress=False))
    assert not (tmp_path / "m").exists()


def test_refuses_other_classes(tmp_path, clips, build_shardset):
    build_shardset(tmp_path / "a", clips[:2], classes=["moving", "counter"])
    build_shardset(tmp_path / "b", clips[2:4], classes=["moving", "other"])
    with pytest.raises(MergeError, match=r"other classes.*class id 1 is 'counter' vs 'other'"):
        merge(MergeConfig(sets=(tmp_path / "a", tmp_path / "b"), output=tmp_path / "m", progress=False))
    build_shardset(tmp_path / "c", clips[2:4], classes=None)
    with pytest.raises(MergeError, match="labeled"):
        merge(MergeConfig(sets=(tmp_path / "a", tmp_path / "c"), output=tmp_path / "m", progress=False))


def test_refuses_duplicate_keys(tmp_path, clips, build_shardset):
    build_shardset(tmp_path / "a", clips[:3])
    build_shardset(tmp_path / "b", clips[2:5])  # clip 2 in both
    with pytest.raises(MergeError, match=r"1 sample keys occur more than once"):
        merge(MergeConfig(sets=(tmp_path / "a", tmp_path / "b"), output=tmp_path / "m", progress=False))


def test_refuses_bad_outputs_and_inputs(two_parts, tmp_path):
    a, b = two_parts
    with pytest.raises(FileExistsError, match="already holds a shard set"):
        MergeConfig(sets=(a,), output=b)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        MergeConfig(sets=(a, tmp_path / "nothing"), output=tmp_path / "m")
    with pytest.raises(ValueError, match="twice"):
        MergeConfig(sets=(a, a), output=tmp_path / "m")


def test_missing_or_broken_shard_is_refused(two_parts, tmp_path):
    a, b = two_parts
    (b / Manifest.load(b).shards[0].name).unlink()
    with pytest.raises(MergeError, match="vidshard verify"):
        merge(MergeConfig(sets=(a, b), output=tmp_path / "m", progress=False))
    shard = a / Manifest.load(a).shards[0].name
    shard.write_bytes(b"\1" * shard.stat().st_size)  # right size, no tar
    with pytest.raises(MergeError, match="not a readable tar"):
        merge(MergeConfig(sets=(a,), output=tmp_path / "m", progress=False))


def test_failures_lines_are_json(two_parts, tmp_path):
    merge(MergeConfig(sets=two_parts, output=tmp_path / "m", progress=False))
    for line in (tmp_path / "m" / "failures.jsonl").read_text().splitlines():
        assert "reason" in json.loads(line)
