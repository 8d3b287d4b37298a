"""Pure planning, checked by invariants: chunk coverage, output sizes, the part split, classes, argv."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import pytest
from vidshard.preprocess.config import PreprocessConfig, parse_size
from vidshard.preprocess.ffmpeg import TranscodeSpec, transcode_args
from vidshard.preprocess.plan import (
    chunk_bounds,
    class_list,
    output_size,
    parse_part,
    part_of,
    part_prefix,
    split_points,
)
from vidshard.shards.schema import shard_name, video_id


@pytest.mark.parametrize("seed", range(5))
def test_chunks_cover_the_source_back_to_back(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        duration = rng.uniform(0.01, 100)
        chunk = rng.choice([1.0, 2.5, 10.0, 15.0])
        min_chunk = rng.uniform(0, chunk)
        bounds = chunk_bounds(duration, chunk, min_chunk)
        assert bounds[0][0] == 0 and bounds[-1][1] == pytest.approx(duration, abs=1e-6)
        for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False):
            assert end == start  # no gap, no overlap
        assert all(b > a for a, b in bounds)
        assert all(b - a == pytest.approx(chunk, abs=1e-6) for a, b in bounds[:-1])
        last = bounds[-1][1] - bounds[-1][0]
        if len(bounds) > 1:
            assert min_chunk - 1e-6 <= last < chunk + min_chunk  # short tail merged, long tail kept
        assert chunk_bounds(duration, chunk, min_chunk) == bounds  # same input, same plan


def test_chunk_tail_rules() -> None:
    assert chunk_bounds(25.0, 10.0, 2.0) == [(0, 10), (10, 20), (20, 25)]  # 5 s tail kept
    assert chunk_bounds(21.0, 10.0, 2.0) == [(0, 10), (10, 21)]  # 1 s tail joins the chunk before
    assert chunk_bounds(1.0, 10.0, 2.0) == [(0, 1)]  # a short video is still one sample
    assert chunk_bounds(30.0, 10.0, 2.0) == [(0, 10), (10, 20), (20, 30)]
    assert chunk_bounds(0.0, 10.0, 2.0) == []
    assert split_points([(0, 10), (10, 20), (20, 25)]) == (10, 20)
    overrun = split_points([(0, 10), (10, 21)], overrun_s=10.0)  # a header may understate the length
    assert overrun[:3] == (10, 31, 41) and len(overrun) == 11


@pytest.mark.parametrize("w,h,sar,rot,expect", [
    (1920, 1080, 1, 0, (512, 288)),
    (1080, 1920, 1, 0, (288, 512)),
    (1920, 1080, 1, 90, (288, 512)),  # phone video stored landscape, shown portrait
    (720, 576, Fraction(16, 15), 0, (384, 288)),  # PAL 4:3 with non-square pixels
    (720, 480, Fraction(32, 27), 0, (512, 288)),  # NTSC 16:9 anamorphic
    (176, 144, 1, 0, (352, 288)),  # small sources are scaled up to the short side
    (301, 199, 1, 270, (288, 436)),
])
def test_output_size(w: int, h: int, sar: Fraction, rot: int, expect: tuple[int, int]) -> None:
    assert output_size(w, h, sar, rot, 288) == expect


def test_output_size_invariants() -> None:
    rng = random.Random(0)
    for _ in range(500):
        w, h = rng.randint(16, 4000), rng.randint(16, 4000)
        sar = Fraction(rng.randint(1, 40), rng.randint(1, 40))
        s = rng.choice([64, 128, 288, 320])
        ow, oh = output_size(w, h, sar, rng.choice([0, 90, 180, 270]), s)
        assert min(ow, oh) == s and ow % 2 == 0 and oh % 2 == 0


def test_part_split_is_disjoint_covering_and_stable() -> None:
    vids = [video_id(f"class{i % 7}/video {i}.mp4") for i in range(1000)]
    for n in (1, 2, 4, 7):
        parts = [[v for v in vids if part_of(v, n) == i] for i in range(1, n + 1)]
        assert sorted(sum(parts, [])) == sorted(vids)  # every input in exactly one part
        assert all(len(p) > 0.6 * len(vids) / n for p in parts)  # roughly balanced
    # The part of an input is a function of its id alone, fixed for good: pinned, so a changed or
    # salted hash (or a split that depends on the other inputs) fails here.
    assert [part_of(v, 4) for v in vids[:12]] == [1, 3, 4, 2, 4, 2, 3, 2, 2, 3, 3, 4]
    assert [part_of(v, 3) for v in vids[:12]] == [3, 2, 2, 3, 3, 2, 2, 2, 2, 1, 1, 2]
    assert (part_of("0000000000000000", 4), part_of("0000000000000007", 4), part_of("ffffffffffffffff", 4)) \
        == (1, 4, 4)


def test_video_ids_are_pinned() -> None:
    """The same path (and segment) gives the same id on every machine, run and Python process:
    resuming, --part and merging rely on it, so the values are fixed literals, not recomputed."""
    assert video_id("class0/video 0.mp4") == "c759e24f9914a948"
    assert video_id("a/b.mp4") == "26c7cf8b95275288"
    assert video_id("a/b.mp4", 1.5, 4.0) == "7d50ed14db736468"  # a segment has its own id
    assert video_id("видео 東京.mp4") == "5e2b2ca126bde3b0"


def test_parse_part_and_prefix() -> None:
    assert parse_part("2/4") == (2, 4) and parse_part(" 1 / 1 ") == (1, 1)
    for bad in ("0/4", "5/4", "2", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--part"):
            parse_part(bad)
    assert part_prefix("train", (2, 4)) == "train-p02of04"
    assert part_prefix("train", None) == "train"
    assert shard_name(part_prefix("train", (12, 100)), 3) == "train-p012of100-000003.tar"


def test_class_list_keeps_ids_and_appends_new_classes() -> None:
    assert class_list(["b", "a", None, "b"]) == ["a", "b"]
    assert class_list([None, None]) is None
    assert class_list(["c", "a", "0aa"], known=["a", "b"]) == ["a", "b", "0aa", "c"]
    assert class_list(["3", "1"]) == ["0", "1", "2", "3"]  # integer labels are their own ids


def test_parse_size() -> None:
    assert parse_size("1GB") == 10**9 and parse_size("512MiB") == 512 << 20
    assert parse_size("2000") == 2000 and parse_size("1.5 kb") == 1500
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")


def test_config_validation_names_the_field() -> None:
    for bad, field in (({"short_side": 287}, "short_side"), ({"gop": 0}, "gop"), ({"crf": 60}, "crf"),
                       ({"preset": "warp"}, "preset"), ({"min_chunk_seconds": 20.0}, "min_chunk_seconds")):
        with pytest.raises(ValueError, match=field):
            PreprocessConfig(input="in", output="out", **bad)


def test_transcode_args_treat_odd_names_as_files() -> None:
    spec = TranscodeSpec(short_side=288, crf=23, gop=16, split_s=(10.0, 20.0))
    args = transcode_args("concat:-x.mp4", "/o%ut", spec)
    src = args[args.index("-i") + 1]
    assert src.startswith("file:/") and src.endswith("/concat:-x.mp4")
    assert args[-1] == "/o%%ut/%05d.mp4"  # the folder's '%' escaped for the segment muxer
    assert args[args.index("-segment_times") + 1] == args[args.index("-force_key_frames") + 1]
    assert "-an" in args and args[args.index("-g") + 1] == "16"
    keep = transcode_args("a.mp4", "/o", TranscodeSpec(short_side=288, crf=23, gop=16, keep_audio=True,
                                                         start_s=5.0, duration_s=3.0, fps=15))
    assert "-an" not in keep and "0:a:0?" in keep
    assert keep.index("-ss") < keep.index("-i") < keep.index("-t")
    assert "fps=15" in keep[keep.index("-vf") + 1]


def test_tune_reaches_the_ffmpeg_arguments_and_the_settings() -> None:
    from vidshard.preprocess.encode import transcode_spec
    from vidshard.preprocess.inputs import InputItem

    item = InputItem(path=Path("a.mp4"), rel="a.mp4")
    for tune in ("fastdecode", "film"):
        cfg = PreprocessConfig(input="in", output="out", tune=tune)
        assert cfg.settings()["tune"] == tune
        args = transcode_args("a.mp4", "/o", transcode_spec(cfg, item, 0.0, 10.0, [(0.0, 10.0)]))
        assert args[args.index("-tune") + 1] == tune
    plain = PreprocessConfig(input="in", output="out", tune=None)
    assert plain.settings()["tune"] is None
    assert "-tune" not in transcode_args("a.mp4", "/o", transcode_spec(plain, item, 0.0, 10.0, [(0.0, 10.0)]))
    bf = transcode_args("a.mp4", "/o", TranscodeSpec(short_side=288, crf=23, gop=16, bframes=0))
    assert bf[bf.index("-bf") + 1] == "0"
    with pytest.raises(ValueError, match="tune"):
        PreprocessConfig(input="in", output="out", tune="fast")


def test_b_frame_settings_reach_the_ffmpeg_arguments_and_the_settings() -> None:
    from vidshard.preprocess.encode import transcode_spec
    from vidshard.preprocess.inputs import InputItem

    item = InputItem(path=Path("a.mp4"), rel="a.mp4")
    default = PreprocessConfig(input="in", output="out")
    s = default.settings()
    assert (s["tune"], s["crf"], s["gop"]) == ("fastdecode", 22, 16)
    assert (s["bframes"], s["b_pyramid"], s["b_adapt"]) == (5, "none", 0)
    args = transcode_args("a.mp4", "/o", transcode_spec(default, item, 0.0, 10.0, [(0.0, 10.0)]))
    assert args[args.index("-bf") + 1] == "5"
    assert args[args.index("-x264-params") + 1] == "b-pyramid=none:b-adapt=0"
    assert args.index("-tune") < args.index("-x264-params")  # after the tune, so the tune cannot undo it
    preset = PreprocessConfig(input="in", output="out", bframes=None, b_pyramid=None, b_adapt=None)
    assert {k: preset.settings()[k] for k in ("bframes", "b_pyramid", "b_adapt")} == dict.fromkeys(
        ("bframes", "b_pyramid", "b_adapt"))
    args = transcode_args("a.mp4", "/o", transcode_spec(preset, item, 0.0, 10.0, [(0.0, 10.0)]))
    assert "-bf" not in args and "-x264-params" not in args
    strict = TranscodeSpec(short_side=288, crf=23, gop=16, b_pyramid="strict")
    assert "b-pyramid=strict" in transcode_args("a.mp4", "/o", strict)
    for bad, field in (({"bframes": 17}, "bframes"), ({"bframes": -1}, "bframes"),
                       ({"b_pyramid": "flat"}, "b_pyramid"), ({"b_adapt": 3}, "b_adapt")):
        with pytest.raises(ValueError, match=field):
            PreprocessConfig(input="in", output="out", **bad)
