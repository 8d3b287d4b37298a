"""Resumable and incremental: SIGKILL at any moment, crashes between the steps of a shard commit,
leftovers, new inputs, failures, settings changes, and --part runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.preprocess.run import preprocess
from vidshard.preprocess.store import NotOurOutput, SettingsMismatch
from vidshard.shards.schema import Manifest, sample_key, video_id

OPTS = {"chunk_seconds": 1.0, "min_chunk_seconds": 0.5, "short_side": 64, "gop": 8, "shard_size": 1 << 16}


def make_inputs(root: Path, n: int, seconds: float = 2.0) -> Path:
    for i in range(n):
        ext, codec = (("mp4", "h264"), ("avi", "mpeg4"), ("webm", "vp8"))[i % 3]
        synth_video(root / f"c{i % 2}" / f"v{i:02d}.{ext}",
                    Synth(seconds=seconds, width=192, height=144, pattern="mandelbrot", codec=codec))
    return root


def expected_keys(root: Path, seconds: float = 2.0) -> set[str]:
    rels = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return {sample_key(video_id(r), c) for r in rels for c in range(int(seconds))}


def run(src: Path, out: Path, **kw: object):
    cfg = PreprocessConfig(input=src, output=out, quiet=True, **{**OPTS, "workers": 2, **kw})
    return preprocess(cfg, console=Console(quiet=True))


def listed_keys(out: Path) -> list[str]:
    """Keys of every sample in the shards the manifest lists (checking each shard's sha256)."""
    keys = []
    for shard in Manifest.load(out).shards:
        with tarfile.open(out / shard.name) as tar:
            keys += [m.name.split(".")[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def check_consistent(out: Path) -> list[str]:
    """What any reader may rely on at any moment: listed shards complete, no key twice, no stray shard."""
    if not (out / "manifest.json").exists():
        return []
    manifest = Manifest.load(out)
    names = {s.name for s in manifest.shards}
    for shard in manifest.shards:
        assert (out / shard.name).stat().st_size == shard.bytes
    keys = listed_keys(out)
    assert len(keys) == len(set(keys)), "a sample is listed twice"
    assert manifest.totals["samples"] == len(keys)
    assert names <= {p.name for p in out.glob("*.tar")}
    return keys


# About 20 KB a sample: three fill a 64 KiB shard, so a run of 8 videos commits 6 shards and a video
# (2 samples) often straddles two shards: one listed, one orphaned or open when the kill lands.
KILL_OPTS = {"short_side": 96, "crf": 18}


def cli(src: Path, out: Path) -> list[str]:
    """The CLI command equal to ``run(src, out, **KILL_OPTS)``."""
    return [sys.executable, "-m", "vidshard.cli", "preprocess", str(src), str(out), "--quiet", "--workers",
            "2", "--chunk-seconds", "1", "--min-chunk-seconds", "0.5", "--short-side", "96", "--crf", "18",
            "--gop", "8", "--shard-size", "64KiB"]


def journal_shards(out: Path) -> list[str]:
    """Names of the shards the journal lists (complete lines only)."""
    path = out / ".vidshard" / "journal.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["shard"]["name"] for line in text.splitlines(keepends=True)
            if line.endswith("\n") and json.loads(line)["shard"]]


def staging_names(out: Path) -> set[str]:
    staging = out / ".vidshard" / "staging"
    return {p.name for p in staging.iterdir()} if staging.is_dir() else set()


def published(out: Path) -> set[str]:
    """Videos a worker staged completely (a ``.tmp`` folder is still being encoded)."""
    return {n for n in staging_names(out) if not n.endswith(".tmp")
            and (out / ".vidshard" / "staging" / n / "meta.json").exists()}


def kill_when(cmd: list[str], moment, env: dict | None = None) -> None:
    """Start ``cmd``; SIGKILL its whole process group (ffmpeg included) as soon as ``moment()`` is true.
    Fails unless the process was still running then (the kill landed at that moment)."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180  # a bound against hanging, not a speed check
    try:
        while not moment():
            assert proc.poll() is None, f"the run ended before the moment: {proc.stderr.read()[-2000:]!r}"
            assert time.monotonic() < deadline, "the moment never came"
            time.sleep(0.005)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert alive, "the run ended before the kill"
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_at_three_moments_then_rerun_finishes_exactly_once(tmp_path: Path) -> None:
    src, out = make_inputs(tmp_path / "in", 8), tmp_path / "out"
    cmd = cli(src, out)
    # 1. A worker published a staged video (fresh OUTPUT: nothing was there before).
    kill_when(cmd, lambda: bool(published(out)))
    check_consistent(out)
    # 2. This run committed a shard of its own: the journal lists more shards than at its start.
    before = len(journal_shards(out))
    kill_when(cmd, lambda: len(journal_shards(out)) > before)
    assert Manifest.load(out).totals["videos"] < 8  # killed mid-run, not after
    check_consistent(out)
    # 3. A worker of this run is encoding: a staging folder appears that no earlier run made.
    old = staging_names(out)
    kill_when(cmd, lambda: any(n.endswith(".tmp") for n in staging_names(out) - old))
    check_consistent(out)
    finished = {v for line in (out / ".vidshard" / "journal.jsonl").read_text().splitlines()
                for v in json.loads(line)["videos"]}
    assert 0 < len(finished) < 8
    staged = published(out) - finished
    state = (finished, staged, staging_names(out), sorted(p.name for p in src.rglob("*")))
    result = run(src, out, **KILL_OPTS)
    assert result.resumed == len(staged), (state, result)
    assert result.encoded == 8 - len(finished) - len(staged), (state, result)
    keys = check_consistent(out)
    assert set(keys) == expected_keys(src) and result.total.videos_ok == 8
    assert len(Manifest.load(out).shards) >= 5
    assert not list(out.glob(".*.tmp")) and not (out / ".vidshard" / "staging").exists()


def test_sigkill_between_shard_rename_and_journal(tmp_path: Path) -> None:
    """The narrowest window, hit by a real SIGKILL: the second shard of the run has its final name,
    no journal line lists it yet (the process waits at a pause point only tests enable)."""
    src, out = make_inputs(tmp_path / "in", 6), tmp_path / "out"
    marker = tmp_path / "paused"
    env = {**os.environ, "VIDSHARD_TEST_PAUSE": "after-shard-rename:2",
           "VIDSHARD_TEST_PAUSE_MARKER": str(marker)}
    kill_when(cli(src, out), marker.exists, env=env)
    orphan = marker.read_text()
    assert (out / orphan).is_file() and len(journal_shards(out)) == 1 and orphan not in journal_shards(out)
    assert orphan not in {s.name for s in Manifest.load(out).shards}
    assert list(out.glob(".*.tar.tmp")), "the next shard was open: a real kill leaves it (no cleanup ran)"
    check_consistent(out)
    waiting = published(out)  # among them the videos of the orphan shard
    result = run(src, out, **KILL_OPTS)
    assert set(check_consistent(out)) == expected_keys(src)
    assert result.resumed == len(waiting) > 0 and result.encoded == 6 - len(waiting) - result.skipped
    assert not list(out.glob(".*.tmp")) and not (out / ".vidshard" / "staging").exists()


def test_leftovers_are_cleaned_and_nothing_is_encoded_again(tmp_path: Path) -> None:
    src, out = make_inputs(tmp_path / "in", 3), tmp_path / "out"
    run(src, out)
    shards = Manifest.load(out).shards
    (out / "train-000099.tar").write_bytes(b"partial")  # a shard no journal line lists
    (out / ".train-000100.tar.tmp").write_bytes(b"half written")
    (out / ".vidshard" / "staging" / "abc.123.tmp").mkdir(parents=True)
    with open(out / ".vidshard" / "journal.jsonl", "a") as f:
        f.write('{"shard": {"name": "train-0000')  # a line torn by a kill
    result = run(src, out)
    assert result.encoded == 0 and result.resumed == 0 and result.skipped == 3
    assert Manifest.load(out).shards == shards
    assert not (out / "train-000099.tar").exists() and not (out / ".train-000100.tar.tmp").exists()
    assert (out / ".vidshard" / "journal.jsonl").read_text().endswith("\n")
    assert set(check_consistent(out)) == expected_keys(src)


def test_incremental_run_encodes_only_new_videos(tmp_path: Path) -> None:
    src, out = make_inputs(tmp_path / "in", 3), tmp_path / "out"
    first = run(src, out)
    synth_video(src / "c1" / "new.mkv", Synth(seconds=2.0, codec="vp9", width=160, height=120))
    second = run(src, out)
    assert first.encoded == 3 and second.encoded == 1 and second.skipped == 3
    names = [s.name for s in Manifest.load(out).shards]
    assert names == sorted(names) and len(names) == len(set(names))
    assert set(check_consistent(out)) == expected_keys(src)
    assert Manifest.load(out).totals["videos"] == 4


def test_failures_are_kept_and_retried_only_when_asked(tmp_path: Path) -> None:
    src, out = make_inputs(tmp_path / "in", 1), tmp_path / "out"
    (src / "bad.mp4").write_text("not a video")
    assert run(src, out).total.videos_failed == 1
    again = run(src, out)
    assert again.encoded == 0 and again.run.videos_failed == 0 and again.total.videos_failed == 1
    synth_video(src / "bad.mp4", Synth(seconds=1.0))  # the user fixed the file
    fixed = run(src, out, retry_failed=True)
    assert fixed.encoded == 1 and fixed.total.videos_failed == 0
    assert (out / "failures.jsonl").read_text() == ""


def test_a_folder_of_foreign_shards_is_never_touched(tmp_path: Path) -> None:
    src, out = make_inputs(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"someone else's shard")  # e.g. a merged or copied set
    with pytest.raises(NotOurOutput, match="new OUTPUT"):
        run(src, out)
    assert (out / "train-000000.tar").read_bytes() == b"someone else's shard"


def test_changed_settings_are_refused(tmp_path: Path) -> None:
    src, out = make_inputs(tmp_path / "in", 1), tmp_path / "out"
    run(src, out)
    with pytest.raises(SettingsMismatch, match="short_side 64 -> 96"):
        run(src, out, short_side=96)
    run(src, out, shard_size=1 << 20)  # the shard size may change between runs


def test_part_runs_hold_exactly_the_samples_of_one_run(tmp_path: Path) -> None:
    src = make_inputs(tmp_path / "in", 6, seconds=1.0)
    single = set(listed_keys(run(src, tmp_path / "all", workers=1, labels_from_dirs=True).output))
    union: list[str] = []
    for i in range(1, 4):
        out = tmp_path / f"part{i}"
        run(src, out, part=(i, 3), workers=1, labels_from_dirs=True)
        manifest = Manifest.load(out)
        assert manifest.settings["part"] == f"{i}/3" and manifest.classes == ["c0", "c1"]
        assert all(s.name.startswith(f"train-p{i:02d}of03-") for s in manifest.shards)
        union += listed_keys(out)
    assert sorted(union) == sorted(single) and len(single) == 6


def test_an_encode_stopped_by_a_signal_is_retried_not_failed(tmp_path: Path, monkeypatch) -> None:
    import vidshard.preprocess.encode as encode
    from vidshard.preprocess.ffmpeg import FFmpegError

    src, out = make_inputs(tmp_path / "in", 2), tmp_path / "out"
    real = encode.transcode

    def killed_for_v01(src_path, *a, **k):  # e.g. the out-of-memory killer picked this ffmpeg
        if "v01" in str(src_path):
            raise FFmpegError("ffmpeg exited with code -9", "", -9)
        return real(src_path, *a, **k)

    monkeypatch.setattr(encode, "transcode", killed_for_v01)
    first = run(src, out)
    assert first.stopped == 1 and first.total.videos_ok == 1 and first.total.videos_failed == 0
    assert first.exit_code() == 1  # tells a job script to run again
    monkeypatch.undo()
    second = run(src, out)
    assert second.encoded == 1 and second.exit_code() == 0
    assert set(check_consistent(out)) == expected_keys(src)
