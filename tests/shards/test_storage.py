"""Object storage against a real S3 API: moto's standalone server on 127.0.0.1, s3fs pointed at it
through ``AWS_ENDPOINT_URL``, dummy credentials from the environment (as a user's would be)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import fsspec
import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner
from vidshard.cli import app
from vidshard.shards.cache import FetchError, RetryPolicy, cache_path, fetch_shard, use_shard
from vidshard.shards.copy import CopyConfig, copy_set
from vidshard.shards.location import resolve
from vidshard.shards.remote import MissingBackend
from vidshard.shards.schema import Manifest
from vidshard.shards.verify import VerifyConfig, verify
from vidshard.train.config import EvalConfig, TrainConfig
from vidshard.train.evaluate import evaluate
from vidshard.train.loop import train
from vidshard.train.metrics import read_metrics

runner = CliRunner()
BUCKET = "vidshard-test"
# Tiny clips, one thread: these runs share the cores with the rest of the suite.
TINY = dict(model="vit-t", frames=4, stride=2, size=32, crop_scale=(0.5, 1.0), batch_size=2, threads=1,
            log_every=1, progress=False)


@pytest.fixture(scope="module")
def s3():
    """``s3://vidshard-test``: a bucket on a moto server started here, stopped after the module."""
    with pytest.MonkeyPatch.context() as env:
        for k, v in dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                         AWS_DEFAULT_REGION="us-east-1").items():
            env.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(k, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
            fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
            yield f"s3://{BUCKET}"
        finally:
            server.stop()


@pytest.fixture(scope="module")
def s3_set(s3, tmp_path_factory, clips, build_shardset) -> tuple[str, Manifest]:
    """The six test clips, one shard each, copied up with ``vidshard copy``."""
    folder = tmp_path_factory.mktemp("up") / "set"
    manifest = build_shardset(folder, clips, max_bytes=1)
    result = copy_set(CopyConfig(source=str(folder), dest=f"{s3}/set", progress=False))
    assert result.ok and len(result.copied) == 6
    return f"{s3}/set/", manifest


def test_copy_up_then_verify_inspect_train_and_eval_from_s3(s3_set, tmp_path):
    url, manifest = s3_set
    res = runner.invoke(app, ["verify", url, "--quiet"])
    assert res.exit_code == 0 and "OK: 6 shards, 6 samples" in res.output, res.output
    res = runner.invoke(app, ["inspect", url, "--quiet"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "64x48" in res.output, res.output
    result = train(TrainConfig(data=url, out=str(tmp_path / "run"), steps=3, workers=1,
                               cache_dir=str(tmp_path / "cache"), **TINY))
    assert result.steps == 3
    last = read_metrics(tmp_path / "run")[-1]
    assert last["cache_misses"] >= 3 and last["cache_bytes_downloaded"] > 0 and last["cache_evicted"] == 0
    cached = [cache_path(i, tmp_path / "cache") for i in manifest.shards]
    assert sum(p.exists() for p in cached) == last["cache_misses"]  # downloaded once, sha256-named
    result = evaluate(EvalConfig(data=url, checkpoint=str(tmp_path / "run"), temporal_views=1,
                                 spatial_views=1, workers=0, threads=1, cache_dir=str(tmp_path / "cache"),
                                 cache_limit="1G", progress=False))
    assert result["samples"] == 6 and result["cache"]["hits"] == last["cache_misses"]  # what training fetched
    assert result["cache"]["hits"] + result["cache"]["misses"] == 6


def test_copy_down_is_verified_and_complete(s3_set, tmp_path):
    url, manifest = s3_set
    res = runner.invoke(app, ["copy", url, str(tmp_path / "down"), "--quiet"])
    assert res.exit_code == 0 and "6 shards copied" in res.output, res.output
    assert Manifest.load(tmp_path / "down").shards == manifest.shards
    assert verify(VerifyConfig(location=str(tmp_path / "down"), progress=False)).ok


def test_a_corrupt_object_is_caught_by_the_cache_and_by_verify(s3, s3_set, tmp_path):
    url, manifest = s3_set
    copy_set(CopyConfig(source=url, dest=f"{s3}/corrupt", progress=False))
    info = manifest.shards[1]
    fs = fsspec.filesystem("s3")
    data = bytearray(fs.cat_file(f"{BUCKET}/corrupt/{info.name}"))
    data[700] ^= 0xFF  # same size: only the sha256 can tell
    fs.pipe_file(f"{BUCKET}/corrupt/{info.name}", bytes(data))
    with pytest.raises(FetchError, match=rf"{info.name}.*sha256"):
        fetch_shard(f"{s3}/corrupt/{info.name}", info, tmp_path / "cache",
                    policy=RetryPolicy(attempts=2, backoff_s=0))
    assert not cache_path(info, tmp_path / "cache").exists()  # never cached, never trained on
    res = runner.invoke(app, ["verify", f"{s3}/corrupt/", "--quiet"])
    assert res.exit_code == 1 and f"corrupt: {info.name}" in res.output
    res = runner.invoke(app, ["verify", f"{s3}/nothing-here/", "--quiet"])
    assert res.exit_code == 2 and "manifest.json" in res.output


def test_a_missing_backend_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed (import fails)
    with pytest.raises(MissingBackend, match=r"vidshard\[gcs\]"):
        resolve("gs://bucket/set/")
    res = runner.invoke(app, ["verify", "gs://bucket/set/", "--quiet"])
    assert res.exit_code == 2 and "pip install 'vidshard[gcs]'" in res.output
    res = runner.invoke(app, ["train", "gs://bucket/set/", "--quiet"])
    assert res.exit_code == 2 and "vidshard[gcs]" in res.output


def _disk_use(cache: Path) -> int:
    """Bytes the cache really holds on disk: shards and partial downloads."""
    total = 0
    for p in (cache / "sha256").glob("*/*"):
        if p.name.endswith((".tar", ".part")):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
    return total


def _train_process(cfg: TrainConfig) -> None:
    train(cfg)


@pytest.mark.slow  # two training processes, two epochs each: about 40 s on a busy 2-core machine
def test_two_trainers_share_a_cache_smaller_than_an_epoch(s3_set, tmp_path):
    url, manifest = s3_set
    cache = tmp_path / "cache"
    # Readers at once: one loader worker per trainer, plus this test holding a shard, plus a download.
    limit = 4 * max(s.bytes for s in manifest.shards)
    assert sum(s.bytes for s in manifest.shards) > limit  # the cache cannot hold one epoch
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _disk_use(cache))
            time.sleep(0.002)

    ctx = multiprocessing.get_context("fork")  # fast: torch is already imported
    runs = [ctx.Process(target=_train_process, args=(TrainConfig(
        data=url, out=str(tmp_path / f"run{i}"), steps=6, workers=1, seed=i, cache_dir=str(cache),
        cache_limit=str(limit), **TINY),)) for i in range(2)]
    watcher = threading.Thread(target=watch, daemon=True)
    info = manifest.shards[0]
    with use_shard(f"{url}{info.name}", info, cache, limit=limit) as held:  # a third reader
        inode = held.stat().st_ino
        watcher.start()
        for p in runs:
            p.start()
        for p in runs:
            p.join(timeout=300)
        stop.set()
        watcher.join()
        assert held.exists() and held.stat().st_ino == inode  # in use the whole time: never evicted
    assert [p.exitcode for p in runs] == [0, 0]
    last = [read_metrics(tmp_path / f"run{i}")[-1] for i in range(2)]
    counts = [{k: v for k, v in m.items() if k.startswith("cache")} for m in last]
    print("cache metrics of the two runs:", counts, f"peak {peak[0]} of limit {limit}")  # shown with -s
    assert [m["step"] for m in last] == [6, 6]  # two epochs each
    assert sum(m["cache_evicted"] for m in last) > 0
    assert sum(m["cache_misses"] for m in last) > len(manifest.shards)  # evicted shards came back
    assert 0 < peak[0] <= limit, (peak[0], limit)
    assert not list(cache.glob("sha256/*/.*.need"))  # reservations end with their downloads
    assert os.path.getsize(held) == info.bytes
