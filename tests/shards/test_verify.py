import json
import threading

import pytest
from rich.console import Console
from vidshard.shards.schema import Manifest, SampleMeta, sample_members
from vidshard.shards.serve import ServeConfig, make_shard_server, url_of
from vidshard.shards.verify import VerifyConfig, report_table, verify
from vidshard.shards.writer import ShardWriter


def run(location, **kw):
    return verify(VerifyConfig(location=str(location), progress=False, **kw))


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pristine_set_passes(shardset):
    result = run(shardset, deep=True)
    assert result.ok, [c.problems for c in result.shards]
    assert sum(c.samples for c in result.shards) == 6
    assert run(shardset / "manifest.json").ok
    assert run(f"{shardset}/train-{{000000..000002}}.tar").ok  # any location the loader accepts


def test_flipped_byte_is_named_and_the_rest_pass(shardset):
    m = Manifest.load(shardset)
    flip(shardset / m.shards[1].name, m.shards[1].bytes // 2)  # inside a video: only the hash sees it
    result = run(shardset)
    assert not result.ok
    assert [c.name for c in result.bad] == [m.shards[1].name]
    assert result.bad[0].status == "corrupt" and "sha256" in " ".join(result.bad[0].problems)
    text = render(result)
    assert m.shards[1].name in text and "corrupt" in text


def test_missing_and_truncated_shards(shardset):
    m = Manifest.load(shardset)
    (shardset / m.shards[0].name).unlink()
    last = shardset / m.shards[-1].name
    last.write_bytes(last.read_bytes()[:3000])
    result = run(shardset)
    status = {c.name: c.status for c in result.bad}
    assert status == {m.shards[0].name: "missing", m.shards[-1].name: "corrupt"}
    assert any("bytes, manifest says" in p for p in result.bad[1].problems)


def test_sample_without_video_or_with_bad_metadata(tmp_path, clips):
    meta = SampleMeta(video="a.mp4", video_id="0123456789abcdef", chunk=0, start_s=0, end_s=1, frames=25,
                      fps=25.0, width=64, height=48)
    with ShardWriter(tmp_path) as w:
        w.write({"__key__": meta.key, "json": json.dumps(meta.to_dict()).encode()})  # no mp4
        w.write({"__key__": "fedcba9876543210_00000", "mp4": clips[0][2], "json": b"{not json"})
        w.write(sample_members(meta, clips[1][2]))  # the first key again
        info = w.close()
    Manifest(settings={}, shards=[info], totals={"samples": 3}).save(tmp_path)
    result = run(tmp_path)
    problems = " ".join(result.bad[0].problems)
    assert "no 0123456789abcdef_00000.mp4" in problems
    assert "unreadable fedcba9876543210_00000.json" in problems
    assert any("more than once" in p for p in result.problems)


def test_deep_check_catches_a_broken_video(tmp_path, clips):
    meta = SampleMeta(video="a.mp4", video_id="0123456789abcdef", chunk=0, start_s=0, end_s=1, frames=25,
                      fps=25.0, width=64, height=48)
    with ShardWriter(tmp_path) as w:
        w.write(sample_members(meta, b"\0" * 2000))
        info = w.close()
    Manifest(settings={}, shards=[info], totals={"samples": 1}).save(tmp_path)
    assert run(tmp_path).ok  # hash and members are fine ...
    assert "does not decode" in " ".join(run(tmp_path, deep=True).bad[0].problems)  # ... the video is not


def test_verify_over_http(shardset):
    m = Manifest.load(shardset)
    srv = make_shard_server(ServeConfig(shardset=shardset, port=0))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert run(url_of(srv)).ok
        flip(shardset / m.shards[0].name, 700)
        (shardset / m.shards[2].name).unlink()
        result = run(url_of(srv) + "manifest.json")
        assert {c.name: c.status for c in result.bad} == {m.shards[0].name: "corrupt",
                                                          m.shards[2].name: "missing"}
    finally:
        srv.shutdown()
        srv.server_close()


def test_no_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="vidshard preprocess"):
        run(tmp_path)


def render(result) -> str:
    console = Console(record=True, width=200)
    console.print(report_table(result))
    return console.export_text()
