"""A folder with the variety of real inputs: codecs, containers, rates, sizes, pixel shapes,
rotation, VFR, audio, odd names, and broken files. All tiny and made with ffmpeg."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from vidshard.preprocess.ffmpeg import Synth, ffmpeg_exe, remux, run, synth_video

# name -> Synth; every one is a playable video.
PLAYABLE: dict[str, Synth] = {
    "h264.mp4": Synth(seconds=2.0, fps=25),
    "h264 high444.mkv": Synth(seconds=1.5, codec="h264_444", width=301, height=199),
    "mpeg4 pal.avi": Synth(seconds=2.0, codec="mpeg4", width=240, height=192, sar="16/15"),
    "msmpeg4.avi": Synth(seconds=1.2, codec="msmpeg4", width=176, height=144),
    "mjpeg 8fps.mov": Synth(seconds=2.0, fps=8, codec="mjpeg"),
    "vp8.webm": Synth(seconds=1.5, codec="vp8", width=240, height=136),
    "vp9 anamorphic.webm": Synth(seconds=1.5, codec="vp9", sar="4/3"),
    "theora.ogv": Synth(seconds=1.5, codec="theora", fps=15),
    "cinepak.avi": Synth(seconds=1.0, codec="cinepak", width=176, height=144),
    "fast 190fps.mp4": Synth(seconds=1.0, fps=190, width=160, height=120),
    "hd 1080p.mp4": Synth(seconds=0.6, width=1920, height=1080),
    "with audio.mp4": Synth(seconds=1.5, audio=True),
    "-leading dash.mp4": Synth(seconds=1.0),
    "concat:x.mp4": Synth(seconds=1.0),
    "http:y.mp4": Synth(seconds=1.0),
    "видео 東京.mp4": Synth(seconds=1.0),
    "sub dir/deeper/no_extension": Synth(seconds=1.0, codec="mpeg4"),
}
# Extra playable files made by remuxing or raw ffmpeg commands.
ROTATED, VFR = "phone rotated.mp4", "phone vfr.mp4"
# name -> expected words in the failure reason.
BROKEN = {
    "zero.mp4": "empty",
    "text.mp4": "not a video",
    "noise.avi": "not a video",
    "audio only.m4a": "audio-only",
    "truncated.mp4": "truncated",
    "still.jpg": "still image",
}


def _raw(*args: str) -> None:
    run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], timeout=120)


def make_variety(root: Path) -> Path:
    """Write the variety folder to ``root`` and return it."""
    for name, spec in PLAYABLE.items():
        out = root / name
        synth_video(out.with_suffix(".mp4") if not out.suffix else out, spec)
        if not out.suffix:
            out.with_suffix(".mp4").rename(out)  # no extension: found by probing alone
    remux(root / "h264.mp4", root / ROTATED, rotation=90)
    _raw("-f", "lavfi", "-i", "testsrc2=size=240x160:rate=30", "-t", "3", "-vf",
         r"select=not(mod(n\,3))+lt(n\,30)", "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast",
         str(root / VFR))
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 50)
    # seeded: some random bytes probe as a container with no video stream, which is another reason
    (root / "noise.avi").write_bytes(random.Random(0).randbytes(40_000))
    _raw("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(root / "audio only.m4a"))
    _raw("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "4", "-c:v", "libx264",
         "-movflags", "+faststart", str(root / "whole.tmp.mp4"))
    data = (root / "whole.tmp.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index intact, data cut: fails half-way
    (root / "whole.tmp.mp4").unlink()
    _raw("-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", str(root / "still.jpg"))
    return root


@pytest.fixture(scope="module")
def variety(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The variety folder (module-scoped; do not modify)."""
    return make_variety(tmp_path_factory.mktemp("variety"))


def expected_names() -> tuple[set[str], set[str]]:
    """(playable relative paths, broken relative paths) of :func:`make_variety`."""
    return set(PLAYABLE) | {ROTATED, VFR}, set(BROKEN)
