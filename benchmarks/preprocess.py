"""Preprocessing throughput: vidshard against bare ffmpeg doing the identical transcode.

Both sides get the same files and the same parallelism in the same run: bare
ffmpeg runs exactly the command vidshard builds (``ffmpeg.transcode_args``: same
filters, encoder and segment muxer), ``workers`` at a time, and nothing else;
vidshard runs :func:`vidshard.preprocess.run.preprocess` (probe, encode, verify,
pack into shards with sha256, journal, manifest). The figure is seconds of
source video per second of wall time, and the ratio vidshard / ffmpeg.

    python -m vidshard.benchmarks.preprocess            # or: vidshard bench preprocess
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console
from vidshard.preprocess.config import PreprocessConfig
from vidshard.preprocess.encode import transcode_spec
from vidshard.preprocess.ffmpeg import (
    Synth,
    TranscodeSpec,
    measure_quality,
    run,
    synth_video,
    transcode,
    transcode_args,
)
from vidshard.preprocess.inputs import InputItem, list_inputs
from vidshard.preprocess.plan import chunk_bounds
from vidshard.preprocess.probe import probe
from vidshard.preprocess.run import preprocess


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to measure."""

    inputs: Path | None = None
    """A folder of videos; ``None`` generates ``videos`` synthetic ones."""
    videos: int = 8
    """Synthetic inputs to generate (testsrc2 and mandelbrot, H.264 640x480 25 fps)."""
    seconds: float = 12.0
    """Length of each synthetic input."""
    workers: int = 0
    """Parallel processes on both sides; 0 = all cores."""
    repeats: int = 2
    """Alternating repeats of both sides; the best time of each counts (less noise from other load)."""

    def __post_init__(self) -> None:
        if self.videos < 1 or self.seconds <= 0 or self.repeats < 1 or self.workers < 0:
            raise ValueError("videos, seconds and repeats must be positive, workers >= 0")


@dataclass(frozen=True, kw_only=True)
class BenchResult:
    """Measured figures."""

    videos: int
    """Input files."""
    video_seconds: float
    """Seconds of source video in them."""
    workers: int
    """Parallel processes on each side."""
    ffmpeg_s: float
    """Best wall time of bare ffmpeg."""
    vidshard_s: float
    """Best wall time of vidshard preprocess."""

    @property
    def ffmpeg_speed(self) -> float:
        return self.video_seconds / self.ffmpeg_s

    @property
    def vidshard_speed(self) -> float:
        return self.video_seconds / self.vidshard_s

    @property
    def ratio(self) -> float:
        return self.ffmpeg_s / self.vidshard_s

    def to_dict(self) -> dict:
        return {**asdict(self), "ffmpeg_speed": self.ffmpeg_speed, "vidshard_speed": self.vidshard_speed,
                "ratio": self.ratio}


def make_inputs(folder: Path, cfg: BenchConfig) -> Path:
    for i in range(cfg.videos):
        spec = Synth(seconds=cfg.seconds, width=640, height=480, pattern=("testsrc2", "mandelbrot")[i % 2])
        synth_video(folder / f"input_{i:02d}.mp4", spec)
    return folder


def bare_ffmpeg(inputs: Path, out: Path, pp: PreprocessConfig) -> float:
    """Wall time of the identical ffmpeg commands, ``pp.num_workers`` at a time."""
    commands = []
    for i, item in enumerate(list_inputs(inputs)):
        info = probe(item.path)  # planning, as any script must do, outside the timed part
        bounds = chunk_bounds(info.duration_s, pp.chunk_seconds, pp.min_chunk_seconds)
        chunk_dir = out / f"{i:05d}"
        chunk_dir.mkdir(parents=True)
        spec = transcode_spec(pp, item, 0.0, info.duration_s, bounds)
        commands.append(transcode_args(item.path, chunk_dir, spec))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(pp.num_workers) as pool:
        list(pool.map(run, commands))
    return time.perf_counter() - t0


def run_vidshard(inputs: Path, out: Path, pp: PreprocessConfig) -> float:
    t0 = time.perf_counter()
    result = preprocess(PreprocessConfig(**{**pp.__dict__, "input": inputs, "output": out}),
                        console=Console(quiet=True))
    elapsed = time.perf_counter() - t0
    if result.total.videos_failed:
        raise RuntimeError(f"vidshard failed on benchmark inputs: {result.failures}")
    return elapsed


def bench_preprocess(cfg: BenchConfig, console: Console | None = None) -> BenchResult:
    """Measure both sides on the same inputs, alternating, best of ``cfg.repeats``."""
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="vidshard-bench-") as tmp:
        tmp = Path(tmp)
        inputs = cfg.inputs or make_inputs(tmp / "inputs", cfg)
        pp = PreprocessConfig(input=inputs, output=tmp / "out", workers=cfg.workers, quiet=True)
        items = list_inputs(inputs)
        seconds = sum(probe(it.path).duration_s for it in items)
        times: dict[str, list[float]] = {"ffmpeg": [], "vidshard": []}
        for r in range(cfg.repeats):
            for side, fn in (("ffmpeg", bare_ffmpeg), ("vidshard", run_vidshard)):
                out = tmp / f"{side}{r}"
                times[side].append(fn(inputs, out, pp))
                shutil.rmtree(out, ignore_errors=True)
                console.print(f"repeat {r + 1}: {side:8s} {times[side][-1]:.2f} s", highlight=False)
    return BenchResult(videos=len(items), video_seconds=seconds, workers=pp.num_workers,
                       ffmpeg_s=min(times["ffmpeg"]), vidshard_s=min(times["vidshard"]))


def report(res: BenchResult) -> str:
    return (f"{res.videos} videos, {res.video_seconds:.0f} s of video, {res.workers} workers each\n"
            f"bare ffmpeg : {res.ffmpeg_s:7.2f} s  {res.ffmpeg_speed:7.1f} s of video per s\n"
            f"vidshard    : {res.vidshard_s:7.2f} s  {res.vidshard_speed:7.1f} s of video per s\n"
            f"ratio       : {res.ratio:.3f} of bare ffmpeg's throughput (goal >= 0.9)")


# --- How the defaults were chosen: file size against random clip-decode speed per gop ------------


def gop_sweep(gops: tuple[int, ...] = (4, 8, 16, 32, 64, 250), clip_frames: int = 16, clips: int = 40,
              seconds: float = 10.0, short_side: int = 288, seed: int = 0) -> list[dict]:
    """For each gop: bytes per second of video, and random ``clip_frames``-frame clips decoded per
    second (seek to the keyframe before a random start, decode to the clip's end, one thread),
    averaged over three sources (testsrc2, mandelbrot, a moving square)."""
    import random

    import av

    rows = []
    with tempfile.TemporaryDirectory(prefix="vidshard-gop-") as tmp:
        tmp = Path(tmp)
        sources = [synth_video(tmp / f"{p}.mp4", Synth(seconds=seconds, width=640, height=480, pattern=p,
                                                       codec="h264", gop=1))
                   for p in ("testsrc2", "mandelbrot", "moving")]
        for gop in gops:
            size, clip_s = 0, 0.0
            for src in sources:
                pp = PreprocessConfig(input=tmp, output=tmp, gop=gop, short_side=short_side,
                                      chunk_seconds=seconds)
                out = tmp / f"g{gop}_{src.stem}"
                spec = transcode_spec(pp, list_inputs(tmp)[0], 0.0, seconds, [(0.0, seconds)])
                chunk = transcode(src, out, spec)[0][0]
                size += chunk.stat().st_size
                clip_s += _time_clips(av, chunk, clip_frames, clips, random.Random(seed))
            rows.append({"gop": gop, "kbytes_per_s": size / len(sources) / seconds / 1e3,
                         "clips_per_s": clips * len(sources) / clip_s})
    return rows


def _time_clips(av, path: Path, n: int, clips: int, rng) -> float:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "NONE"
        total = stream.frames
        rate, tb = stream.average_rate, stream.time_base
        t0 = time.perf_counter()
        for _ in range(clips):
            start = rng.randrange(0, total - n)
            c.seek(int(start / rate / tb), stream=stream, backward=True)
            got = 0
            for frame in c.decode(stream):
                if frame.pts * tb >= start / rate - 1e-6:
                    got += 1
                    if got == n:
                        break
        return time.perf_counter() - t0


def sweep_report(rows: list[dict]) -> str:
    lines = ["| gop | size (kB per s of video) | random 16-frame clips decoded per s |",
             "| --- | --- | --- |"]
    lines += [f"| {r['gop']} | {r['kbytes_per_s']:.0f} | {r['clips_per_s']:.0f} |" for r in rows]
    return "\n".join(lines)


# --- Encode for decoding: bytes, quality, encode speed and decode speed per encoder candidate -------


@dataclass(frozen=True)
class Candidate:
    """One x264 setting to measure (``None``: the preset's choice)."""

    tune: str | None = None
    """x264 tune (None: none)."""
    crf: int = 23
    """Constant rate factor."""
    gop: int = 16
    """Keyframe interval."""
    bframes: int | None = None
    """B-frames (None: the preset's choice, 3 for veryfast)."""
    b_pyramid: str | None = None
    """x264 b-pyramid: none, strict, normal (None: the preset's, normal)."""
    b_adapt: int | None = None
    """x264 b-adapt: 0 fixed B placement, 1, 2 (None: the preset's, 1)."""

    @property
    def label(self) -> str:
        bf = "preset" if self.bframes is None else str(self.bframes)
        extra = "".join(f" {k}={v}" for k, v in (("b-pyramid", self.b_pyramid), ("b-adapt", self.b_adapt))
                        if v is not None)
        return f"tune={self.tune or 'none'} crf={self.crf} gop={self.gop} bf={bf}{extra}"


# The default before issue 12: no tune, crf 23, gop 16, the preset's B-frames (3, b-pyramid normal, b-adapt 1)
BASELINE = Candidate()
DEFAULT = Candidate(tune="fastdecode", crf=22, gop=16, bframes=5, b_pyramid="none", b_adapt=0)  # today's
CANDIDATES = (BASELINE, Candidate(bframes=0), Candidate(tune="fastdecode"),
              Candidate(tune="fastdecode", crf=22),
              Candidate(tune="fastdecode", crf=22, b_pyramid="none", b_adapt=0), DEFAULT,
              Candidate(tune="fastdecode", crf=22, bframes=7, b_pyramid="none", b_adapt=0))
SWEEP_SOURCES = ("testsrc2", "mandelbrot", "moving")


def _preset_or(text: str, cast=str):
    """A candidate field: ``-``, ``preset`` or empty for the preset's choice, else ``cast(text)``."""
    return None if text in ("-", "", "preset") else cast(text)


def parse_candidate(text: str) -> Candidate:
    """``"TUNE,CRF,GOP,BF[,B_PYRAMID[,B_ADAPT]]"`` (``none`` for no tune; ``-`` for the preset's choice)
    -> Candidate, validated as ``vidshard preprocess`` validates the same settings."""
    parts = [p.strip() for p in text.split(",")]
    if not 4 <= len(parts) <= 6:
        raise ValueError(f"candidate {text!r}: expected TUNE,CRF,GOP,BF[,B_PYRAMID[,B_ADAPT]] such as "
                         "fastdecode,21,16,- or fastdecode,22,16,7,none,0")
    tune, crf, gop, bf, pyramid, adapt = parts + ["-"] * (6 - len(parts))
    try:
        c = Candidate(tune=None if tune in ("none", "-", "") else tune, crf=int(crf), gop=int(gop),
                      bframes=_preset_or(bf, int), b_pyramid=_preset_or(pyramid),
                      b_adapt=_preset_or(adapt, int))
        _candidate_config(c, 288, 10.0)  # the preprocess config's own checks (tune, crf, pyramid, ...)
    except ValueError as e:
        raise ValueError(f"candidate {text!r}: {e}") from None
    return c


def encode_sweep(candidates: tuple[Candidate, ...] = CANDIDATES, *, seconds: float = 10.0,
                 short_side: int = 288, clips: int = 30, repeats: int = 3, seed: int = 0,
                 console: Console | None = None) -> dict:
    """Measure every candidate on the same synthetic sources (640x480, ``SWEEP_SOURCES``), one thread.

    Bytes and SSIM/PSNR (ffmpeg's filters, against the source scaled the same way) are measured once
    (x264 on one thread is deterministic); encode speed and the loader's decode-only clips/s (random
    16x4 clips through ``shards.decode``) ``repeats`` times, interleaved, both per CPU second (the
    process's own CPU time, which other load on a shared machine does not inflate as it does wall
    time). See :func:`summarize`.
    """
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="vidshard-encode-") as tmp:
        tmp = Path(tmp)
        sources = [synth_video(tmp / "src" / f"{p}.mp4", Synth(seconds=seconds, width=640, height=480,
                                                                pattern=p, gop=1)) for p in SWEEP_SOURCES]
        runs: dict[str, dict] = {c.label: {"encode_s": [], "clips_per_s": [], "bytes": 0, "ssim": [],
                                           "psnr": []} for c in candidates}
        for r in range(repeats):
            for c in candidates:
                _measure(c, sources, runs[c.label], tmp / f"r{r}", short_side, seconds, clips, seed,
                         quality=r == 0)
                console.print(f"repeat {r + 1}: {c.label}: {runs[c.label]['clips_per_s'][-1]:.0f} clips/s",
                              highlight=False)
    video_s = seconds * len(sources)
    measured = [{"label": c.label, "candidate": asdict(c), "bytes": run["bytes"],
                 "ssim": statistics.mean(run["ssim"]), "psnr": statistics.mean(run["psnr"]),
                 "encode_x_realtime": [video_s / t for t in run["encode_s"]],
                 "clips_per_s": run["clips_per_s"]}
                for c in candidates for run in [runs[c.label]]]
    return summarize(measured, baseline=candidates[0].label)


def _measure(c: Candidate, sources: list[Path], row: dict, tmp: Path, short_side: int, seconds: float,
             clips: int, seed: int, quality: bool) -> None:
    """Encode every source with ``c``; add encode seconds and decode clips/s (and bytes, SSIM, PSNR)."""
    enc_s = dec_s = 0.0
    for src in sources:
        out = tmp / f"{c.tune}_{c.crf}_{c.gop}_{c.bframes}_{c.b_pyramid}_{c.b_adapt}_{src.stem}"
        t0 = _children_cpu()
        chunk = transcode(src, out, _candidate_spec(c, short_side, seconds))[0][0]
        enc_s += _children_cpu() - t0
        dec_s += _decode_clips(chunk.read_bytes(), clips, seed)
        if quality:
            q = measure_quality(chunk, src, short_side)
            row["bytes"] += chunk.stat().st_size
            row["ssim"].append(q["ssim"])
            row["psnr"].append(q["psnr"])
        shutil.rmtree(out, ignore_errors=True)
    row["encode_s"].append(enc_s)
    row["clips_per_s"].append(clips * len(sources) / dec_s)


def _children_cpu() -> float:
    """CPU seconds used by finished child processes (ffmpeg): unlike wall time, not inflated by other
    load on a shared machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _candidate_config(c: Candidate, short_side: int, seconds: float) -> PreprocessConfig:
    return PreprocessConfig(input=".", output=".", crf=c.crf, gop=c.gop, tune=c.tune, bframes=c.bframes,
                            b_pyramid=c.b_pyramid, b_adapt=c.b_adapt, short_side=short_side,
                            chunk_seconds=seconds, workers=1)


def _candidate_spec(c: Candidate, short_side: int, seconds: float) -> TranscodeSpec:
    pp = _candidate_config(c, short_side, seconds)
    spec = transcode_spec(pp, InputItem(path=Path("x.mp4"), rel="x.mp4"), 0.0, seconds, [(0.0, seconds)])
    return replace(spec, threads=1)


def _decode_clips(data: bytes, clips: int, seed: int) -> float:
    """CPU seconds the loader's decoder takes for ``clips`` random 16x4 clips of ``data`` (one thread; CPU
    time, not wall time, so other load on a shared machine does not count)."""
    import io
    import random

    import av
    from vidshard.shards.decode import decode_frames, demux
    from vidshard.shards.sampling import ClipSpec, plan_sample

    rng, spec = random.Random(seed), ClipSpec()
    t0 = time.process_time()
    for _ in range(clips):
        with av.open(io.BytesIO(data)) as c:
            stream, packets = demux(c)
            (views,) = plan_sample(len(packets), stream.codec_context.width, stream.codec_context.height,
                                   spec, rng)
            decode_frames(stream, packets, views[0].indices, 1)
    return time.process_time() - t0


def summarize(measured: list[dict], baseline: str, min_speedup: float = 1.8, max_bytes: float = 1.3) -> dict:
    """Ratios against ``baseline`` and the chosen default.

    Speed ratios are the median over repeats of the ratio within each repeat (runs close in time share
    the machine's load). A candidate qualifies with decode-only clips/s >= ``min_speedup`` x the
    baseline's, bytes <= ``max_bytes`` x, and SSIM no lower (at the 3 decimals SSIM is quoted with);
    the chosen one is the qualifying candidate with the fewest bytes (None when none qualifies).
    """
    base = next(m for m in measured if m["label"] == baseline)
    rows = []
    for m in measured:
        decode = statistics.median(a / b for a, b in zip(m["clips_per_s"], base["clips_per_s"], strict=True))
        encode = statistics.median(a / b for a, b in zip(m["encode_x_realtime"], base["encode_x_realtime"],
                                                         strict=True))
        row = {**m, "bytes_ratio": m["bytes"] / base["bytes"], "decode_ratio": decode, "encode_ratio": encode,
               "clips_per_s_median": statistics.median(m["clips_per_s"])}
        row["qualifies"] = (decode >= min_speedup and row["bytes_ratio"] <= max_bytes
                            and round(m["ssim"], 3) >= round(base["ssim"], 3))
        rows.append(row)
    ok = [r for r in rows if r["qualifies"]]
    chosen = min(ok, key=lambda r: (r["bytes"], -r["decode_ratio"]))["label"] if ok else None
    return {"baseline": baseline, "rows": rows, "chosen": chosen,
            "rule": f"decode-only clips/s >= {min_speedup}x, bytes <= {max_bytes}x, SSIM not lower"}


def encode_report(result: dict) -> str:
    lines = ["| candidate | bytes | SSIM | PSNR (dB) | encode (x realtime) | decode-only clips/s | "
             "vs baseline: bytes | decode | qualifies |", "| --- " * 9 + "|"]
    for r in result["rows"]:
        speed = statistics.median(r["encode_x_realtime"])
        lines.append(f"| {r['label']} | {r['bytes'] / 1e3:.0f} kB | {r['ssim']:.4f} | {r['psnr']:.2f} | "
                     f"{speed:.1f} | {r['clips_per_s_median']:.0f} | "
                     f"{r['bytes_ratio']:.2f}x | {r['decode_ratio']:.2f}x | "
                     f"{'yes' if r['qualifies'] else 'no'} |")
    lines.append(f"rule: {result['rule']}; chosen: {result['chosen'] or 'none qualifies'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m vidshard.benchmarks.preprocess [OPTIONS]`` is ``vidshard bench preprocess [OPTIONS]``."""
    import sys

    from vidshard.cli import app

    app(["bench", "preprocess", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
