"""verify on hostile or damaged sets: every bad name, member, metadata or manifest value is a
finding (or, for a manifest that cannot be read at all, one clear error), never a traceback,
and nothing outside the set is opened."""

from __future__ import annotations

import json
import tarfile

import pytest
from typer.testing import CliRunner
from vidshard.cli import app
from vidshard.shards.verify import VerifyConfig, verify

runner = CliRunner()
KEY = "0123456789abcdef_00000"
META = {"video": "a.mp4", "video_id": "0123456789abcdef", "chunk": 0, "start_s": 0, "end_s": 1,
        "frames": 25, "fps": 25.0, "width": 64, "height": 48}


def run(location):
    return verify(VerifyConfig(location=str(location), progress=False))


def edit_manifest(folder, edit):
    path = folder / "manifest.json"
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "../secret.tar",
                                 "pipe:cat train-000000.tar"])
def test_names_outside_the_set_are_refused_unopened(shardset, bad):
    secret = shardset.parent / "secret.tar"
    secret.write_bytes(b"s" * 1234)
    edit_manifest(shardset, lambda d: d["shards"][0].update(name=bad))
    result = run(shardset)
    refused = [c for c in result.bad if c.status == "refused"]
    assert [c.name for c in refused] == [bad] and refused[0].bytes == 0
    assert "not opened" in refused[0].problems[0]
    assert sorted(c.status for c in result.shards) == ["ok", "ok", "refused"]  # the run went on
    res = runner.invoke(app, ["verify", str(shardset), "--quiet"])
    assert res.exit_code == 1 and f"refused: {bad}" in res.output and "1234" not in res.output


def test_a_shard_linking_out_of_the_set_is_refused(shardset):
    secret = shardset.parent / "secret.tar"
    first = shardset / "train-000000.tar"
    secret.write_bytes(first.read_bytes())  # even the right bytes: it is not in the set
    first.unlink()
    first.symlink_to(secret)
    result = run(shardset)
    assert [(c.name, c.status) for c in result.bad] == [("train-000000.tar", "refused")]
    assert "outside the shard set" in result.bad[0].problems[0]


@pytest.mark.parametrize("change,words", [
    ({"samples": "3"}, "samples must be a non-negative integer"),
    ({"sha256": "not-a-hash"}, "sha256 must be 64"),
    ({"bytes": -5}, "bytes must be"),
])
def test_bad_entry_values_are_findings(shardset, change, words):
    edit_manifest(shardset, lambda d: d["shards"][1].update(change))
    result = run(shardset)
    assert [c.status for c in result.bad] == ["refused"]
    assert words in result.bad[0].problems[0] and "shards[1]" in result.bad[0].problems[0]
    assert sum(c.status == "ok" for c in result.shards) == 2


@pytest.mark.parametrize("text,words", [("[]", "must be a JSON object, not list"),
                                        ("{oops", "not valid JSON"),
                                        ('{"format": "vidshard/1", "shards": 5}', "shards must be a list")])
def test_an_unreadable_manifest_is_one_clear_error_naming_the_file(shardset, text, words):
    (shardset / "manifest.json").write_text(text)
    res = runner.invoke(app, ["verify", str(shardset), "--quiet"])
    assert res.exit_code == 2 and words in res.output and str(shardset / "manifest.json") in res.output
    assert "Traceback" not in res.output


def sample(meta=None, **extra_members):
    meta_bytes = json.dumps(META if meta is None else meta).encode()
    return [{"name": f"{KEY}.mp4", "data": b"\0" * 100}, {"name": f"{KEY}.json", "data": meta_bytes},
            *({"name": f"{KEY}.{ext}", **spec} for ext, spec in extra_members.items())]


@pytest.mark.parametrize("members,words", [
    (sample(meta=[1, 2]), "metadata must be a JSON object, not list"),
    (sample(meta="x"), "metadata must be a JSON object"),
    (sample(meta=META | {"video_id": 5}), "'video_id' is 5"),
    (sample(meta=META | {"label": "x", "label_name": "a"}), "'label' is 'x'"),
    (sample(meta=META | {"width": True}), "'width' is True"),
    (sample(meta={k: v for k, v in META.items() if k != "fps"}), "no 'fps'"),
    (sample(txt={"type": tarfile.SYMTYPE, "link": "/etc/passwd"}), "is a symlink"),
    (sample(txt={"type": tarfile.LNKTYPE, "link": "/etc/passwd"}), "is a hard link"),
    (sample(dir={"type": tarfile.DIRTYPE}), "is a directory"),
    (sample(dev={"type": tarfile.CHRTYPE}), "is a special file"),
    ([{"name": f"{KEY}.json", "data": b" " * (2 << 20)}, {"name": f"{KEY}.mp4", "data": b"x"}],
     "over the 1048576-byte cap"),
])
def test_bad_members_are_findings_of_their_shard(tmp_path, hostile_set, members, words):
    hostile_set(tmp_path / "set", members)
    result = run(tmp_path / "set")
    assert [c.status for c in result.shards] == ["corrupt"]
    assert words in " ".join(result.shards[0].problems)
    res = runner.invoke(app, ["verify", str(tmp_path / "set"), "--quiet"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output


def test_a_shard_longer_than_its_manifest_is_read_only_that_far(shardset):
    first = shardset / "train-000000.tar"
    size = first.stat().st_size
    with open(first, "ab") as f:
        f.write(b"\0" * 5_000_000)
    result = run(shardset)
    assert result.bad[0].name == "train-000000.tar" and result.bad[0].bytes == size + 1
