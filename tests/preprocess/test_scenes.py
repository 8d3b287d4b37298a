"""Scene-aware chunks (``--split-at-scenes``): the plan by invariants, then real videos that join
different ffmpeg sources at known times."""

from __future__ import annotations

import json
import random
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.ffmpeg import Synth, TranscodeSpec, concat_videos, decode_args, run, synth_video
from vidshard.preprocess.plan import chunk_bounds, kept_cuts, output_size, scene_bounds
from vidshard.preprocess.run import preprocess
from vidshard.preprocess.scenes import SceneScore, detect_cuts, parse_cut_times
from vidshard.preprocess.store import SettingsMismatch
from vidshard.shards.schema import Manifest, SampleMeta

from .test_run import read_samples

FPS = 25.0
# (pattern, seconds) joined back to back: cuts at 1.6, 3.6 and 4.4 s (a short 0.8 s shot).
SHOTS = [("testsrc2", 1.6), ("mandelbrot", 2.0), ("moving", 0.8), ("testsrc2", 2.4)]
CUTS = [1.6, 3.6, 4.4]


@pytest.mark.parametrize("seed", range(4))
def test_scene_plan_invariants(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        duration = rng.uniform(0.5, 60)
        chunk = rng.choice([1.0, 2.5, 10.0])
        min_chunk = rng.uniform(0, chunk)
        cuts = sorted(rng.uniform(-1, duration + 1) for _ in range(rng.randrange(6)))
        min_shot = rng.choice([0.0, 0.4, 3.0])
        plan = scene_bounds(duration, cuts, chunk, min_chunk, min_shot)
        assert plan[0][0] == 0 and plan[-1][1] == round(duration, 6)
        for (_, end, _), (start, _, _) in zip(plan, plan[1:], strict=False):
            assert end == start  # no gap, no overlap
        inner = kept_cuts(duration, cuts, min_shot)
        assert all(b - a >= min_shot - 1e-6 for a, b in zip([0.0, *inner], inner, strict=False))
        if min_shot == 0:
            assert inner == sorted({round(c, 6) for c in cuts if 1e-6 < c < duration - 1e-6})
        starts = [a for a, _, _ in plan]
        assert all(c in starts for c in inner)  # every cut is a boundary
        assert [a for a, _, at in plan if at] == inner  # and is flagged, nothing else is
        assert not any(a < c < b for a, b, _ in plan for c in inner)  # no chunk spans a cut
        # Between two cuts the boundaries are exactly those the length rule puts there.
        edges = [0.0, *inner, round(duration, 6)]
        for a, b in zip(edges, edges[1:], strict=False):
            shot = [(s, e) for s, e, _ in plan if a <= s < b]
            assert [round(s - a, 6) for s, _ in shot] == [s for s, _ in chunk_bounds(b - a, chunk, min_chunk)]
            assert all(e - s <= chunk + min_chunk + 1e-6 for s, e in shot)
            if len(shot) > 1:
                assert all(e - s >= min_chunk - 1e-6 for s, e in shot)
        assert scene_bounds(duration, cuts, chunk, min_chunk, min_shot) == plan  # same input, same plan
    assert scene_bounds(7.0, [], 10.0, 2.0) == [(0.0, 7.0, False)]
    assert kept_cuts(7.0, [1.0, 1.04, 1.08, 3.0, 3.3], 0.4) == [1.0, 3.0]  # a strobe: one cut


def test_parse_cut_times() -> None:
    text = "frame:40 pts:40 pts_time:1.6\nlavfi.scd.time=1.6\nframe:90\nlavfi.scd.time=3.6\n" \
           "lavfi.scd.time=1.6\nlavfi.scd.time=0\n"
    assert parse_cut_times(text) == [1.6, 3.6]
    assert parse_cut_times("garbage\nlavfi.scd.time=x\n") == []


@pytest.fixture(scope="module")
def shots_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shots")
    parts = [synth_video(root / f"part{i}.mp4", Synth(pattern=p, seconds=s, fps=FPS, width=160, height=120))
             for i, (p, s) in enumerate(SHOTS)]
    (root / "in").mkdir()
    return concat_videos(parts, root / "in" / "shots.mp4", fps=FPS)


def test_detect_cuts_finds_every_join_and_nothing_else(shots_video: Path) -> None:
    found = detect_cuts(shots_video, threshold=10.0)
    assert len(found) == len(CUTS)
    assert all(abs(f - c) <= 1 / FPS for f, c in zip(found, CUTS, strict=True))


@pytest.mark.parametrize("chunk", [10.0, 1.5])
def test_samples_never_span_a_cut(shots_video: Path, tmp_path: Path, chunk: float) -> None:
    cfg = PreprocessConfig(input=shots_video.parent, output=tmp_path / "out", chunk_seconds=chunk,
                           min_chunk_seconds=0.5, short_side=64, gop=8, workers=1, quiet=True,
                           split_at_scenes=True)
    result = preprocess(cfg, console=Console(quiet=True))
    assert result.total.videos_ok == 1
    metas = sorted((s["meta"] for s in read_samples(cfg.output).values()), key=lambda m: m.chunk)
    starts = [m.start_s for m in metas]
    for c in CUTS:  # every cut is a chunk boundary within a frame, flagged in KEY.json
        near = [m for m in metas if abs(m.start_s - c) <= 1 / FPS]
        assert len(near) == 1 and near[0].starts_at_cut is True, (c, starts)
    others = [m for m in metas if not m.starts_at_cut]
    assert metas[0].starts_at_cut is False and len(others) == len(metas) - len(CUTS)
    # No boundary where there is no cut beyond what the length rule needs.
    expected = scene_bounds(sum(s for _, s in SHOTS), CUTS, chunk, 0.5)
    assert starts == pytest.approx([a for a, _, _ in expected], abs=1 / FPS)
    assert sum(m.frames for m in metas) == round(sum(s for _, s in SHOTS) * FPS)
    assert Manifest.load(cfg.output).settings["split_at_scenes"] is True
    if chunk == 10.0:  # a re-run without the option would mix two plans in one set
        with pytest.raises(SettingsMismatch, match="split_at_scenes"):
            preprocess(PreprocessConfig(**{**cfg.__dict__, "split_at_scenes": False}),
                       console=Console(quiet=True))


def test_old_samples_without_the_field_still_read() -> None:
    old = {"video": "a.mp4", "video_id": "0123456789abcdef", "chunk": 0, "start_s": 0.0, "end_s": 1.0,
           "frames": 25, "fps": 25.0, "width": 64, "height": 64}
    meta = SampleMeta.from_dict(json.loads(json.dumps(old)))
    assert meta.starts_at_cut is None and "starts_at_cut" not in meta.to_dict()


def test_scene_score_is_scdets_on_the_same_frames(shots_video: Path) -> None:
    """The in-pass detector (numpy, on the decoder's raw frames) gives ffmpeg's scdet scores and cuts."""
    spec = TranscodeSpec(short_side=64, crf=23, gop=8, threads=1)
    args = decode_args(shots_video, spec, Fraction(25))
    raw = run(args, timeout=60).stdout
    size = output_size(160, 120, Fraction(1), 0, 64)
    frame_bytes = size[0] * size[1] * 3 // 2
    score = SceneScore()
    luma = size[0] * size[1]
    ours = [score(np.frombuffer(raw, np.uint8, count=luma, offset=i))
            for i in range(0, len(raw), frame_bytes)]
    # The same chain, then ffmpeg's scdet on the luma plane (as ffmpeg 9's scdet scores; older ones
    # took every plane of yuv420p), printing every frame's score.
    vf = args.index("-vf")
    chain = args[vf + 1] + ",extractplanes=y,scdet=threshold=10"
    chain += ",metadata=print:key=lavfi.scd.score:file='pipe\\:1'"
    printed = run([*args[:vf], "-vf", chain, "-f", "null", "-"], timeout=60).stdout.decode()
    theirs = [float(v) for v in re.findall(r"^lavfi\.scd\.score=([0-9.]+)$", printed, re.MULTILINE)]
    assert len(ours) == len(theirs) == round(sum(s for _, s in SHOTS) * FPS)
    assert ours == pytest.approx(theirs, abs=0.0005)  # printed with 3 decimals
    cuts = [i / FPS for i, s in enumerate(ours) if s > 10.0]
    assert cuts == pytest.approx(CUTS, abs=1e-6)
    assert all(abs(f - c) <= 1 / FPS for f, c in zip(detect_cuts(shots_video), cuts, strict=True))


def test_in_pass_cuts_are_scdets_on_the_bench_videos(tmp_path: Path) -> None:
    """On the videos ``vidshard bench scenes`` makes (smaller), the detector --split-at-scenes uses
    finds every true cut within a frame, as ffmpeg's scdet in a separate pass does, and nothing else."""
    from vidshard.benchmarks.scenes import ScenesBenchConfig, in_pass_cuts, make_videos, score

    min_shot = PreprocessConfig(input=tmp_path, output=tmp_path).min_shot_seconds
    videos = make_videos(tmp_path, ScenesBenchConfig(videos=2, shots=4, size=(160, 120)))
    for path, truth in videos.items():
        ours, ref = in_pass_cuts(path, [0.0]), kept_cuts(1e9, detect_cuts(path, threads=1), min_shot)
        assert score(ours, truth, FPS) == score(ref, truth, FPS) == (len(truth), 0, 0), (ours, ref, truth)


@pytest.mark.slow
def test_bench_scenes_runs_all_three_ways() -> None:
    """``vidshard bench scenes`` end to end on one tiny video: every detector finds the cut, and the
    runs without the option, with it and with the former two passes all make their samples."""
    from vidshard.benchmarks.scenes import ScenesBenchConfig, report, run_scenes_bench

    res = run_scenes_bench(ScenesBenchConfig(videos=1, shots=2, size=(96, 64)), console=Console(quiet=True))
    assert all(r["hits"] == res["cuts"] == 1 and r["false"] == 0 for r in res["detectors"].values())
    assert res["samples_scenes"] >= res["samples"] >= 1
    assert min(res["cpu_s"], res["cpu_scenes_s"], res["cpu_two_pass_s"]) > 0
    assert "former two passes" in report(res)
