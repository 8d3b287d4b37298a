import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vidshard.shards.cache import FetchError, RetryPolicy, cache_path, fetch_bytes, fetch_shard
from vidshard.shards.schema import Manifest
from werkzeug.serving import make_server
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

FAST = RetryPolicy(attempts=3, backoff_s=0.0, timeout_s=10)


class FlakyApp:
    """Serves files of a folder; the n-th request follows ``plan[n]``: ok, drop (half the body,
    then the connection dies) or corrupt (right length, one byte flipped). Records Range headers."""

    def __init__(self, folder: Path, plan: list[str]) -> None:
        self.folder, self.plan, self.ranges = folder, list(plan), []

    def __call__(self, environ, start_response):
        req = Request(environ)
        self.ranges.append(req.headers.get("Range"))
        action = self.plan.pop(0) if self.plan else "ok"
        path = self.folder / req.path.lstrip("/")
        if not path.is_file():
            return Response("no", 404)(environ, start_response)
        data = path.read_bytes()
        if action == "drop":
            def body():
                yield data[: len(data) // 2]
                raise ConnectionResetError("server went away")
            resp = Response(body(), headers={"Content-Length": str(len(data))})
        elif action == "corrupt":
            resp = Response(data[:50] + bytes([data[50] ^ 0xFF]) + data[51:])
        else:
            resp = send_file(path, environ, conditional=True)
        return resp(environ, start_response)


@pytest.fixture
def flaky(shardset) -> Iterator[tuple[FlakyApp, str]]:
    app = FlakyApp(shardset, [])
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{srv.server_port}/"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def test_downloads_once_and_reuses_the_cache(flaky, shardset, tmp_path):
    app, url = flaky
    info = Manifest.load(shardset).shards[0]
    cache = tmp_path / "cache"
    first = fetch_shard(url + info.name, info, cache, policy=FAST)
    assert first == cache_path(info, cache) and first.read_bytes() == (shardset / info.name).read_bytes()
    assert fetch_shard(url + info.name, info, cache, policy=FAST) == first
    assert len(app.ranges) == 1  # the second call never touched the network
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".part")]


def test_dropped_connection_is_retried_and_resumed(flaky, shardset, tmp_path):
    app, url = flaky
    app.plan = ["drop"]
    info = Manifest.load(shardset).shards[1]
    got = fetch_shard(url + info.name, info, tmp_path / "cache", policy=FAST)
    assert got.read_bytes() == (shardset / info.name).read_bytes()
    assert app.ranges[0] is None and app.ranges[1].startswith("bytes=")  # resumed, not restarted


def test_corrupt_download_is_fetched_again_not_kept(flaky, shardset, tmp_path):
    app, url = flaky
    app.plan = ["corrupt"]
    info = Manifest.load(shardset).shards[0]
    got = fetch_shard(url + info.name, info, tmp_path / "cache", policy=FAST)
    assert got.read_bytes() == (shardset / info.name).read_bytes()
    assert len(app.ranges) == 2 and app.ranges[1] is None  # a fresh GET from byte 0


def test_gives_up_with_a_clear_error_and_leaves_no_file(flaky, shardset, tmp_path):
    app, url = flaky
    app.plan = ["corrupt"] * 3
    info = Manifest.load(shardset).shards[0]
    with pytest.raises(FetchError, match=r"gave up after 3 attempts.*sha256"):
        fetch_shard(url + info.name, info, tmp_path / "cache", policy=FAST)
    assert not [p for p in (tmp_path / "cache").rglob("*.tar*") if p.suffix != ".lock"]
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_shard(url + "train-000999.tar", info, tmp_path / "cache", policy=FAST)


def test_corrupt_cached_file_is_replaced(flaky, shardset, tmp_path):
    app, url = flaky
    info = Manifest.load(shardset).shards[0]
    cached = fetch_shard(url + info.name, info, tmp_path / "cache", policy=FAST)
    data = bytearray(cached.read_bytes())
    data[600] ^= 0xFF  # same size, one flipped byte: only the hash can tell
    cached.write_bytes(bytes(data))
    again = fetch_shard(url + info.name, info, tmp_path / "cache", policy=FAST)
    assert again.read_bytes() == (shardset / info.name).read_bytes()
    assert len(app.ranges) == 2


def test_same_names_in_two_sets_do_not_collide(shardset, tmp_path, clips, build_shardset):
    other = build_shardset(tmp_path / "other", clips[::-1])
    mine = Manifest.load(shardset)
    assert other.shards[0].name == mine.shards[0].name and other.shards[0].sha256 != mine.shards[0].sha256
    assert cache_path(other.shards[0], tmp_path) != cache_path(mine.shards[0], tmp_path)


def test_unreachable_server_is_retried_then_named(tmp_path):
    policy = RetryPolicy(attempts=2, backoff_s=0.0, timeout_s=2)
    with pytest.raises(FetchError, match="127.0.0.1:9/manifest.json.*2 attempts"):
        fetch_bytes("http://127.0.0.1:9/manifest.json", policy=policy)


def test_policy_validation():
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    assert [RetryPolicy(backoff_s=1, max_backoff_s=3).wait(a) for a in (1, 2, 3)] == [1, 2, 3]


def test_concurrent_fetches_download_once(flaky, shardset, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    app, url = flaky
    info = Manifest.load(shardset).shards[0]
    with ThreadPoolExecutor(4) as pool:  # like four loader workers opening the same shard
        fetch = lambda _: fetch_shard(url + info.name, info, tmp_path / "c", policy=FAST)  # noqa: E731
        paths = list(pool.map(fetch, range(4)))
    assert len(set(paths)) == 1 and len(app.ranges) == 1
