"""A full or failing OUTPUT disk is not the inputs' fault: the run stops cleanly, records nothing
against any video, exits non-zero, and the next run (after space was freed) encodes them.

The main test runs the real CLI on a real, small filesystem: a tmpfs mounted in a private mount
namespace (``unshare -m`` as root, ``unshare -rm`` otherwise), filled with a filler file so only a
little space is left at several levels (so the disk fills during ffmpeg's writing, its trailer,
``meta.json`` or a shard), then the filler is deleted and the same command runs again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import Synth, synth_video
from vidshard.preprocess.run import preprocess
from vidshard.preprocess.space import OutputFailure, output_trouble

ARGS = ["--quiet", "--workers", "1", "--chunk-seconds", "1", "--short-side", "240", "--crf", "10",
        "--shard-size", "64KiB"]
# Bytes left free on the small filesystem: the disk fills in a worker (ffmpeg), then in the parent (a shard).
FREE_LEVELS = (150_000, 900_000)

SCRIPT = r"""
set -u
mount -t tmpfs -o size=4m tmpfs "$MNT" || exit 97
for free in $LEVELS; do
  res="$RES/$free"; mkdir -p "$res"; out="$MNT/out-$free"
  avail=$(( $(stat -f -c '%a * %S' "$MNT") ))
  head -c $(( avail - free )) /dev/zero > "$MNT/filler"
  "$PY" -m vidshard.cli preprocess "$IN" "$out" $ARGS > "$res/out1" 2>&1; echo $? > "$res/rc1"
  cp "$out/failures.jsonl" "$res/failures1" 2>/dev/null
  rm -f "$MNT/filler"
  "$PY" -m vidshard.cli preprocess "$IN" "$out" $ARGS > "$res/out2" 2>&1; echo $? > "$res/rc2"
  cp "$out/failures.jsonl" "$res/failures2" 2>/dev/null
  cp "$out/manifest.json" "$res/manifest2" 2>/dev/null
  rm -rf "$out"
done
"""


def _unshare() -> list[str] | None:
    """The command that gives a private mount namespace here, or None (no right to mount)."""
    if not shutil.which("unshare"):
        return None
    cmd = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    try:
        ok = subprocess.run([*cmd, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                             "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cmd if ok.returncode == 0 else None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full_disk_in")
    for i in range(3):
        synth_video(root / f"v{i}.mp4", Synth(seconds=3.0, width=320, height=240, pattern="mandelbrot"))
    return root


def test_a_full_disk_stops_cleanly_and_the_next_run_encodes_everything(tmp_path: Path, inputs: Path) -> None:
    unshare = _unshare()
    if unshare is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or user namespaces); "
                    "test_the_margin_* and test_output_trouble_* cover the logic without it")
    mnt, res = tmp_path / "small", tmp_path / "res"
    mnt.mkdir()
    env = {**os.environ, "MNT": str(mnt), "RES": str(res), "IN": str(inputs), "PY": sys.executable,
           "ARGS": " ".join(ARGS + ["--min-free-space", "0"]), "LEVELS": " ".join(map(str, FREE_LEVELS))}
    done = subprocess.run([*unshare, "sh", "-c", SCRIPT], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    stopped = 0
    for free in FREE_LEVELS:
        r = res / str(free)
        out1, rc1 = (r / "out1").read_text(), int((r / "rc1").read_text())
        failures1 = (r / "failures1").read_text() if (r / "failures1").exists() else ""
        assert failures1 == "", f"free={free}: a good video was recorded as failed:\n{failures1}\n{out1}"
        if rc1 != 0:  # the disk filled up: a clean stop that names the folder and its free space
            stopped += 1
            assert rc1 == 3, out1
            assert "error:" in out1 and str(mnt / f"out-{free}") in out1 and "free" in out1, out1
            assert "Traceback" not in out1 and "run the same command again" in out1, out1
        out2, rc2 = (r / "out2").read_text(), int((r / "rc2").read_text())
        assert rc2 == 0, f"free={free}: the run after freeing space failed:\n{out2}"
        assert (r / "failures2").read_text() == ""
        assert json.loads((r / "manifest2").read_text())["totals"]["videos"] == 3
    assert stopped >= 2, "the small filesystem never filled up: the test did not test anything"


def test_the_margin_stops_the_run_before_encoding(tmp_path: Path, inputs: Path) -> None:
    cfg = PreprocessConfig(input=inputs, output=tmp_path / "out", quiet=True, workers=1, short_side=64,
                           chunk_seconds=1.0, min_free_space=1 << 60)
    with pytest.raises(OutputFailure, match=r"free .*--min-free-space") as e:
        preprocess(cfg, console=Console(quiet=True))
    assert str(tmp_path / "out") in str(e.value)
    assert (tmp_path / "out" / "failures.jsonl").read_text() == ""
    again = preprocess(PreprocessConfig(input=inputs, output=tmp_path / "out", quiet=True, workers=1,
                                        short_side=64, chunk_seconds=1.0), console=Console(quiet=True))
    assert again.encoded == 3 and again.total.videos_failed == 0


def test_the_cli_exits_3_on_output_trouble(tmp_path: Path, inputs: Path) -> None:
    from typer.testing import CliRunner
    from vidshard.cli import app

    res = CliRunner().invoke(app, ["preprocess", str(inputs), str(tmp_path / "out"), "--quiet",
                                   "--min-free-space", "100000TiB"])
    assert res.exit_code == 3 and "--min-free-space" in res.output and "Traceback" not in res.output
    assert "run the same command again" in res.output


def test_output_trouble_names_a_folder_that_cannot_be_written(tmp_path: Path) -> None:
    assert output_trouble(tmp_path, need=1 << 20) is None
    assert "free" in output_trouble(tmp_path, need=1 << 60)
    gone = tmp_path / "removed"  # e.g. the staging folder vanished or its disk was unmounted
    assert str(gone) in output_trouble(gone, need=0)
    assert "No space left" in output_trouble(tmp_path, need=0, hint="[out#0] Error writing: No space left "
                                             "on device")
    assert output_trouble(tmp_path, need=0, hint="moov atom not found") is None


def test_a_failed_encode_is_blamed_on_the_disk_only_when_the_disk_is_in_trouble(tmp_path: Path) -> None:
    """Not only ffmpeg's words: the staging folder's free space and writability decide."""
    from vidshard.preprocess.encode import EncodeJob, encode_video
    from vidshard.preprocess.inputs import InputItem

    (tmp_path / "bad.mp4").write_bytes(b"\0" * 5000)
    staging = tmp_path / "staging"
    staging.mkdir()
    job = EncodeJob(item=InputItem(path=tmp_path / "bad.mp4", rel="bad.mp4"), label=None, staging=staging)
    healthy = encode_video(job, PreprocessConfig(input=tmp_path, output=tmp_path / "o", min_free_space=0))
    assert healthy.output_trouble is None and healthy.reason  # the input's fault
    full = encode_video(job, PreprocessConfig(input=tmp_path, output=tmp_path / "o", min_free_space=1 << 60))
    assert full.staged is None and str(staging) in full.output_trouble and "free" in full.output_trouble
    gone = EncodeJob(item=job.item, label=None, staging=tmp_path / "unmounted")
    lost = encode_video(gone, PreprocessConfig(input=tmp_path, output=tmp_path / "o", min_free_space=0))
    assert str(tmp_path / "unmounted") in lost.output_trouble
