"""inspect on hostile or damaged sets: a bad member or bad metadata is a skipped sample counted by
reason, a bad manifest entry or a shard linking out of the set an unreadable shard; never a traceback."""

from __future__ import annotations

import json
import tarfile

import pytest
from rich.console import Console
from typer.testing import CliRunner
from vidshard.cli import app
from vidshard.shards.inspect import InspectConfig, inspect, summary_tables

runner = CliRunner()
META = {"video": "a.mp4", "video_id": "0123456789abcdef", "chunk": 0, "start_s": 0, "end_s": 1,
        "frames": 25, "fps": 25.0, "width": 64, "height": 48}
GOOD = [{"name": "aaaaaaaaaaaaaaaa_00000.mp4", "data": b"\0" * 100},
        {"name": "aaaaaaaaaaaaaaaa_00000.json", "data": json.dumps(META | {"video_id": "a" * 16}).encode()}]


def bad_sample(meta=None, **extra):
    key = "0123456789abcdef_00000"
    return [{"name": f"{key}.mp4", "data": b"\0" * 100},
            {"name": f"{key}.json", "data": json.dumps(META if meta is None else meta).encode()},
            *({"name": f"{key}.{ext}", **spec} for ext, spec in extra.items())]


def run(location):
    return inspect(InspectConfig(location=str(location), progress=False))


def text_of(summary) -> str:
    console = Console(record=True, width=200)
    for t in summary_tables(summary):
        console.print(t)
    return console.export_text()


@pytest.mark.parametrize("members,reason", [
    (bad_sample(meta=[1]), "bad metadata"),
    (bad_sample(meta=META | {"end_s": "x"}), "bad metadata"),
    (bad_sample(meta=META | {"video_id": 7}), "bad metadata"),
    (bad_sample(txt={"type": tarfile.SYMTYPE, "link": "/etc/passwd"}), "not a regular file"),
    (bad_sample(txt={"type": tarfile.LNKTYPE, "link": "/etc/passwd"}), "not a regular file"),
    (bad_sample(x={"type": tarfile.DIRTYPE}), "not a regular file"),
    (bad_sample(cls={"data": b"1" * 100}), "oversize member"),
])
def test_bad_samples_are_skipped_and_counted(tmp_path, hostile_set, members, reason):
    hostile_set(tmp_path / "set", GOOD + members, samples=2)
    s = run(tmp_path / "set")
    assert s.samples == 1 and dict(s.skipped) == {reason: 1} and not s.unreadable
    assert f"{reason}: 1" in text_of(s)
    res = runner.invoke(app, ["inspect", str(tmp_path / "set"), "--quiet"])
    assert res.exit_code == 0 and "Traceback" not in res.output and "skipped samples" in res.output


def test_bad_entries_and_outside_links_are_unreadable_shards(shardset):
    path = shardset / "manifest.json"
    d = json.loads(path.read_text())
    d["shards"][0]["name"] = "../../etc/passwd"
    d["classes"] = ["[/x]", "[bold]counter"]  # names are text, not markup
    path.write_text(json.dumps(d))
    last = shardset / d["shards"][2]["name"]
    (shardset.parent / "outside.tar").write_bytes(last.read_bytes())
    last.unlink()
    last.symlink_to(shardset.parent / "outside.tar")
    s = run(shardset)
    assert s.samples == d["shards"][1]["samples"]
    assert s.unreadable[0].startswith("../../etc/passwd (refused: shard name")
    assert s.unreadable[1] == f"{last.name} (OutsideSetError)"
    assert "[/x]" in text_of(s)
