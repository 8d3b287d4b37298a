"""The command line: help text, exit codes, --dry-run, clear errors; the demo and the benchmark run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner
from vidshard.benchmarks.preprocess import BenchConfig, bench_preprocess
from vidshard.cli import app
from vidshard.demo import DemoConfig, make_samples, preprocess_config
from vidshard.preprocess.run import preprocess
from vidshard.shards.schema import Manifest

runner = CliRunner()
FAST = ["--chunk-seconds", "1", "--short-side", "64", "--workers", "1", "--quiet"]


def test_help_documents_every_option() -> None:
    text = runner.invoke(app, ["preprocess", "--help"], terminal_width=200).output
    for opt in ("--chunk-seconds", "--min-chunk-seconds", "--short-side", "--fps", "--crf", "--gop",
                "--keep-audio", "--labels-from-dirs", "--shard-size", "--workers", "--part", "--quiet",
                "--dry-run", "--strict", "--retry-failed", "--tune", "--min-free-space", "--split-at-scenes",
                "--scene-threshold", "--min-shot-seconds", "--bframes", "--b-pyramid", "--b-adapt",
                "--watch", "--settle-seconds", "--flush-seconds",
                "--poll", "--poll-seconds"):
        assert opt in text, opt
    assert "bench" in runner.invoke(app, ["--help"]).output
    assert "--json" in runner.invoke(app, ["bench", "preprocess", "--help"], terminal_width=200).output
    scenes_help = runner.invoke(app, ["bench", "scenes", "--help"], terminal_width=200).output
    assert "--flicker" in scenes_help and "--size" in scenes_help


def test_exit_codes(tmp_path: Path, make_video) -> None:
    make_video("in/good.mp4", seconds=1.0)
    (tmp_path / "in" / "bad.mp4").write_text("no video here")
    ok = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out"), *FAST])
    assert ok.exit_code == 0, ok.output
    assert "bad.mp4" in ok.output and "1 videos ok, 1 failed" in ok.output
    strict = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out"), *FAST,
                                 "--strict"])
    assert strict.exit_code == 1
    (tmp_path / "bad_only").mkdir()
    (tmp_path / "bad_only" / "x.avi").write_bytes(b"\0" * 100)
    none = runner.invoke(app, ["preprocess", str(tmp_path / "bad_only"), str(tmp_path / "out2"), *FAST])
    assert none.exit_code == 1


def test_dry_run_encodes_nothing(tmp_path: Path, make_video) -> None:
    make_video("in/a.mp4", seconds=2.5, width=320, height=240)
    res = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out"), "--dry-run",
                              "--chunk-seconds", "1", "--short-side", "64"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "a.mp4" in res.output and "86x64" in res.output
    assert not (tmp_path / "out").exists()  # nothing written at all


def test_clear_errors_for_bad_arguments(tmp_path: Path, make_video) -> None:
    missing = runner.invoke(app, ["preprocess", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    bad_part = runner.invoke(app, ["preprocess", str(tmp_path), str(tmp_path / "out"), "--part", "5/4"])
    assert bad_part.exit_code == 2 and "--part" in bad_part.output
    for opt, value, says in (("--bframes", "many", "--bframes 'many'"), ("--b-pyramid", "flat", "b_pyramid"),
                             ("--b-adapt", "3", "b_adapt")):
        bad = runner.invoke(app, ["preprocess", str(tmp_path), str(tmp_path / "out"), opt, value])
        assert bad.exit_code == 2 and says in bad.output and "Traceback" not in bad.output, bad.output
    make_video("in/a.mp4", seconds=1.0)
    runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out"), *FAST])
    changed = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / "out"), *FAST[2:],
                                  "--short-side", "96"])
    assert changed.exit_code == 2 and "other settings" in changed.output


def test_demo_steps_make_a_labeled_shard_set(tmp_path: Path) -> None:
    """Steps 1 and 2 of the demo (the training steps after them are tested in tests/train)."""
    cfg = DemoConfig(out_dir=tmp_path / "demo", videos_per_class=2, seconds=2.0, workers=2)
    files = make_samples(cfg.out_dir / "videos", cfg)
    assert len(files) == 5 and len({f.suffix for f in files}) >= 2
    pp = preprocess_config(cfg)
    preprocess(pp, console=Console(quiet=True))
    manifest = Manifest.load(pp.output)
    assert manifest.classes == ["left", "right"] and manifest.totals["videos"] == 4
    failures = [json.loads(line) for line in (pp.output / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["right/broken_download.mp4"]


def test_benchmark_reports_both_sides(tmp_path: Path) -> None:
    res = bench_preprocess(BenchConfig(videos=2, seconds=1.0, workers=1, repeats=1),
                           console=Console(quiet=True))
    d = res.to_dict()
    assert d["videos"] == 2 and d["video_seconds"] == 2.0
    assert d["ffmpeg_s"] > 0 and d["vidshard_s"] > 0 and d["ratio"] == d["ffmpeg_s"] / d["vidshard_s"]


def test_bench_command_writes_json_and_offers_the_gop_sweep(tmp_path: Path) -> None:
    assert "--gop-sweep" in runner.invoke(app, ["bench", "preprocess", "--help"], terminal_width=200).output
    out = tmp_path / "pre.json"
    res = runner.invoke(app, ["bench", "preprocess", "--videos", "1", "--seconds", "1", "--workers", "1",
                              "--repeats", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "ratio" in res.output and json.loads(out.read_text())["videos"] == 1


def test_gop_sweep_rows() -> None:
    from vidshard.benchmarks.preprocess import gop_sweep

    rows = gop_sweep(gops=(4, 64), clips=3, seconds=2.0, short_side=64)
    assert [r["gop"] for r in rows] == [4, 64]
    assert rows[0]["kbytes_per_s"] > rows[1]["kbytes_per_s"] > 0  # more keyframes cost bytes
    assert all(r["clips_per_s"] > 0 for r in rows)


OLD_DEFAULT = ["--tune", "none", "--crf", "23", "--bframes", "preset", "--b-pyramid", "preset",
               "--b-adapt", "preset"]  # the encoding before issue 12 changed the default


def test_manifest_records_tune_and_an_old_manifest_without_it_means_no_tune(tmp_path: Path,
                                                                             make_video) -> None:
    make_video("in/a.mp4", seconds=1.0)
    out = tmp_path / "out"
    res = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(out), *FAST, "--tune", "film"])
    assert res.exit_code == 0, res.output
    assert Manifest.load(out).settings["tune"] == "film"
    shutil.rmtree(out)
    # A set made with the old default before --tune and the B-frame options existed: its manifest has
    # none of them. Adding videos with today's default must be refused (the encodings would mix) ...
    res = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(out), *FAST, *OLD_DEFAULT])
    assert res.exit_code == 0, res.output
    raw = json.loads((out / "manifest.json").read_text())
    for key in ("tune", "bframes", "b_pyramid", "b_adapt"):
        del raw["settings"][key]
    (out / "manifest.json").write_text(json.dumps(raw))
    make_video("in/b.mp4", seconds=1.0)
    mixed = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(out), *FAST], terminal_width=300)
    assert mixed.exit_code == 2
    for change in ("tune None -> 'fastdecode'", "crf 23 -> 22", "b_pyramid None -> 'none'",
                   "bframes None -> 5"):
        assert change in " ".join(mixed.output.split()), change
    assert Manifest.load(out).totals["videos"] == 1
    # ... and the old options, spelled out, go on adding to it.
    same = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(out), *FAST, *OLD_DEFAULT])
    assert same.exit_code == 0, same.output
    m = Manifest.load(out)
    assert m.totals["videos"] == 2 and m.settings["tune"] is None and m.settings["b_pyramid"] is None


def _reference_flags(shardset: Path) -> list[bool]:
    """For every H.264 picture of every sample in ``shardset``: is it one that others reference?"""
    import io
    import tarfile

    import av
    from vidshard.shards.decode import _droppable, _h264_length_size

    flags = []
    for tar in sorted(shardset.glob("*.tar")):
        with tarfile.open(tar) as t:
            for member in (m for m in t.getmembers() if m.name.endswith(".mp4")):
                with av.open(io.BytesIO(t.extractfile(member).read())) as c:
                    s = c.streams.video[0]
                    size = _h264_length_size(s)
                    flags += [not _droppable(bytes(p), size) for p in c.demux(s) if p.size]
    return flags


def test_default_encoding_makes_most_pictures_non_reference(tmp_path: Path, make_video) -> None:
    """Why the default decodes fast: no B-frame is a reference (no B-pyramid) and 5 of every 6 pictures
    are B-frames, so a clip of every 4th frame decodes the few reference pictures and its own."""
    make_video("in/a.mp4", seconds=2.0, fps=25, width=160, height=120, pattern="testsrc2")
    for name, opts in (("new", []), ("old", OLD_DEFAULT)):
        res = runner.invoke(app, ["preprocess", str(tmp_path / "in"), str(tmp_path / name), *FAST,
                                  "--chunk-seconds", "2", *opts])
        assert res.exit_code == 0, res.output
    new, old = _reference_flags(tmp_path / "new"), _reference_flags(tmp_path / "old")
    assert len(new) == len(old) == 50
    # Per 16-frame gop: the keyframe, P-frames 6 and 12 frames on, and one ending the (closed) gop.
    assert sum(new) <= 4 * 50 // 16 + 3, sum(new)
    assert sum(old) >= 1.7 * sum(new), (sum(old), sum(new))  # old: about every second one is a reference


def test_encode_sweep_arithmetic_and_choice() -> None:
    from vidshard.benchmarks.preprocess import Candidate, parse_candidate, summarize

    assert parse_candidate("fastdecode,21,16,-") == Candidate(tune="fastdecode", crf=21, gop=16)
    assert parse_candidate("none,23,32,0") == Candidate(crf=23, gop=32, bframes=0)
    with pytest.raises(ValueError, match="TUNE,CRF,GOP,BF"):
        parse_candidate("fastdecode,21")
    assert parse_candidate("fastdecode,22,16,5,none,0") == Candidate(
        tune="fastdecode", crf=22, gop=16, bframes=5, b_pyramid="none", b_adapt=0)
    assert parse_candidate("none,23,16,-,-,2") == Candidate(b_adapt=2)
    for bad, field in (("fastdecode,22,16,5,flat", "b_pyramid"), ("fastdecode,22,16,5,none,7", "b_adapt"),
                       ("fast,22,16,-", "tune")):
        with pytest.raises(ValueError, match=field):
            parse_candidate(bad)

    def row(label, size, ssim, clips):
        return {"label": label, "bytes": size, "ssim": ssim, "psnr": 40.0, "encode_x_realtime": [10.0, 20.0],
                "clips_per_s": clips}

    measured = [row("base", 1000, 0.9920, [100.0, 50.0, 80.0]),
                row("fast", 1080, 0.9901, [210.0, 110.0, 160.0]),     # 2x, but SSIM lower
                row("fast21", 1260, 0.9921, [190.0, 95.0, 150.0]),    # qualifies
                row("fast20", 1290, 0.9930, [200.0, 100.0, 160.0]),   # qualifies, more bytes
                row("huge", 1400, 0.9950, [300.0, 150.0, 240.0]),     # too many bytes
                row("slow", 900, 0.9920, [150.0, 150.0, 100.0])]      # ratios 1.5, 3.0, 1.25: median 1.5
    res = summarize(measured, baseline="base")
    by = {r["label"]: r for r in res["rows"]}
    assert by["fast"]["decode_ratio"] == pytest.approx(2.1)
    assert by["fast"]["bytes_ratio"] == pytest.approx(1.08)
    assert by["slow"]["decode_ratio"] == pytest.approx(1.5)  # the median of per-repeat ratios
    assert [r["label"] for r in res["rows"] if r["qualifies"]] == ["fast21", "fast20"]
    assert res["chosen"] == "fast21"
    assert summarize(measured[:2], baseline="base")["chosen"] is None


def test_encode_sweep_measures_each_candidate() -> None:
    from vidshard.benchmarks.preprocess import Candidate, encode_sweep

    res = encode_sweep((Candidate(), Candidate(tune="fastdecode", crf=30)), seconds=1.0, short_side=64,
                       clips=2, repeats=1, console=Console(quiet=True))
    base, other = res["rows"]
    assert base["decode_ratio"] == 1.0 and base["bytes_ratio"] == 1.0
    assert 0 < other["bytes"] < base["bytes"] and 0.5 < other["ssim"] < base["ssim"] <= 1.0
    assert other["psnr"] < base["psnr"] and len(other["clips_per_s"]) == 1
