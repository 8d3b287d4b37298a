"""End to end on the variety folder: every file accounted for, every sample decodes at the short
side, durations add up, stock tar and webdataset read the shards."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import av
import pytest
import webdataset as wds
from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.plan import output_size
from vidshard.preprocess.probe import probe
from vidshard.preprocess.run import preprocess
from vidshard.shards.schema import Manifest, SampleMeta

from .conftest import BROKEN, ROTATED, VFR, expected_names

SHORT = 96


@pytest.fixture(scope="module")
def done(variety: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("variety_out") / "shards"
    cfg = PreprocessConfig(input=variety, output=out, chunk_seconds=1.0, min_chunk_seconds=0.5,
                           short_side=SHORT, gop=8, shard_size=1 << 17, workers=2, quiet=True)
    return out, preprocess(cfg, console=Console(quiet=True))


def read_samples(out: Path) -> dict[str, dict]:
    """key -> {"meta": SampleMeta, "mp4": bytes, "cls": bytes | None}, read with tarfile."""
    samples: dict[str, dict] = collections.defaultdict(dict)
    for shard in Manifest.load(out).shards:
        with tarfile.open(out / shard.name) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples[key][ext] = tar.extractfile(m).read()
    return {k: {"meta": SampleMeta.from_dict(json.loads(v["json"])), "mp4": v["mp4"], "cls": v.get("cls")}
            for k, v in samples.items()}


def test_every_file_is_a_sample_or_a_failure(done: tuple[Path, object]) -> None:
    out, result = done
    playable, broken = expected_names()
    videos = {s["meta"].video for s in read_samples(out).values()}
    assert videos == playable
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["path"] for f in failures} == broken
    for f in failures:
        assert BROKEN[f["path"]] in f["reason"], f
    assert result.total.videos_ok == len(playable) and result.total.videos_failed == len(broken)
    assert result.exit_code() == 0 and result.exit_code(strict=True) == 1


def test_samples_decode_at_the_short_side_with_frequent_keyframes(done: tuple[Path, object],
                                                                   tmp_path: Path) -> None:
    out, _ = done
    for key, s in read_samples(out).items():
        meta, path = s["meta"], tmp_path / f"{key}.mp4"
        path.write_bytes(s["mp4"])
        with av.open(str(path)) as c:
            assert not c.streams.audio, key  # audio dropped by default
            stream = c.streams.video[0]
            keyframes = [p.is_keyframe for p in c.demux(stream) if p.size]
            c.seek(0)
            frames = list(c.decode(stream))
        assert len(frames) == meta.frames == len(keyframes), key
        assert min(frames[0].width, frames[0].height) == SHORT and frames[0].width % 2 == 0, key
        assert (frames[0].width, frames[0].height) == (meta.width, meta.height)
        assert frames[0].format.name == "yuv420p"
        assert keyframes[0], f"{meta.video} chunk {meta.chunk} does not start with a keyframe"
        gaps = [i for i, k in enumerate(keyframes) if k] + [len(keyframes)]
        assert max(b - a for a, b in zip(gaps, gaps[1:], strict=False)) <= 8, key  # --gop 8


def test_durations_add_up_and_chunks_are_contiguous(done: tuple[Path, object], variety: Path) -> None:
    out, _ = done
    by_video: dict[str, list[SampleMeta]] = collections.defaultdict(list)
    for s in read_samples(out).values():
        by_video[s["meta"].video].append(s["meta"])
    for video, metas in by_video.items():
        metas.sort(key=lambda m: m.chunk)
        assert [m.chunk for m in metas] == list(range(len(metas)))
        assert metas[0].start_s == 0
        for a, b in zip(metas, metas[1:], strict=False):
            assert a.end_s == pytest.approx(b.start_s, abs=1e-5)  # no gap, no overlap
        info = probe(variety / video)
        frame = 1 / min(info.fps, 10.0) if video == VFR else 1 / info.fps
        total = sum(m.end_s - m.start_s for m in metas)
        assert total == pytest.approx(info.duration_s, abs=frame * len(metas) + 1e-3), video
        for m in metas[:-1]:
            assert m.end_s - m.start_s == pytest.approx(1.0, abs=frame + 1e-3), video


def test_rotation_and_pixel_aspect(done: tuple[Path, object], variety: Path) -> None:
    out, _ = done
    size = {s["meta"].video: (s["meta"].width, s["meta"].height) for s in read_samples(out).values()}
    assert size["h264.mp4"] == (128, 96)
    assert size[ROTATED] == (96, 128)  # shown portrait, as the phone meant it
    assert size["vp9 anamorphic.webm"] == (170, 96)  # 320x240 with 4:3 pixels is 16:9
    assert size["mpeg4 pal.avi"] == (128, 96)  # 240x192 with 16:15 pixels is 4:3
    assert size["h264 high444.mkv"] == (146, 96)
    for video, wh in size.items():  # ffmpeg's scale expression and the planner agree
        info = probe(variety / video)
        assert output_size(info.width, info.height, info.sar, info.rotation, SHORT) == wh, video


def test_stock_tar_and_webdataset_read_the_shards(done: tuple[Path, object]) -> None:
    out, _ = done
    manifest = Manifest.load(out)
    assert len(manifest.shards) > 1 and manifest.classes is None
    for shard in manifest.shards:
        data = (out / shard.name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard.sha256 and len(data) == shard.bytes
        names = subprocess.run(["tar", "tf", str(out / shard.name)], capture_output=True, text=True,
                               check=True).stdout.split()
        assert len(names) == 2 * shard.samples
    urls = [str(out / s.name) for s in manifest.shards]
    pipeline = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())
    keys = [s["__key__"] for s in pipeline]
    assert len(keys) == len(set(keys)) == manifest.num_samples == manifest.totals["samples"]
    assert not list(out.glob(".*.tmp")) and not (out / ".vidshard" / "staging").exists()


def test_labels_from_dirs(tiny_shardset: Path) -> None:
    manifest = Manifest.load(tiny_shardset)
    assert manifest.classes == ["left", "right"] and len(manifest.shards) > 1
    samples = read_samples(tiny_shardset)
    assert len(samples) == 18
    for s in samples.values():
        m = s["meta"]
        assert m.label_name == m.video.split("/")[0] and manifest.classes[m.label] == m.label_name
        assert s["cls"] == str(m.label).encode()


def test_list_with_segments_labels_and_captions(tmp_path: Path, make_video) -> None:
    make_video("raw/kitchen.mp4", seconds=6.0, fps=25)
    make_video("raw/garden.webm", codec="vp8", seconds=2.0)
    (tmp_path / "list.jsonl").write_text(
        '{"path": "raw/kitchen.mp4", "label": "cut", "start": 0.5, "end": 3.0, "caption": "cut onion"}\n'
        '{"path": "raw/kitchen.mp4", "label": "stir", "start": 3.0, "end": 5.5}\n'
        '{"path": "raw/garden.webm", "label": "stir"}\n'
        '{"path": "raw/missing.mp4", "label": "cut"}\n')
    cfg = PreprocessConfig(input=tmp_path / "list.jsonl", output=tmp_path / "out", chunk_seconds=1.0,
                           min_chunk_seconds=0.5, short_side=64, workers=1, quiet=True)
    result = preprocess(cfg, console=Console(quiet=True))
    assert result.total.videos_ok == 3 and result.total.videos_failed == 1
    metas = sorted((s["meta"] for s in read_samples(tmp_path / "out").values()),
                   key=lambda m: (m.video, m.start_s))
    assert Manifest.load(tmp_path / "out").classes == ["cut", "stir"]
    cut = [m for m in metas if m.label_name == "cut"]
    assert cut[0].start_s == pytest.approx(0.5) and cut[-1].end_s == pytest.approx(3.0, abs=0.05)
    assert {m.caption for m in cut} == {"cut onion"} and len(cut) == 2  # 2.5 s: 1 s + 1.5 s
    stir = [m for m in metas if m.video == "raw/kitchen.mp4" and m.label_name == "stir"]
    assert stir[0].start_s == pytest.approx(3.0) and stir[-1].end_s == pytest.approx(5.5, abs=0.05)
    assert len({m.video_id for m in metas}) == 3  # each segment is its own input


def test_a_worker_dying_fails_only_its_own_file(tmp_path: Path, make_video, monkeypatch) -> None:
    import vidshard.preprocess.encode as encode

    real_probe = encode.probe

    def probe_or_die(path):  # a decoder crash: the worker process vanishes, no exception
        if "crash" in str(path):
            os._exit(3)
        return real_probe(path)

    monkeypatch.setattr(encode, "probe", probe_or_die)  # workers are forked: they inherit it
    for i in range(3):
        make_video(f"in/ok{i}.mp4", seconds=1.0, width=160, height=120)
    make_video("in/crash.mp4", seconds=1.0, width=160, height=120)
    cfg = PreprocessConfig(input=tmp_path / "in", output=tmp_path / "out", chunk_seconds=1.0, short_side=64,
                           workers=2, quiet=True)
    result = preprocess(cfg, console=Console(quiet=True))
    assert result.total.videos_ok == 3
    assert [f["path"] for f in result.failures] == ["crash.mp4"]
    assert "worker process died" in result.failures[0]["reason"]


def test_one_ffmpeg_process_per_video_with_audio_and_fps_options(tmp_path: Path, make_video,
                                                                  monkeypatch) -> None:
    import vidshard.preprocess.encode as encode
    from vidshard.preprocess.encode import EncodeJob, encode_video, read_staged
    from vidshard.preprocess.inputs import list_inputs

    calls = []
    real = encode.transcode
    monkeypatch.setattr(encode, "transcode", lambda *a, **k: calls.append(a) or real(*a, **k))
    make_video("in/talk.mkv", seconds=3.1, fps=30, audio=True, width=160, height=120)
    cfg = PreprocessConfig(input=tmp_path / "in", output=tmp_path / "out", chunk_seconds=1.0, short_side=64,
                           fps=12.5, keep_audio=True)
    (item,) = list_inputs(cfg.input)
    out = encode_video(EncodeJob(item=item, label=None, staging=tmp_path / "staging"), cfg)
    assert out.reason is None and len(calls) == 1  # decoded once for all the chunks
    metas = read_staged(out.staged)["samples"]
    assert len(metas) == 3  # 1 s, 1 s, 1.1 s: the 0.1 s tail (< 1 s / 5) joins the chunk before
    for m in metas:
        with av.open(str(out.staged / f"{m['chunk']:05d}.mp4")) as c:
            assert len(c.streams.audio) == 1 and c.streams.video[0].average_rate == 12.5
    assert abs(sum(m["frames"] for m in metas) - 3.1 * 12.5) <= 1


def test_variety_with_split_at_scenes(variety: Path, tmp_path: Path) -> None:
    """--split-at-scenes (one decode pass, onepass.py) on every kind of input: each one is accounted for,
    the damaged ones reported, sizes follow the output size rule, chunks cover each video."""
    cfg = PreprocessConfig(input=variety, output=tmp_path / "out", chunk_seconds=1.0, min_chunk_seconds=0.5,
                           short_side=64, gop=8, workers=2, quiet=True, split_at_scenes=True)
    result = preprocess(cfg, console=Console(quiet=True))
    playable, broken = expected_names()
    by_video: dict[str, list] = collections.defaultdict(list)
    for s in read_samples(cfg.output).values():
        by_video[s["meta"].video].append(s["meta"])
    assert set(by_video) == playable
    failures = [json.loads(line) for line in (cfg.output / "failures.jsonl").read_text().splitlines()]
    assert {f["path"]: BROKEN[f["path"]] in f["reason"] for f in failures} == dict.fromkeys(broken, True)
    assert result.total.videos_ok == len(playable)
    for video, metas in by_video.items():
        info = probe(variety / video)
        metas.sort(key=lambda m: m.chunk)
        assert {(m.width, m.height) for m in metas} == {
            output_size(info.width, info.height, info.sar, info.rotation, 64)}, video
        assert metas[0].start_s == 0 and all(a.end_s == pytest.approx(b.start_s, abs=1e-5)
                                             for a, b in zip(metas, metas[1:], strict=False)), video
        assert metas[-1].end_s == pytest.approx(info.duration_s, abs=0.2), video
