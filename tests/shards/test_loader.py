"""The clip loader end to end on tiny shard sets: exact epochs, equal batches, order, corrupt samples."""

from __future__ import annotations

import functools
import http.server
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from vidshard.preprocess.ffmpeg import Synth, read_counter, synth_video
from vidshard.shards.loader import ClipLoader, LoaderConfig
from vidshard.shards.location import resolve
from vidshard.shards.schema import Manifest, SampleMeta, sample_members, video_id
from vidshard.shards.writer import ShardWriter

SIDE, FRAMES = 64, 40
COUNTS = [5, 3, 7, 2, 4]  # 21 samples in uneven shards: ranks of a 2-way split get 11 and 10


def build_shard_set(folder: Path, counts: list[int], mp4: bytes | list[bytes],
                    corrupt: frozenset[int] = frozenset(), classes: int = 3) -> Manifest:
    """Shards with ``counts[i]`` samples; sample numbers in ``corrupt`` get garbage instead of video.
    ``mp4``: one video for every sample, or one per sample."""
    infos, n = [], 0
    for index, count in enumerate(counts):
        w = ShardWriter(folder, start_index=index)
        for _ in range(count):
            meta = SampleMeta(video=f"v{n}.mp4", video_id=video_id(f"v{n}.mp4"), chunk=0, start_s=0.0,
                              end_s=FRAMES / 25, frames=FRAMES, fps=25.0, width=SIDE, height=SIDE,
                              label=n % classes, label_name=f"c{n % classes}")
            video = mp4[n] if isinstance(mp4, list) else mp4
            w.write(sample_members(meta, b"\x00garbage" * 50 if n in corrupt else video))
            n += 1
        infos.append(w.close())
    manifest = Manifest(settings={}, shards=infos, classes=[f"c{i}" for i in range(classes)])
    manifest.save(folder)
    return manifest


@pytest.fixture(scope="module")
def counter_mp4(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "counter.mp4"
    return synth_video(path, Synth(seconds=FRAMES / 25, fps=25, width=SIDE, height=SIDE, pattern="counter",
                                   gop=8)).read_bytes()


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory, counter_mp4: bytes) -> Path:
    folder = tmp_path_factory.mktemp("set")
    build_shard_set(folder, COUNTS, counter_mp4)
    return folder


def _cfg(source: Path | str, **kw) -> LoaderConfig:
    base = dict(frames=4, stride=3, size=32, batch_size=3, workers=2, shuffle_buffer=4)
    return LoaderConfig(source=str(source), **{**base, **kw})


def _epoch(cfg: LoaderConfig, rank: int = 0, world: int = 1, epoch: int = 0) -> tuple[ClipLoader, list[dict]]:
    loader = ClipLoader(cfg, rank=rank, world_size=world)
    loader.set_epoch(epoch)
    return loader, list(loader)


def test_every_sample_once_per_epoch_across_2_ranks_x_2_workers(shard_set: Path) -> None:
    cfg = _cfg(shard_set, drop_last=False)
    seen: Counter = Counter()
    lengths = []
    for rank in range(2):
        loader, batches = _epoch(cfg, rank, 2, epoch=1)
        assert len(batches) == len(loader) == 4  # 11 clips per rank in batches of 3
        lengths.append(len(batches))
        for b in batches:
            assert b["video"].dtype == torch.uint8
            assert b["video"].shape[1:] == (3, 4, 32, 32)  # (B, C, T, H, W)
            seen.update(k for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v)
    expected = {video_id(f"v{n}.mp4") + "_00000" for n in range(sum(COUNTS))}
    assert set(seen) == expected and set(seen.values()) == {1}
    assert lengths[0] == lengths[1]


def test_equal_batch_counts_per_rank_with_uneven_shards(shard_set: Path) -> None:
    for world in (2, 3):
        cfg = _cfg(shard_set, batch_size=2, workers=1, drop_last=True)
        got = [len(_epoch(cfg, r, world)[1]) for r in range(world)]
        assert got == [len(ClipLoader(cfg, rank=0, world_size=world))] * world


def test_same_seed_same_order_other_epoch_other_order(shard_set: Path) -> None:
    cfg = _cfg(shard_set)

    def keys(c: LoaderConfig, epoch: int) -> list[str]:
        return [k for b in _epoch(c, epoch=epoch)[1] for k in b["key"]]

    a = keys(cfg, 0)
    assert a == keys(cfg, 0)
    assert a != keys(cfg, 1)
    assert a != keys(_cfg(shard_set, seed=7), 0)
    v1 = torch.cat([b["video"] for b in _epoch(cfg)[1]])
    v2 = torch.cat([b["video"] for b in _epoch(cfg)[1]])
    assert torch.equal(v1, v2)  # same crops and flips too


def test_corrupt_sample_is_skipped_counted_and_epoch_completes(tmp_path: Path, counter_mp4: bytes) -> None:
    build_shard_set(tmp_path, [4, 4], counter_mp4, corrupt=frozenset({2, 5}))
    loader, batches = _epoch(_cfg(tmp_path, drop_last=False))
    assert loader.stats.skipped == 2 and len(loader.stats.skipped_keys) == 2
    assert len(batches) == len(loader) == 3
    valid = [k for b in batches for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    assert len(valid) == 6 and len(set(valid)) == 6
    assert loader.stats.padded == 2


def test_clip_frames_in_time_order_at_the_stride(shard_set: Path) -> None:
    cfg = _cfg(shard_set, frames=5, stride=4, size=SIDE, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    _, batches = _epoch(cfg)
    starts = set()
    for b in batches:
        for clip in b["video"]:  # (C, T, H, W)
            nums = [read_counter(clip[0, t, SIDE // 2].tolist(), SIDE) for t in range(5)]
            assert [y - x for x, y in zip(nums, nums[1:], strict=False)] == [4] * 4
            starts.add(nums[0])
    assert len(starts) > 3  # random temporal offsets


def test_labels_and_classes(shard_set: Path) -> None:
    loader, batches = _epoch(_cfg(shard_set, train=False, drop_last=False))
    assert loader.num_classes == 3 and loader.classes == ["c0", "c1", "c2"]
    labels = torch.cat([b["label"] for b in batches])
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == sorted(n % 3 for n in range(21))


def test_eval_views_layout(shard_set: Path) -> None:
    cfg = _cfg(shard_set, train=False, temporal_views=2, spatial_views=3, drop_last=False, batch_size=4)
    loader, batches = _epoch(cfg)
    assert batches[0]["video"].shape == (4, 6, 3, 4, 32, 32)  # (B, V, C, T, H, W)
    assert sum(len(b["key"]) for b in batches) == 21 and len(batches) == len(loader)
    keys = [k for b in batches for k in b["key"]]
    assert keys == [k for b in _epoch(cfg, epoch=5)[1] for k in b["key"]]  # eval order does not shuffle


def test_clips_per_sample_emits_k_clips_per_decode(shard_set: Path) -> None:
    loader, batches = _epoch(_cfg(shard_set, clips_per_sample=3, drop_last=False))
    assert len(loader) == len(batches) == 21
    assert set(Counter(k for b in batches for k in b["key"]).values()) == {3}


def test_sources_folder_manifest_pattern_pipe(shard_set: Path) -> None:
    pattern = str(shard_set / "train-{000000..000004}.tar")
    for loc in (shard_set, shard_set / "manifest.json", pattern):
        src = resolve(loc)
        assert src.counts == COUNTS and len(src.urls) == 5
    pipe = f"pipe:cat {pattern}"
    src = resolve(pipe)
    assert src.manifest is None and src.counts is None
    assert src.urls[1] == f"pipe:cat {shard_set}/train-000001.tar"
    loader, batches = _epoch(_cfg(pipe, drop_last=False))
    with pytest.raises(TypeError, match="manifest"):
        len(loader)
    assert sorted(k for b in batches for k in b["key"]) == sorted(video_id(f"v{n}.mp4") + "_00000"
                                                                   for n in range(21))
    with pytest.raises(FileNotFoundError, match="not a shard set"):
        resolve(shard_set / "nope")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_http_prefix_streamed_and_cached(shard_set: Path, tmp_path: Path) -> None:
    handler = functools.partial(_QuietHandler, directory=str(shard_set))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert resolve(url).urls[0] == url + "/train-000000.tar"
        loader, batches = _epoch(_cfg(url, workers=1, drop_last=False))
        assert len(batches) == len(loader) == 7 and loader.stats.skipped == 0
        cache = tmp_path / "cache"
        cfg = _cfg(url + "/manifest.json", workers=1, drop_last=False, cache_dir=str(cache))
        loader, batches = _epoch(cfg)
        assert len(batches) == len(loader) == 7 and loader.stats.skipped == 0
        assert len(list(cache.rglob("*.tar"))) == len(COUNTS)  # every shard fetched once into the cache
    finally:
        server.shutdown()


def test_stock_webdataset_reads_our_shards(shard_set: Path) -> None:
    import json

    import webdataset as wds

    urls = resolve(shard_set).urls
    ds = wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(), wds.to_tuple("__key__", "mp4",
                                                                                          "json", "cls"))
    rows = list(ds)
    assert len(rows) == 21
    key, mp4, meta, cls = rows[0]
    assert mp4[4:8] == b"ftyp" and json.loads(meta)["frames"] == FRAMES
    assert int(cls) == json.loads(meta)["label"]


def test_hugging_face_datasets_reads_our_shards(shard_set: Path, tmp_path: Path) -> None:
    from datasets import Video, load_dataset

    urls = resolve(shard_set).urls
    ds = load_dataset("webdataset", data_files={"train": urls}, split="train", cache_dir=str(tmp_path))
    ds = ds.cast_column("mp4", Video(decode=False))
    assert len(ds) == 21 and {"__key__", "mp4", "json", "cls"} <= set(ds.column_names)
    row = ds[0]
    assert row["mp4"]["bytes"][4:8] == b"ftyp" and row["json"]["label"] == row["cls"]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="sampling"):
        LoaderConfig(source="x", sampling="sparse")
    with pytest.raises(ValueError, match="batch_size"):
        LoaderConfig(source="x", batch_size=0)


def test_bench_loader_rows_on_tiny_inputs(shard_set: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner
    from vidshard.cli import app

    raw = synth_video(tmp_path / "raw" / "cam.mp4", Synth(seconds=2, fps=25, width=96, height=72, gop=250))
    out = tmp_path / "bench.json"
    args = ["bench", "loader", str(shard_set), "--raw", str(raw.parent), "--frames", "4", "--size", "32",
            "--workers", "0", "--batch-size", "2", "--clips", "4", "--repeats", "1",
            "--clips-per-sample", "2", "--json", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    fig = json.loads(out.read_text())
    assert set(fig["rows"]) == {"raw videos (conventional)", "shard loader", "shard loader, 2 clips/sample",
                                "decode-only limit"}
    assert all(r["clips_per_s"] > 0 for r in fig["rows"].values())
    assert fig["speedup_vs_raw"] > 0 and "cpu" in fig["machine"]



def test_bench_loader_over_http_reads_a_verified_cache(shard_set: Path, tmp_path: Path) -> None:
    import threading

    from typer.testing import CliRunner
    from vidshard.cli import app
    from vidshard.shards.schema import Manifest
    from vidshard.shards.serve import ServeConfig, make_shard_server, url_of

    raw = synth_video(tmp_path / "raw" / "cam.mp4", Synth(seconds=2, fps=25, width=96, height=72, gop=250))
    srv = make_shard_server(ServeConfig(shardset=shard_set, port=0))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache"
        args = ["bench", "loader", url_of(srv), "--raw", str(raw.parent), "--frames", "4", "--size", "32",
                "--workers", "0", "--batch-size", "2", "--clips", "4", "--repeats", "1",
                "--clips-per-sample", "1", "--cache-dir", str(cache)]
        res = CliRunner().invoke(app, args)
    finally:
        srv.shutdown()
    assert res.exit_code == 0, res.output
    cached = sorted(p.stem for p in cache.rglob("*.tar"))
    assert cached == sorted(s.sha256 for s in Manifest.load(shard_set).shards)

def test_raw_baseline_clip_is_the_asked_frames(tmp_path: Path) -> None:
    import random

    from vidshard.benchmarks.loader import raw_clip
    from vidshard.shards.sampling import ClipSpec

    synth = Synth(seconds=4, fps=25, width=SIDE, height=SIDE, pattern="counter", gop=250)
    path = synth_video(tmp_path / "c.mp4", synth)
    spec = ClipSpec(frames=5, stride=3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    clip = raw_clip(path, spec, SIDE, random.Random(0))  # (C, T, H, W)
    nums = [read_counter(clip[0, t, SIDE // 2].tolist(), SIDE) for t in range(5)]
    assert clip.shape == (3, 5, SIDE, SIDE)
    assert [b - a for a, b in zip(nums, nums[1:], strict=False)] == [3] * 4


def test_reused_worker_buffers_never_overwrite_a_delivered_batch(tmp_path: Path) -> None:
    # Samples of different lengths, so each centre clip shows other frame numbers. Batches of 1 from 2
    # workers cycle each worker's shared slots several times; every batch kept must still hold what an
    # in-process (workers=0) evaluation pass decodes for the same key.
    specs = [Synth(seconds=(20 + 8 * n) / 25, fps=25, width=SIDE, height=SIDE, pattern="counter", gop=8)
             for n in range(12)]
    mp4s = [synth_video(tmp_path / f"c{n}.mp4", spec).read_bytes() for n, spec in enumerate(specs)]
    build_shard_set(tmp_path / "set", [6, 6], mp4s)

    def clips(workers: int) -> dict[str, torch.Tensor]:
        cfg = _cfg(tmp_path / "set", train=False, batch_size=1, workers=workers, drop_last=False, size=SIDE)
        return {b["key"][0]: b["video"][0] for b in _epoch(cfg)[1]}

    shared, local = clips(2), clips(0)
    assert set(shared) == set(local) and len(shared) == 12
    assert len({read_counter(v[0, 0, 0, SIDE // 2].tolist(), SIDE) for v in local.values()}) == 12
    assert all(torch.equal(shared[k], local[k]) for k in local)


@pytest.mark.parametrize("sizes,quota,drop_last,expect", [
    ([3, 3, 1, 2], 9, False, [4, 4, 1]),   # pieces merged into full batches
    ([3, 1], 9, False, [4, 4, 1]),         # shortfall filled with invalid repeats
    ([4, 4, 4], 9, True, [4, 4]),          # excess dropped, last partial dropped
    ([2, 2], None, False, [4]),            # unknown quota: everything, nothing added
])
def test_rebatch_yields_exactly_the_quota(sizes: list[int], quota: int | None, drop_last: bool,
                                          expect: list[int]) -> None:
    from vidshard.shards.batches import LoaderStats, rebatch

    def piece(n: int, start: int) -> dict:
        return {"video": torch.arange(start, start + n).view(n, 1),  # (B, 1)
                "label": torch.zeros(n, dtype=torch.int64), "key": [f"k{start + i}" for i in range(n)],
                "valid": torch.ones(n, dtype=torch.bool), "skipped": [("bad", "reason")] if n == 1 else []}

    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    stats = LoaderStats()
    pieces = [piece(n, s) for n, s in zip(sizes, starts, strict=True)]
    out = list(rebatch(iter(pieces), 4, quota, drop_last, stats))
    assert [len(b["key"]) for b in out] == expect
    valid = torch.cat([b["valid"] for b in out])
    assert int(valid.sum()) == min(sum(sizes), sum(expect)) and stats.padded == sum(expect) - int(valid.sum())
    assert stats.skipped == sizes.count(1)
    keys = [k for b in out for k, v in zip(b["key"], b["valid"].tolist(), strict=True) if v]
    assert len(keys) == len(set(keys))
