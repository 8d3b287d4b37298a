"""``--split-at-scenes`` in one decode pass (``onepass.py``): the online chunker against the batch
plan, the output size against the decoder, one video decoder per input, audio, and every error
path ending every ffmpeg it started."""

from __future__ import annotations

import bisect
import io
import os
import random
import stat
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from rich.console import Console
from vidshard.preprocess import ffmpeg
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import (
    FFmpegError,
    Synth,
    TranscodeSpec,
    decode_args,
    local_url,
    remux,
    run,
    synth_video,
)
from vidshard.preprocess.onepass import transcode_at_scenes
from vidshard.preprocess.plan import output_size, scene_bounds
from vidshard.preprocess.probe import probe
from vidshard.preprocess.run import preprocess
from vidshard.preprocess.scenes import SceneChunker, SceneRule
from vidshard.preprocess.space import output_trouble

from .test_run import read_samples

# --- The online chunker is the batch plan -----------------------------------------------------


def _online(flags: list[bool], fps: float, rule: SceneRule) -> tuple[list[tuple[int, bool]], int]:
    """Chunk starts ``(first frame, starts at a cut)`` and the most frames ever held back."""
    ch, given, held = SceneChunker(rule, fps), [], 0
    for f in flags:
        given += ch.push(f)
        held = max(held, ch.frames - len(given))
    given += ch.end()
    assert given == sorted(given) and len(given) == len(flags)  # every frame once, in order
    return [(given.index(k), at) for k, (_, at) in enumerate(ch.starts)], held


@pytest.mark.parametrize("seed", range(3))
def test_online_chunker_equals_the_batch_plan(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        fps = rng.choice([25.0, 30000 / 1001, 8.0, 60.0, 12.5])
        n = rng.randrange(1, 300)
        chunk = rng.choice([0.5, 1.0, 1 / 3, 2.5, 4.0])
        min_chunk = rng.choice([0.0, chunk / 5, rng.uniform(0, chunk), chunk])
        rule = SceneRule(chunk_s=chunk, min_chunk_s=min_chunk, min_shot_s=rng.choice([0.0, 0.4, 3.0]))
        cut_frames = set(rng.sample(range(n), rng.randrange(min(n, 8))))
        online, held = _online([i in cut_frames for i in range(n)], fps, rule)
        times = [round(i / fps, 6) for i in range(n)]
        plan = scene_bounds(round(n / fps, 6), [times[i] for i in cut_frames], chunk, min_chunk,
                            rule.min_shot_s)
        ends = [bisect.bisect_left(times, b - 5e-7) for _, b, _ in plan]  # first frame at/after each end
        starts = [0, *ends[:-1]]
        # A planned chunk shorter than a frame may hold none: only chunks with frames are encoded.
        expected = [(s, at) for s, e, (_, _, at) in zip(starts, ends, plan, strict=True) if s < e]
        assert online == expected, (fps, n, rule)
        assert held <= min_chunk * fps + 2  # the buffer: at most --min-chunk-seconds of frames


# --- The output size rule is what the decoder makes -----------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("shapes")
    made = [synth_video(root / "odd444.mkv", Synth(seconds=0.2, codec="h264_444", width=301, height=199)),
            synth_video(root / "sar43.mp4", Synth(seconds=0.2, width=120, height=96, sar="4/3")),
            synth_video(root / "pal.mp4", Synth(seconds=0.2, width=126, height=90, sar="16/15")),
            synth_video(root / "flat.mp4", Synth(seconds=0.2, width=160, height=96))]
    made += [remux(made[2], root / "pal_rot90.mp4", rotation=90),
             remux(made[3], root / "rot270.mp4", rotation=-90)]
    return made


@pytest.mark.parametrize("short", [64, 50])
def test_output_size_is_what_the_decoder_makes(shapes: list[Path], short: int) -> None:
    for src in shapes:
        info = probe(src)
        w, h = output_size(info.width, info.height, info.sar, info.rotation, short)
        args = decode_args(src, TranscodeSpec(short_side=short, crf=23, gop=8, threads=1), Fraction(25))
        one = run([*args[:-1], "-frames:v", "1", args[-1]], timeout=60).stdout  # exactly one raw frame
        assert len(one) == w * h * 3 // 2 and min(w, h) == short, (src.name, w, h, len(one))
        assert info.rotation in (0, 90, 270) and ((w < h) == (info.rotation != 0)), src.name


# --- Processes: one decoder per input, none left behind -------------------------------------


@pytest.fixture
def logged_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every ffmpeg started (here or in a forked worker) writes its argv to ``LOG/<pid>``, then runs.
    With ``$STOP_DECODER`` set, the raw-frame decoder is stopped by SIGTERM as it starts."""
    real, log = ffmpeg.ffmpeg_exe(), tmp_path / "ffmpeg-log"
    log.mkdir()
    wrapper = tmp_path / "ffmpeg-wrapper.sh"
    wrapper.write_text(f"""#!/bin/sh
printf '%s\\0' "$@" > '{log}/'$$
case "$*" in *"-f rawvideo -pix_fmt yuv420p pipe:1"*) [ -n "$STOP_DECODER" ] && kill -TERM $$;; esac
exec '{real}' "$@"
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VIDSHARD_FFMPEG", str(wrapper))
    ffmpeg.ffmpeg_exe.cache_clear()
    yield log
    monkeypatch.delenv("VIDSHARD_FFMPEG")
    ffmpeg.ffmpeg_exe.cache_clear()


def _runs(log: Path) -> dict[int, list[str]]:
    return {int(p.name): p.read_bytes().split(b"\0")[:-1] for p in log.iterdir()}


def _video_decoders(log: Path, src: Path) -> int:
    """ffmpeg runs that read ``src`` without ``-vn`` among that input's options (a video decode)."""
    n = 0
    for argv in _runs(log).values():
        args = [a.decode() for a in argv]
        for i, a in enumerate(args):
            if a == "-i" and args[i + 1] == local_url(src):
                opts = args[max([j for j in range(i) if args[j] == "-i"], default=-1) + 1:i]
                n += "-vn" not in opts
    return n


def _all_ended(log: Path) -> bool:
    """Every logged ffmpeg has ended and been reaped (a zombie still has its pid)."""
    for pid in _runs(log):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


def test_one_video_decode_per_input_and_audio_kept(tmp_path: Path, logged_ffmpeg: Path) -> None:
    src = synth_video(tmp_path / "in" / "talk.mp4", Synth(seconds=3.0, width=128, height=96, audio=True))
    (tmp_path / "list.jsonl").write_text('{"path": "in/talk.mp4"}\n'
                                         '{"path": "in/talk.mp4", "start": 0.5, "end": 2.9}\n')
    cfg = PreprocessConfig(input=tmp_path / "list.jsonl", output=tmp_path / "out", chunk_seconds=1.0,
                           min_chunk_seconds=0.5, short_side=64, gop=8, workers=1, quiet=True,
                           split_at_scenes=True, keep_audio=True)
    assert preprocess(cfg, console=Console(quiet=True)).total.videos_ok == 2
    assert _video_decoders(logged_ffmpeg, src) == 2  # once per input (the file; a segment), cuts and all
    assert _all_ended(logged_ffmpeg)
    metas = []
    for s in read_samples(cfg.output).values():
        with av.open(io.BytesIO(s["mp4"])) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert a.codec_context.name == "aac"
            audio_s = float(a.duration * a.time_base)
            assert audio_s == pytest.approx(float(v.duration * v.time_base), abs=0.05), s["meta"]
        metas.append(s["meta"])
    # 3 s: three chunks; the 2.4 s segment from 0.5 s: 1 s, then 1.4 s (the 0.4 s tail joins)
    assert sorted(m.start_s for m in metas) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def _spec(**kw: object) -> TranscodeSpec:
    return TranscodeSpec(**{"short_side": 64, "crf": 23, "gop": 8, "threads": 1, **kw})


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_video(tmp_path_factory.mktemp("clip") / "clip.mp4", Synth(seconds=2.0, width=128, height=96))


RULE = SceneRule(chunk_s=0.5, min_chunk_s=0.2)


def test_every_error_path_ends_every_ffmpeg(clip: Path, tmp_path: Path, logged_ffmpeg: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    size, rate = (86, 64), Fraction(25)
    files, errors, cuts = transcode_at_scenes(clip, tmp_path / "ok", _spec(), size=size, rate=rate, rule=RULE)
    assert len(files) == 4 and errors == "" and cuts == [] and _all_ended(logged_ffmpeg)
    with pytest.raises(FFmpegError) as bad:  # an encoder fails at its start
        transcode_at_scenes(clip, tmp_path / "a", _spec(preset="nosuch"), size=size, rate=rate, rule=RULE)
    assert not bad.value.stopped and bad.value.returncode and _all_ended(logged_ffmpeg)
    with pytest.raises(FFmpegError, match="longer than"):
        transcode_at_scenes(clip, tmp_path / "b", _spec(), size=size, rate=rate, rule=RULE, timeout=1e-3)
    assert _all_ended(logged_ffmpeg)
    with pytest.raises(FFmpegError, match="not 88x64"):  # a size rule that disagrees with ffmpeg
        transcode_at_scenes(clip, tmp_path / "c", _spec(), size=(88, 64), rate=rate, rule=RULE)
    assert _all_ended(logged_ffmpeg)
    full = tmp_path / "d"  # the first chunk's file is the full device: the encoder's disk fills
    full.mkdir()
    (full / "00000.mp4").symlink_to("/dev/full")
    with pytest.raises(FFmpegError) as disk:
        transcode_at_scenes(clip, full, _spec(), size=size, rate=rate, rule=RULE)
    assert "No space left on device" in disk.value.stderr_tail and _all_ended(logged_ffmpeg)
    assert output_trouble(tmp_path, 0, hint=disk.value.stderr_tail) is not None  # not the video's fault
    monkeypatch.setenv("STOP_DECODER", "1")
    with pytest.raises(FFmpegError) as stopped:  # a signal: not a failure of the input
        transcode_at_scenes(clip, tmp_path / "e", _spec(), size=size, rate=rate, rule=RULE)
    assert stopped.value.stopped and _all_ended(logged_ffmpeg)
