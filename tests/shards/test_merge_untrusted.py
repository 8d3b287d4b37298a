"""merge of untrusted sets: only files inside each set, each shard's size, sha256 and sample count
checked before anything is placed, hashes in the merged manifest computed by merge."""

from __future__ import annotations

import hashlib
import json

import pytest
from vidshard.shards.merge import MergeConfig, MergeError, merge
from vidshard.shards.schema import Manifest


@pytest.fixture
def two_sets(tmp_path, clips, build_shardset):
    a, b = tmp_path / "A", tmp_path / "B"
    build_shardset(a, clips[:3])
    build_shardset(b, clips[3:])
    (tmp_path / "secret.tar").write_bytes(b"private bytes " * 100)
    return a, b


def edit_manifest(folder, edit):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def run(sets, out):
    return merge(MergeConfig(sets=tuple(sets), output=out, progress=False))


@pytest.mark.parametrize("bad", ["../secret.tar", "PLACEHOLDER_ABS"])
def test_names_outside_a_set_are_refused(two_sets, tmp_path, bad):
    a, b = two_sets
    bad = str(tmp_path / "secret.tar") if bad == "PLACEHOLDER_ABS" else bad
    edit_manifest(b, lambda d: d["shards"][0].update(name=bad))
    with pytest.raises(ValueError, match=r"B/manifest.json: shards\[0\]: shard name"):  # a ManifestError
        run((a, b), tmp_path / "M")
    assert not (tmp_path / "M").exists()


def test_a_shard_linking_out_of_its_set_is_refused(two_sets, tmp_path):
    a, b = two_sets
    shard = b / Manifest.load(b).shards[0].name
    outside = tmp_path / "elsewhere.tar"
    outside.write_bytes(shard.read_bytes())  # the right bytes, but not inside the set
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(MergeError, match=rf"B: shard {shard.name}: cannot be merged .*outside the shard set"):
        run((a, b), tmp_path / "M")
    assert not (tmp_path / "M").exists()


def test_a_bogus_sha256_is_an_error_naming_set_and_shard(two_sets, tmp_path):
    a, b = two_sets
    name = Manifest.load(b).shards[-1].name
    edit_manifest(b, lambda d: d["shards"][-1].update(sha256="0" * 64))
    words = rf"B: shard {name}: sha256 is [0-9a-f]{{64}}, its manifest says 0000"
    with pytest.raises(MergeError, match=words):
        run((a, b), tmp_path / "M")
    assert not (tmp_path / "M").exists()  # checked before anything was placed


def test_a_wrong_sample_count_is_refused(two_sets, tmp_path):
    a, b = two_sets
    edit_manifest(a, lambda d: d["shards"][0].update(samples=d["shards"][0]["samples"] + 1))
    with pytest.raises(MergeError, match="samples is"):
        run((a, b), tmp_path / "M")


def test_merged_hashes_are_the_files_hashes(two_sets, tmp_path):
    m = run(two_sets, tmp_path / "M")
    for s in m.shards:
        data = (tmp_path / "M" / s.name).read_bytes()
        assert (s.bytes, s.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_failures_linking_out_of_a_set_are_refused(two_sets, tmp_path):
    a, b = two_sets
    (b / "failures.jsonl").unlink()
    (b / "failures.jsonl").symlink_to(tmp_path / "secret.tar")
    with pytest.raises(MergeError, match="failures.jsonl cannot be merged"):
        run((a, b), tmp_path / "M")
    (b / "failures.jsonl").unlink()
    (b / "failures.jsonl").write_text('{"path": "x", "reason": "y"}\nnot json\n')
    with pytest.raises(MergeError, match="line 2 is not a JSON object"):
        run((a, b), tmp_path / "M2")
