"""Sharing end to end (issue 5): serve a shard set from one process, train from another over loopback
with a cache, catch a corrupted shard, and merge a four-way ``--part`` run into the single run."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import select
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from vidshard.shards import cache
from vidshard.shards.loader import ClipLoader, LoaderConfig
from vidshard.shards.schema import Manifest
from vidshard.shards.verify import VerifyConfig, verify

CLI = [sys.executable, "-m", "vidshard.cli"]


def start_server(folder: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``vidshard serve FOLDER --port 0`` in its own process; returns it and its URL."""
    proc = subprocess.Popen([*CLI, "serve", str(folder), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            m = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline())
            if m:
                return proc, m[0]
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"vidshard serve did not start: {log.read_text()[-2000:]}")


@pytest.fixture
def served(tiny_shardset, tmp_path) -> Iterator[tuple[Path, str, Path]]:
    folder = Path(shutil.copytree(tiny_shardset, tmp_path / "served"))
    log = tmp_path / "serve.log"
    proc, url = start_server(folder, log)
    try:
        yield folder, url, log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def epoch_keys(url: str, cache_dir: Path, epoch: int = 0) -> tuple[list[str], ClipLoader]:
    cfg = LoaderConfig(source=url, cache_dir=str(cache_dir), frames=4, stride=1, size=32, batch_size=6,
                       workers=0, shuffle_buffer=0, drop_last=False)
    loader = ClipLoader(cfg, rank=0, world_size=1)
    loader.set_epoch(epoch)
    keys = []
    for batch in loader:
        assert batch["video"].shape[1:] == (3, 4, 32, 32)  # (B, C, T, H, W)
        keys += batch["key"]
    return keys, loader


def shard_gets(log: Path) -> list[str]:
    return re.findall(r'"GET /(\S+\.tar) HTTP', log.read_text())


def sample_keys(folder: Path, name: str) -> set[str]:
    with tarfile.open(folder / name) as tf:
        return {Path(m.name).name.partition(".")[0] for m in tf}


def test_train_over_loopback_downloads_each_shard_once(served, tmp_path):
    folder, url, log = served
    m = Manifest.load(folder)
    keys, _ = epoch_keys(url, tmp_path / "cache")
    assert sorted(keys) == sorted(k for s in m.shards for k in sample_keys(folder, s.name))
    keys2, _ = epoch_keys(url, tmp_path / "cache", epoch=1)  # a later epoch: all from the cache
    assert sorted(keys2) == sorted(keys)
    assert sorted(shard_gets(log)) == sorted(s.name for s in m.shards)
    cached = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "cache").rglob("*.tar")}
    assert cached == {s.sha256 for s in m.shards}


def test_corrupt_shard_is_caught_by_verify_and_never_trained_on(served, tmp_path, monkeypatch):
    folder, url, log = served
    m = Manifest.load(folder)
    bad = m.shards[1]
    bad_keys = sample_keys(folder, bad.name)
    data = bytearray((folder / bad.name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte: the size stays, only the hash tells
    (folder / bad.name).write_bytes(bytes(data))

    run = subprocess.run([*CLI, "verify", url, "--quiet"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and f"corrupt: {bad.name}" in run.stderr

    monkeypatch.setattr(cache, "DEFAULT_POLICY", cache.RetryPolicy(attempts=2, backoff_s=0.0))
    before = len(shard_gets(log))  # verify read each shard once
    keys, loader = epoch_keys(url, tmp_path / "cache")
    assert keys and not set(keys) & bad_keys
    assert loader.stats.skipped >= 1
    assert shard_gets(log)[before:].count(bad.name) == 2  # fetched again after the first corrupt download
    for p in (tmp_path / "cache").rglob("*.tar"):  # nothing corrupt was kept
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.stem


def test_vidshard_train_over_loopback_reuses_the_cache_in_a_later_run(served, tmp_path):
    folder, url, log = served
    m = Manifest.load(folder)
    cmd = [*CLI, "train", url, "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--batch-size", "6",
           "--frames", "4", "--stride", "1", "--size", "32", "--workers", "0", "--device", "cpu", "--quiet"]
    for run_no in (1, 2):
        proc = subprocess.run([*cmd, "--out", str(tmp_path / f"run{run_no}")], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "3 steps" in proc.stdout  # 18 samples at batch 6
        assert sorted(shard_gets(log)) == sorted(s.name for s in m.shards)  # once, in the first run only


def test_served_process_refuses_paths_outside_the_set(served):
    folder, url, _ = served
    (folder.parent / "secret.txt").write_text("secret")
    port = int(url.rsplit(":", 1)[1].strip("/"))
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/%2e%2e%2fsecret.txt", "/../../../../etc/passwd",
                 str(folder.parent / "secret.txt")):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 404 and b"secret" not in resp.read()
        conn.close()


def test_four_part_runs_merged_hold_exactly_the_single_run(tiny_shardset, tmp_path):
    from vidshard.preprocess.config import PreprocessConfig
    from vidshard.preprocess.run import preprocess

    single = Manifest.load(tiny_shardset)
    parts = []
    # The same options as the tiny_shardset fixture, split four ways. Same workers too: x264 threads
    # follow cores / workers, and its bitstream depends on the thread count.
    for i in range(1, 5):
        cfg = PreprocessConfig(input=tiny_shardset.parent / "videos", output=tmp_path / f"OUT_{i}",
                               labels_from_dirs=True, chunk_seconds=1.0, min_chunk_seconds=0.5,
                               short_side=64, gop=5, shard_size=1 << 16, workers=2, quiet=True, part=(i, 4))
        preprocess(cfg, console=Console(quiet=True))
        parts.append(tmp_path / f"OUT_{i}")
    run = subprocess.run([*CLI, "merge", *map(str, parts), str(tmp_path / "MERGED"), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    merged = Manifest.load(tmp_path / "MERGED")
    assert merged.classes == single.classes
    assert merged.totals["samples"] == single.totals["samples"] == merged.num_samples
    assert members(tmp_path / "MERGED") == members(tiny_shardset)  # same keys, metadata and clips
    assert verify(VerifyConfig(location=str(tmp_path / "MERGED"), progress=False)).ok


def members(folder: Path) -> dict[str, bytes]:
    """Every tar member of a set by name (KEY.ext) -> its bytes."""
    out: dict[str, bytes] = {}
    for s in Manifest.load(folder).shards:
        with tarfile.open(folder / s.name) as tf:
            for m in tf:
                assert m.name not in out, f"{m.name} twice"
                out[m.name] = tf.extractfile(m).read()
    return out
