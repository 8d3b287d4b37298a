"""Decoding clips from bytes: the right frames in time order, crops and flips applied, bad bytes rejected."""

from __future__ import annotations

import io
import random

import av
import numpy as np
import pytest
from av.video.frame import VideoFrame
from vidshard.preprocess.ffmpeg import Synth, read_counter, remux, synth_video
from vidshard.shards.decode import CorruptSample, _droppable, _h264_length_size, crop_resize, decode_sample
from vidshard.shards.sampling import Box, ClipPlan, ClipSpec, plan_sample

SIDE = 80


@pytest.fixture(scope="module")
def counter_mp4(tmp_path_factory) -> bytes:
    """120 frames, keyframe every 12, x264 defaults otherwise (B-frames, so some are non-reference)."""
    path = tmp_path_factory.mktemp("dec") / "counter.mp4"
    return synth_video(path, Synth(seconds=4.8, fps=25, width=SIDE, height=SIDE, pattern="counter",
                                   gop=12)).read_bytes()


def _numbers(clip: np.ndarray) -> list[int]:
    """Frame numbers shown in a (C, T, H, W) clip of the counter pattern."""
    return [read_counter(clip[0, t, clip.shape[2] // 2], clip.shape[3]) for t in range(clip.shape[1])]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("start,stride", [(0, 1), (5, 4), (30, 13), (3, 40), (100, 2)])
def test_decoded_frames_are_the_planned_ones_in_order(counter_mp4: bytes, start: int, stride: int,
                                                      threads: int) -> None:
    idx = tuple(min(119, start + i * stride) for i in range(6))
    plan = [[ClipPlan(idx, Box(0, 0, SIDE, SIDE), False)]]
    (clip,) = decode_sample(counter_mp4, lambda n, w, h: plan, SIDE, threads)
    assert clip.shape == (1, 3, 6, SIDE, SIDE) and clip.dtype == np.uint8
    assert _numbers(clip[0]) == list(idx)


def test_several_clips_share_one_decode(counter_mp4: bytes) -> None:
    spec = ClipSpec(frames=8, stride=3, train=False, temporal_views=3)
    (views,) = decode_sample(counter_mp4, lambda n, w, h: plan_sample(n, w, h, spec, random.Random(0)), 40)
    assert views.shape == (3, 3, 8, 40, 40)
    starts = [_numbers(v)[0] for v in views]
    assert starts == sorted(starts) and starts[0] == 0 and starts[-1] == 120 - 22
    assert all(np.diff(_numbers(v)).tolist() == [3] * 7 for v in views)


def test_flip_mirrors_the_picture(counter_mp4: bytes) -> None:
    idx = (17,)
    box = Box(0, 0, SIDE, SIDE)
    (a,) = decode_sample(counter_mp4, lambda n, w, h: [[ClipPlan(idx, box, False)]], SIDE)
    (b,) = decode_sample(counter_mp4, lambda n, w, h: [[ClipPlan(idx, box, True)]], SIDE)
    assert np.abs(a[0].astype(int) - b[0][..., ::-1].astype(int)).mean() < 2


def test_crop_takes_only_the_box_region() -> None:
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[:60, :80] = (250, 20, 20)  # red top-left quadrant
    rgb[60:, 80:] = (20, 20, 250)  # blue bottom-right
    frame = VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    out = crop_resize([frame], Box(0, 0, 80, 60), 32)  # (C, T, H, W)
    assert out.shape == (3, 1, 32, 32)
    assert out[0, 0, 4:-4, 4:-4].min() > 200 and out[2, 0, 4:-4, 4:-4].max() < 60
    out = crop_resize([frame], Box(80, 60, 80, 60), 48)
    assert out[2, 0, 4:-4, 4:-4].min() > 200 and out[0, 0, 4:-4, 4:-4].max() < 60


def test_non_reference_frames_are_recognised(counter_mp4: bytes) -> None:
    with av.open(io.BytesIO(counter_mp4)) as c:
        s = c.streams.video[0]
        size = _h264_length_size(s)
        flags = [_droppable(bytes(p), size) for p in c.demux(s) if p.size]
    assert size == 4 and any(flags) and not all(flags)


def test_short_sample_repeats_last_frame(tmp_path) -> None:
    data = synth_video(tmp_path / "short.mp4", Synth(seconds=0.4, fps=25, width=SIDE, height=SIDE,
                                                     pattern="counter")).read_bytes()
    spec = ClipSpec(frames=6, stride=4, train=False)
    (clip,) = decode_sample(data, lambda n, w, h: plan_sample(n, w, h, spec, random.Random(0)), SIDE)
    assert _numbers(clip[0]) == [0, 4, 8, 9, 9, 9]


@pytest.mark.parametrize("data", [b"", b"\x00" * 1000, b"not a video at all" * 50])
def test_garbage_bytes_raise_corrupt_sample(data: bytes) -> None:
    with pytest.raises(CorruptSample):
        decode_sample(data, lambda n, w, h: [], 32)


def test_truncated_mp4_raises_a_decode_error_never_another_crash(counter_mp4: bytes) -> None:
    """An mp4 with its index up front (+faststart) cut short: the index promises frames whose
    bytes are gone, so decoding fails with an error the loader counts (not an IndexError etc.)."""
    spec = ClipSpec(frames=4, stride=2)
    for cut in (200, len(counter_mp4) // 2):
        with pytest.raises((CorruptSample, av.FFmpegError)):
            decode_sample(counter_mp4[:cut], lambda n, w, h: plan_sample(n, w, h, spec, random.Random(0)), 32)


def test_a_stream_cut_in_half_decodes_the_frames_before_the_cut(counter_mp4: bytes, tmp_path) -> None:
    """The same video in Matroska (no up-front index: packets are found by reading on) cut in half:
    the frames before the cut decode and are the planned ones; nothing after the cut is invented."""
    (tmp_path / "c.mp4").write_bytes(counter_mp4)
    data = remux(tmp_path / "c.mp4", tmp_path / "c.mkv").read_bytes()
    seen = []

    def plan(n: int, w: int, h: int) -> list[list[ClipPlan]]:
        seen.append(n)
        return [[ClipPlan(tuple(range(0, n, 5)) + (n - 1,), Box(0, 0, SIDE, SIDE), False)]]

    (clip,) = decode_sample(data[: len(data) // 2], plan, SIDE)
    (n,) = seen
    assert 30 <= n <= 90, f"{n} of 120 frames: the cut did not land half-way"
    idx = list(range(0, n, 5)) + [n - 1]
    assert clip.shape == (1, 3, len(idx), SIDE, SIDE)
    numbers = _numbers(clip[0])
    # Whole keyframe intervals (12 frames) before the cut are intact: exactly the planned frames.
    whole = [i for i in idx if i < n - 12]
    assert numbers[: len(whole)] == whole
    # Near the cut a B-frame may be missing, so position i can show a later frame, never an earlier one.
    assert numbers == sorted(set(numbers)) and all(i <= k < 120 for i, k in zip(idx, numbers, strict=True))


def test_uniform_clip_spreads_over_the_sample_in_order(counter_mp4: bytes) -> None:
    spec = ClipSpec(frames=8, sampling="uniform", train=False)
    (clip,) = decode_sample(counter_mp4, lambda n, w, h: plan_sample(n, w, h, spec, random.Random(0)), SIDE)
    assert _numbers(clip[0]) == [int(15 * (i + 0.5)) for i in range(8)]  # 120 frames, 8 segments of 15


def _one_view_graph(frames: list[VideoFrame], box: Box, size: int, flip: bool) -> np.ndarray:
    """The reference: a graph built for this view alone, its box fixed at construction."""
    g = av.filter.Graph()
    f = frames[0]
    chain = [g.add_buffer(width=f.width, height=f.height, format=f.format.name, time_base=f.time_base or 1),
             g.add("crop", f"{box.w}:{box.h}:{box.x}:{box.y}:exact=1"),
             g.add("scale", f"{size}:{size}:flags=bilinear"),
             g.add("format", "yuv420p|yuv444p"), g.add("scale", "flags=bilinear"), g.add("format", "gbrp"),
             *([g.add("hflip")] if flip else []), g.add("buffersink")]
    for a, b in zip(chain, chain[1:], strict=False):
        a.link_to(b)
    g.configure()
    out = np.empty((3, len(frames), size, size), np.uint8)
    for t, frame in enumerate(frames):
        g.push(frame)
        for c, plane in zip((1, 2, 0), g.pull().planes, strict=True):
            out[c, t] = np.frombuffer(plane, np.uint8).reshape(size, plane.line_size)[:, :size]
    return out


def test_a_reused_graph_gives_what_a_graph_built_for_the_view_gives(counter_mp4: bytes) -> None:
    """crop_resize keeps one filter graph per source geometry and moves its crop box by a command: every
    box, flip and size in any order must come out exactly as from a graph built for that view alone."""
    from vidshard.shards import decode

    rng = np.random.default_rng(0)
    gray = VideoFrame.from_ndarray(rng.integers(0, 255, (60 * 3 // 2, 100), np.uint8), format="yuv420p")
    with av.open(io.BytesIO(counter_mp4)) as c:
        frames = [f for _, f in zip(range(4), c.decode(video=0), strict=False)]
    views = [(frames, Box(0, 0, SIDE, SIDE), 32, False), (frames, Box(10, 20, 41, 33), 32, False),
             ([gray], Box(3, 5, 90, 50), 32, False), (frames, Box(40, 2, 40, 70), 48, True),
             (frames, Box(10, 20, 41, 33), 32, True), (frames, Box(0, 0, 17, 15), 32, False)]
    decode._CHAINS.clear()
    for fr, box, size, flip in views * 2:
        assert np.array_equal(crop_resize(fr, box, size, flip), _one_view_graph(fr, box, size, flip)), box
    assert len(decode._CHAINS) == 4  # one per (geometry, size, flip): 4 of the 6 views' keys differ
