"""``vidshard preprocess --watch`` as a real subprocess: files arriving in every way users make them
arrive, bad ones among them, stopped by SIGTERM (exit 0), killed by SIGKILL and restarted."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.shards.schema import Manifest

from .test_run import read_samples

CLI = [sys.executable, "-m", "vidshard.cli", "preprocess"]
FAST = ["--quiet", "--workers", "1", "--short-side", "64", "--chunk-seconds", "1", "--gop", "5",
        "--flush-seconds", "0.5", "--settle-seconds", "1"]
SPECS = {"a": Synth(seconds=2.0, fps=10, width=96, height=64),
         "b": Synth(seconds=2.0, fps=10, width=96, height=64, pattern="mandelbrot"),
         "c": Synth(seconds=3.0, fps=10, width=96, height=64, pattern="moving"),
         "d": Synth(seconds=1.0, fps=10, width=64, height=96)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {k: synth_video(root / f"{k}.mp4", s) for k, s in SPECS.items()}


def start(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.parent / "watch.log", "ab")  # noqa: SIM115 (closed with the process's life)
    return subprocess.Popen([*CLI, str(src), str(out), "--watch", *FAST, *extra], stdout=log, stderr=log)


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen, what: str, limit: float = 90.0) -> None:
    """Poll ``cond`` until true (bounded); fail with the service's log when it never is."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        assert proc.poll() is None, f"the service exited ({proc.returncode}) while waiting for {what}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"never saw {what}")


def videos_in(out: Path) -> collections.Counter:
    """Samples per source video in the published manifest's shards."""
    try:
        Manifest.load(out)
    except (FileNotFoundError, ValueError):
        return collections.Counter()
    return collections.Counter(s["meta"].video for s in read_samples(out).values())


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_service_takes_files_as_they_arrive(clips: dict[str, Path], tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(clips["a"], src / "a.mp4")  # there before the start
    proc = start(src, out, "--poll", "--poll-seconds", "0.3")
    wait_for(lambda: videos_in(out)["a.mp4"] == 2, proc, "a.mp4 published (a partly filled shard)")
    (src / "bad.mp4").write_bytes(b"not a video" * 100)  # fails; the service goes on
    shutil.copy(clips["b"], tmp_path / "b.part")
    os.rename(tmp_path / "b.part", src / "b.mp4")  # moved in at once
    data = clips["c"].read_bytes()
    with open(src / "c.mp4", "wb") as f:  # copied slowly: pauses shorter than --settle-seconds
        for i in range(0, len(data), len(data) // 5 + 1):
            f.write(data[i:i + len(data) // 5 + 1])
            f.flush()
            time.sleep(0.4)
    (src / "later").mkdir()  # a folder made now and filled afterwards
    time.sleep(0.5)
    shutil.copy(clips["d"], src / "later" / "d.mp4")
    wait_for(lambda: set(videos_in(out)) == {"a.mp4", "b.mp4", "c.mp4", "later/d.mp4"}, proc, "all four")
    wait_for(lambda: (out / "failures.jsonl").is_file() and "bad.mp4" in (out / "failures.jsonl").read_text(),
             proc, "bad.mp4 in failures.jsonl")
    shutil.copy(clips["d"], tmp_path / "fixed.part")
    os.replace(tmp_path / "fixed.part", src / "bad.mp4")  # the failed file changes: tried again
    wait_for(lambda: videos_in(out)["bad.mp4"] == 1, proc, "the changed bad.mp4 published")
    assert stop(proc) == 0
    samples = read_samples(out)
    seconds = collections.defaultdict(float)
    for s in samples.values():
        seconds[s["meta"].video] += s["meta"].end_s - s["meta"].start_s
    assert seconds["c.mp4"] == pytest.approx(3.0, abs=0.15)  # encoded whole, not while still growing
    assert videos_in(out) == {"a.mp4": 2, "b.mp4": 2, "c.mp4": 3, "later/d.mp4": 1, "bad.mp4": 1}  # once
    m = Manifest.load(out)
    assert m.totals["videos"] == 5 and m.totals["failed"] == 0 and m.num_samples == len(samples)
    assert "bad.mp4" not in (out / "failures.jsonl").read_text()  # the record went with the success
    log = (tmp_path / "watch.log").read_text()
    assert "published:" in log and "failed: bad.mp4" in log
    assert re.search(r"hours by source: \. [0-9.]+, later [0-9.]+", log), log  # the balance at the stop


@pytest.mark.slow  # two service starts (about 20 s on a loaded 2-core machine); `make test-all` runs it
def test_change_events_then_sigkill_and_restart(clips: dict[str, Path], tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    proc = start(src, out)  # change events (watchdog); the safety-net listing comes only after 60 s
    wait_for(lambda: (out / "manifest.json").is_file(), proc, "the service up")
    shutil.copy(clips["a"], src / "a.mp4")
    wait_for(lambda: videos_in(out)["a.mp4"] == 2, proc, "a.mp4 published after a change event")
    shutil.copy(clips["b"], src / "b.mp4")
    time.sleep(1.5)
    proc.kill()  # SIGKILL at some point of b's life: waiting, encoding or packing
    proc.wait(timeout=30)
    proc = start(src, out, "--poll", "--poll-seconds", "0.3")
    wait_for(lambda: videos_in(out)["b.mp4"] == 2, proc, "b.mp4 after the restart")
    assert stop(proc, signal.SIGINT) == 0
    assert videos_in(out) == {"a.mp4": 2, "b.mp4": 2}  # nothing lost, nothing twice
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_done_marker_counts_at_once(clips: dict[str, Path], tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(clips["a"], src / "a.mp4")
    shutil.copy(clips["b"], src / "b.mp4")
    (src / "a.mp4.done").touch()
    proc = start(src, out, "--poll", "--poll-seconds", "0.3", "--settle-seconds", "600")
    wait_for(lambda: videos_in(out)["a.mp4"] == 2, proc, "a.mp4 (marked done)")
    assert stop(proc) == 0
    assert set(videos_in(out)) == {"a.mp4"}  # b.mp4 has not settled for 600 s and has no marker
    assert json.loads((out / "manifest.json").read_text())["totals"]["failed"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_a_failure_and_the_service_goes_on(clips: dict[str, Path], tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(clips["a"], src / "secret.mp4")
    (src / "secret.mp4").chmod(0)
    shutil.copy(clips["b"], src / "b.mp4")
    proc = start(src, out, "--poll", "--poll-seconds", "0.3")
    wait_for(lambda: videos_in(out)["b.mp4"] == 2, proc, "b.mp4")
    wait_for(lambda: "secret.mp4" in (out / "failures.jsonl").read_text(), proc, "secret.mp4 failed")
    assert stop(proc) == 0
