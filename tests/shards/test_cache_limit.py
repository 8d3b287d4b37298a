"""The capped shard cache: LRU eviction, pins that hold across processes, reservations, counters.

Shards come from fsspec's in-memory object store (``memory://``, a real fsspec backend), so these
tests exercise the same download path as s3:// without a server; the S3 tests are in test_storage.py.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fsspec
import pytest
from vidshard.shards import cache_limit
from vidshard.shards.cache import cache_path, fetch_shard, use_shard
from vidshard.shards.cache_limit import CacheCounters, make_room, parse_size, pinned, reserve, usage
from vidshard.shards.schema import ShardInfo

SIZE = 10_000


@pytest.fixture
def store(request):
    """Five 10 kB objects in memory://; returns [(url, info)]."""
    fs = fsspec.filesystem("memory")
    prefix = f"/cachetest-{request.node.name}"
    shards = []
    for i in range(5):
        data = bytes([i]) * SIZE
        name = f"train-{i:06d}.tar"
        fs.pipe_file(f"{prefix}/{name}", data)
        shards.append((f"memory://{prefix}/{name}",
                       ShardInfo(name=name, samples=1, bytes=SIZE, sha256=hashlib.sha256(data).hexdigest())))
    yield shards
    fs.rm(prefix, recursive=True)


def _cached(cache: Path, shards) -> list[int]:
    return [i for i, (_, info) in enumerate(shards) if cache_path(info, cache).exists()]


def test_parse_size():
    assert parse_size("20G") == 20 * 10**9 and parse_size("500M") == 500 * 10**6
    assert parse_size("512MiB") == 512 << 20 and parse_size("1.5k") == 1500 and parse_size(7) == 7
    with pytest.raises(ValueError, match="20G"):
        parse_size("lots")


def test_least_recently_used_goes_first_and_counters_add_up(store, tmp_path):
    cache, counters = tmp_path / "cache", CacheCounters()
    limit = int(2.5 * SIZE)
    for i in (0, 1):
        with use_shard(*store[i], cache, limit=limit, counters=counters):
            pass
        time.sleep(0.01)  # distinct access times
    with use_shard(*store[0], cache, limit=limit, counters=counters):  # 0 is now the more recent
        pass
    with use_shard(*store[2], cache, limit=limit, counters=counters):
        pass
    assert _cached(cache, store) == [0, 2]  # 1 was the least recently used
    assert usage(cache) <= limit
    assert counters.snapshot() == {"hits": 1, "misses": 3, "bytes_downloaded": 3 * SIZE, "evicted": 1,
                                   "evicted_bytes": SIZE}


def test_a_cache_smaller_than_the_set_downloads_again(store, tmp_path):
    cache, counters = tmp_path / "cache", CacheCounters()
    for _epoch in range(2):
        for url, info in store:
            path = fetch_shard(url, info, cache, limit=2 * SIZE, counters=counters)
            assert path.read_bytes() == bytes([int(info.name[-5])]) * SIZE
    snap = counters.snapshot()
    assert snap["misses"] == 10 and snap["hits"] == 0 and snap["evicted"] == 8
    assert usage(cache) <= 2 * SIZE


_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vidshard.shards.cache_limit import pinned
    with pinned(Path(sys.argv[1])):
        print("pinned", flush=True)
        sys.stdin.readline()  # hold until the test says so
""")


def test_a_shard_pinned_by_another_process_is_never_evicted(store, tmp_path):
    cache = tmp_path / "cache"
    for i in (0, 1):
        fetch_shard(*store[i], cache)
        time.sleep(0.01)
    oldest = cache_path(store[0][1], cache)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(oldest)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "pinned"
        fetch_shard(*store[2], cache, limit=2 * SIZE)  # room for one more: not the pinned, older one
        assert _cached(cache, store) == [0, 2]
        over = make_room(cache, SIZE, SIZE)  # only the pinned shard left to evict: over the limit
        assert _cached(cache, store) == [0] and over == SIZE
    finally:
        holder.communicate("\n", timeout=30)
    assert make_room(cache, SIZE, SIZE) == 0 and _cached(cache, store) == []  # released: evictable


def test_live_reservations_count_and_dead_ones_are_dropped(store, tmp_path):
    cache = tmp_path / "cache"
    fetch_shard(*store[0], cache)
    other = cache_path(store[1][1], cache)
    other.parent.mkdir(parents=True, exist_ok=True)
    with open(other.with_name(f".{other.name}.lock"), "a+b") as lock:  # a downloader of shard 1 ...
        fcntl.flock(lock, fcntl.LOCK_EX)
        with reserve(other, SIZE, cache, limit=3 * SIZE):  # ... has reserved its size
            assert usage(cache) == 2 * SIZE
            make_room(cache, 2 * SIZE, SIZE)  # the reservation leaves no room for shard 0
            assert _cached(cache, store) == []
        fcntl.flock(lock, fcntl.LOCK_UN)
    stale = other.with_name(f".{other.name}.need")
    stale.write_text(str(10 * SIZE))  # its downloader died: nobody holds the download lock
    assert usage(cache) == 0 and not stale.exists()


def test_a_reader_arriving_after_an_eviction_downloads_again(store, tmp_path):
    cache, counters = tmp_path / "cache", CacheCounters()
    with use_shard(*store[0], cache, counters=counters) as path:
        data = path.read_bytes()
    assert make_room(cache, SIZE, SIZE) == 0 and not path.exists()
    with use_shard(*store[0], cache, counters=counters) as again:
        assert again.read_bytes() == data
    assert counters.snapshot()["misses"] == 2


def test_pins_are_shared_between_readers(store, tmp_path):
    final = cache_path(store[0][1], tmp_path / "cache")
    with pinned(final), pinned(final):  # two readers at once: shared, no deadlock
        assert cache_limit._try_lock(final.with_name(f".{final.name}.pin.lock"), fcntl.LOCK_EX) is None


def test_cache_limit_is_an_option_of_train_eval_and_bench_loader():
    from typer.testing import CliRunner
    from vidshard.cli import app
    from vidshard.train.config import EvalConfig, TrainConfig

    runner = CliRunner()
    for command in (["train"], ["eval"], ["bench", "loader"]):
        text = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"}).output
        assert "--cache-limit" in text and "20G" in text, command
    bad = runner.invoke(app, ["train", "s3://b/set/", "--cache-limit", "lots"])
    assert bad.exit_code == 2 and "20G" in bad.output
    assert TrainConfig(data="x", cache_limit="500M").cache_limit == "500M"
    with pytest.raises(ValueError, match="more than 0"):
        EvalConfig(data="x", checkpoint="c", cache_limit="0")
