"""``vidshard bench loader``: clips/s of the shard loader against the conventional raw-video loader and
against the decode-only limit, measured in one run with the same clip settings and worker processes.

Rows (each a ``DataLoader`` with the same number of worker processes, batches of ``batch_size``):

- ``raw videos (conventional)``: PyAV random access into the full-size original file (seek to the
  keyframe before a random start, decode at full size, convert every used frame to RGB), then a random
  resized crop and a bilinear resize with torch. The baseline the speed-up refers to.
- ``shard loader``: :class:`~vidshard.shards.loader.ClipLoader` on the shard set (train mode).
- ``shard loader, K clips/sample``: the same with ``clips_per_sample`` K (decode shared by K clips).
- ``decode-only limit``: PyAV decoding exactly the frames of one clip per shard-set sample
  (:func:`~vidshard.shards.decode.decode_frames`), nothing else: no conversion, crop, resize or batch.

Each figure is the steady-state rate: the clock starts once every worker has delivered its first
item and stops ``clips`` clips later; each row runs ``repeats`` times, interleaved, and the median
run is reported. Without inputs, small raw videos (640x480 to 1280x720, a keyframe
every 250 frames, as cameras and downloads have) are generated and preprocessed with
``vidshard preprocess``.
"""

from __future__ import annotations

import io
import json
import platform
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from vidshard.shards.decode import decode_frames, demux
from vidshard.shards.loader import ClipLoader, LoaderConfig
from vidshard.shards.location import ShardSource, resolve
from vidshard.shards.sampling import ClipSpec, dense_indices, dense_starts, plan_sample, random_resized_crop
from vidshard.shards.tarsamples import tar_samples

VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"}


@dataclass(frozen=True, kw_only=True)
class LoaderBenchConfig:
    """What ``bench loader`` measures."""

    shardset: str | None = None
    """Shard set to read (any location the loader accepts); None generates one from ``raw``."""
    raw: str | None = None
    """Raw videos (a file or a folder searched recursively); None generates small ones."""
    frames: int = 16
    """Frames per clip."""
    stride: int = 4
    """Frame stride."""
    size: int = 224
    """Output side in pixels."""
    workers: int = 2
    """DataLoader worker processes, the same for every row."""
    batch_size: int = 8
    """Clips per batch."""
    clips: int = 48
    """Clips timed per row and repeat (from starting the iterator)."""
    max_seconds: float = 8.0
    """Stop a run's timing after this long even if fewer clips arrived (the raw baseline is slow)."""
    repeats: int = 5
    """Rows are measured this many times, interleaved; the median run of each row is reported, and
    ratios are the median of the ratios within each repeat."""
    clips_per_sample: int = 4
    """K of the extra ``clips_per_sample`` row (1 skips it)."""
    seed: int = 0
    """Seed of the random clips."""
    workdir: str | None = None
    """Where generated inputs go (a temporary folder when None)."""
    cache_dir: str | None = None
    """For an ``http(s)`` shard set: download every shard once into this cache (sha256-checked) before
    timing, then read the cached copies in every row; None streams the shards in every run. Object
    storage (``s3://`` ...) is always cached (by default in ``~/.cache/vidshard``)."""
    cache_limit: int | None = None
    """Bytes the cache may hold (LRU eviction); smaller than the set, the rows include re-downloads."""

    def __post_init__(self) -> None:
        if min(self.frames, self.stride, self.size, self.batch_size, self.clips, self.clips_per_sample,
               self.repeats) < 1:
            raise ValueError("frames, stride, size, batch_size, clips, clips_per_sample, repeats: >= 1")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")


def _worker_rng(seed: int, name: str) -> random.Random:
    info = get_worker_info()
    return random.Random(f"{name}-{seed}-{info.id if info else 0}")


def list_videos(raw: str | Path) -> list[Path]:
    p = Path(raw)
    if p.is_file():
        return [p]
    found = sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
    if not found:
        raise FileNotFoundError(f"{raw}: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) found")
    return found


def raw_clip(path: Path, spec: ClipSpec, size: int, rng: random.Random, threads: int = 1) -> torch.Tensor:
    """The conventional way: seek in the original, decode full-size RGB, crop and resize in torch."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = threads  # the loader's setting, for a fair race
        if threads != 1:
            s.codec_context.thread_type = "AUTO"
        fps, tb, t0 = float(s.average_rate), float(s.time_base), s.start_time or 0
        n = s.frames or int((c.duration or 0) / 1e6 * fps)
        (start,) = dense_starts(n, spec.frames, spec.stride, 1, rng)
        wanted = dense_indices(n, spec.frames, spec.stride, start)
        c.seek(t0 + int(start / fps / tb), stream=s, backward=True, any_frame=False)
        got: dict[int, np.ndarray] = {}
        for frame in c.decode(s):
            idx = round((frame.pts - t0) * tb * fps)
            if idx in wanted:
                got[idx] = frame.to_ndarray(format="rgb24")  # (H, W, 3), full size
            if idx >= wanted[-1]:
                break
    if not got:
        raise ValueError(f"{path}: no frame decoded at the clip's position")
    last = got[max(got)]
    video = torch.from_numpy(np.stack([got.get(i, last) for i in wanted]))  # (T, H, W, 3)
    box = random_resized_crop(video.shape[2], video.shape[1], spec.scale, spec.ratio, rng)
    crop = video[:, box.y:box.y + box.h, box.x:box.x + box.w].permute(0, 3, 1, 2).float()  # (T, 3, h, w)
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)  # (T, 3, S, S)
    if spec.flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3)  # (C, T, H, W)


class RawClips(IterableDataset):
    """Endless random clips from raw videos, batched, in each worker."""

    def __init__(self, paths: list[Path], spec: ClipSpec, size: int, batch_size: int, seed: int,
                 threads: int = 1) -> None:
        super().__init__()
        self.paths, self.spec, self.size, self.batch_size, self.seed = paths, spec, size, batch_size, seed
        self.threads = threads

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = _worker_rng(self.seed, "raw")
        clips, failures = [], 0
        while True:
            path = rng.choice(self.paths)
            try:
                clips.append(raw_clip(path, self.spec, self.size, rng, self.threads))
                failures = 0
            except Exception as exn:  # an unreadable input is skipped, as a loader would
                failures += 1
                if failures > 10 * len(self.paths):
                    raise RuntimeError(f"raw clips keep failing to decode (last: {path}: {exn})") from exn
                continue
            if len(clips) == self.batch_size:
                yield torch.stack(clips)  # (B, C, T, H, W)
                clips = []


class DecodeOnly(IterableDataset):
    """Endless: decode exactly one clip's frames per shard-set sample, and nothing else."""

    def __init__(self, source: ShardSource, spec: ClipSpec, seed: int, threads: int = 1) -> None:
        super().__init__()
        self.source, self.spec, self.seed, self.threads = source, spec, seed, threads

    def __iter__(self) -> Iterator[int]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = _worker_rng(self.seed, "decode")
        while True:  # this worker's share of the samples (every workers-th), over and over
            i = 0
            for shard in range(len(self.source.urls)):
                with self.source.open(shard) as stream:  # a cached copy stays pinned while read
                    for sample in tar_samples(stream, self.source.urls[shard]):
                        i += 1
                        if i % workers != worker or "mp4" not in sample:
                            continue
                        with av.open(io.BytesIO(sample["mp4"])) as c:
                            stream, packets = demux(c)
                            w, h = stream.codec_context.width, stream.codec_context.height
                            (views,) = plan_sample(len(packets), w, h, self.spec, rng)
                            decode_frames(stream, packets, views[0].indices, self.threads)
                        yield 1


def _time(batches: Iterable[Any], clips: int, max_seconds: float, skip: int,
          count=len) -> dict[str, float]:
    """Steady-state clips/s: the clock starts when the first ``skip`` items (one per worker) have arrived,
    then runs until ``clips`` more clips arrived (or ``max_seconds`` passed).

    Starting at the very first item would credit a row with what its other workers produced in the
    meantime; starting at the iterator would charge batching rows for their start-up. The consumer
    does nothing but count, so after each worker's first item, arrivals follow the production rate.
    """
    it = iter(batches)
    for _ in range(max(1, skip)):
        next(it)
    n, t0 = 0, time.perf_counter()
    for b in it:
        n += count(b)
        if n >= clips or time.perf_counter() - t0 > max_seconds:
            break
    dt = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()  # a generator: closes the loader inside it
    del it  # stop this row's workers now, before they prefetch into the next row's time
    return {"clips": n, "seconds": round(dt, 3), "clips_per_s": round(n / dt, 2)}


def _loader_epochs(cfg: LoaderConfig, cache: Counter) -> Iterator[dict[str, Any]]:
    loader = ClipLoader(cfg)
    try:
        for epoch in range(10**6):
            loader.set_epoch(epoch)
            yield from loader
    finally:
        cache.update(loader.cache_stats)


def _dl(ds: IterableDataset, workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)


# Generated inputs: (width, height) of the raw videos, RAW_S seconds each at 30 fps with a keyframe every
# 250 frames, cut into CHUNK_S-second samples (75 frames: a 16 x 4 clip spans 61).
RAW_SIZES = [(640, 480), (960, 540), (1280, 720), (1280, 720)]
RAW_S, CHUNK_S = 40.0, 2.5  # 64 samples: a timed row stays within one epoch


def make_inputs(workdir: Path, console: Any = None) -> tuple[Path, Path]:
    """Small raw videos and their shard set (made by ``vidshard preprocess``), reused when present."""
    from vidshard.preprocess.config import PreprocessConfig
    from vidshard.preprocess.ffmpeg import Synth, synth_video
    from vidshard.preprocess.run import preprocess

    raw, shards = workdir / "raw", workdir / "shards"
    for i, (w, h) in enumerate(RAW_SIZES):
        path = raw / f"cam{i}_{w}x{h}.mp4"
        if not path.exists():
            synth_video(path, Synth(seconds=RAW_S, fps=30, width=w, height=h, pattern="testsrc2", gop=250))
    if not (shards / "manifest.json").exists():
        preprocess(PreprocessConfig(input=raw, output=shards, chunk_seconds=CHUNK_S, quiet=True, workers=1),
                   console)
    return raw, shards


def run_bench(cfg: LoaderBenchConfig, console: Any = None) -> dict[str, Any]:
    """Measure every row in this process's run; returns the figures (also what ``--json`` writes)."""
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="vidshard-bench-loader-"))
    if (cfg.shardset is None) != (cfg.raw is None):
        raise ValueError("give both SHARDSET and --raw (the raw videos it was made from), or neither to "
                         "generate both")
    if cfg.shardset is None:
        raw, shards = make_inputs(workdir, console)
    shardset = cfg.shardset or str(shards)
    videos = list_videos(cfg.raw or raw)
    base = dict(source=shardset, frames=cfg.frames, stride=cfg.stride, size=cfg.size, workers=cfg.workers,
                batch_size=cfg.batch_size, seed=cfg.seed, drop_last=False, cache_dir=cfg.cache_dir,
                cache_limit=cfg.cache_limit)
    spec = LoaderConfig(**base).clip_spec()
    source = resolve(shardset, cfg.cache_dir, cfg.cache_limit)
    # With a cache the download happens here, once, untimed; every row then reads the verified copies.
    for i in range(len(source.urls)):
        source.open_url(i)
    cache: Counter = Counter()
    keys = lambda b: len(b["key"])  # noqa: E731
    threads = LoaderConfig(**base).threads()  # decoder threads per worker, the same in every row
    raw_clips = RawClips(videos, spec, cfg.size, cfg.batch_size, cfg.seed, threads)
    w, n, t = max(1, cfg.workers), cfg.clips, cfg.max_seconds
    runs = {
        "raw videos (conventional)": lambda: _time(_dl(raw_clips, cfg.workers), n, t, w),
        "shard loader": lambda: _time(_loader_epochs(LoaderConfig(**base), cache), n, t, w, keys),
        "decode-only limit": lambda: _time(_dl(DecodeOnly(source, spec, cfg.seed, threads), cfg.workers), n,
                                           t, w, lambda b: b),
    }
    if cfg.clips_per_sample > 1:
        kcfg = LoaderConfig(**base, clips_per_sample=cfg.clips_per_sample)
        name = f"shard loader, {cfg.clips_per_sample} clips/sample"
        runs[name] = lambda: _time(_loader_epochs(kcfg, cache), n, t, w, keys)
    measured: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    with Progress(console=console, transient=True, disable=console is None) as progress:
        task = progress.add_task("bench loader", total=cfg.repeats * len(runs))
        for _ in range(cfg.repeats):  # interleaved, so a busy moment of the machine hits every row alike
            for name, run in runs.items():
                progress.update(task, description=f"bench loader: {name}")
                measured[name].append(run())
                progress.advance(task)
    # The median run of each row (the machine is shared; the median shrugs off one lucky or unlucky run).
    rows = {name: sorted(m, key=lambda r: r["clips_per_s"])[len(m) // 2] for name, m in measured.items()}
    runs = {name: [r["clips_per_s"] for r in m] for name, m in measured.items()}

    def ratio(num: str, den: str) -> float:
        """Median over repeats of the ratio within each repeat: runs close in time share the machine's
        load, so their ratio is steadier than the ratio of two medians."""
        return round(statistics.median(a / b for a, b in zip(runs[num], runs[den], strict=True)), 2)

    result = {
        "config": asdict(cfg) | {"shardset": shardset, "raw": str(cfg.raw or raw)},
        "machine": machine(),
        "rows": rows,
        "runs": runs,
        "speedup_vs_raw": ratio("shard loader", "raw videos (conventional)"),
        "fraction_of_decode_limit": ratio("shard loader", "decode-only limit"),
    }
    if source.counters is not None:  # hits, misses, bytes downloaded, evictions of every row
        result["cache"] = dict(cache + Counter(source.counters.snapshot()))
    if cfg.clips_per_sample > 1:
        result["clips_per_sample_gain"] = ratio(f"shard loader, {cfg.clips_per_sample} clips/sample",
                                                "shard loader")
    return result


def machine() -> dict[str, Any]:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "av": av.__version__, "cuda": torch.cuda.is_available()}


def show(result: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    settings = ", ".join(f"{k}={result['config'][k]}" for k in ("frames", "stride", "size", "workers"))
    table = Table("loader", "clips/s", "clips", "seconds", title=f"bench loader ({settings})")
    for name, row in result["rows"].items():
        table.add_row(name, f"{row['clips_per_s']:.1f}", str(row["clips"]), f"{row['seconds']:.2f}")
    console.print(table)
    console.print(f"shard loader vs raw videos: [bold]{result['speedup_vs_raw']:.1f}x[/] (goal >= 5x); "
                  f"fraction of the decode-only limit: [bold]{result['fraction_of_decode_limit']:.2f}[/] "
                  "(goal >= 0.9)")
    if "cache" in result:
        c = result["cache"]
        console.print(f"cache: {c.get('hits', 0)} hits, {c.get('misses', 0)} misses, "
                      f"{c.get('bytes_downloaded', 0)} bytes downloaded, {c.get('evicted', 0)} evicted")
    if "clips_per_sample_gain" in result:
        console.print(f"clips_per_sample {result['config']['clips_per_sample']}: "
                      f"{result['clips_per_sample_gain']:.2f}x the clips/s of 1")
    m = result["machine"]
    console.print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, PyAV {m['av']}")


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2) + "\n")
    return p
