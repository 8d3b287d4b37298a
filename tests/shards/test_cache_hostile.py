"""HTTP sources that misbehave on purpose: oversize bodies, drip feeds, hung servers, leftover .part files.

Every server here is a real one on 127.0.0.1, started by the test; each hostile behaviour is bounded
(it stops when the test ends, and after a fixed number of bytes or seconds), and each test has a
pytest timeout far above the time the fixed code needs, so a hang fails instead of blocking the run.
"""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from vidshard.shards import cache
from vidshard.shards.cache import FetchError, RetryPolicy, cache_path, fetch_bytes, fetch_shard
from vidshard.shards.schema import Manifest

OVERSIZE = 50 << 20  # what a hostile server appends to a ~12 KB shard


class _Hostile(http.server.BaseHTTPRequestHandler):
    """Serves the files of ``server.folder``; ``server.modes[name]`` picks a misbehaviour for one file."""

    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.lstrip("/")
        self.server.requests.append((name, self.headers.get("Range")))
        path = self.server.folder / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        mode = self.server.modes.get(name, "ok")
        getattr(self, f"_{mode}")(data)

    def _ok(self, data: bytes) -> None:
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def _body(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                if self.server.stop.is_set():
                    return
                self.wfile.write(chunk)
                self.wfile.flush()
                self.server.sent += len(chunk)
        except OSError:  # the client hung up: what a well-behaved client does here
            pass

    def _oversize(self, data: bytes, length: bool = True) -> None:
        self.send_response(200)
        if length:  # an honest header for a dishonest body
            self.send_header("Content-Length", str(len(data) + OVERSIZE))
        self.end_headers()
        self._body(iter([data, *([bytes(1 << 20)] * (OVERSIZE >> 20))]))

    def _oversize_nolength(self, data: bytes) -> None:
        self._oversize(data, length=False)  # HTTP/1.0: the body ends when the server closes

    def _drip(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # One byte every 0.2 s: each read gets data long before a socket timeout, for at most 60 s.
        self._body(data[i:i + 1] for i in range(300) if not self.server.stop.wait(0.2))

    def _hang_body(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        self.server.stop.wait(60)

    def _hang_silent(self, data: bytes) -> None:
        self.server.stop.wait(60)  # accepted and read the request; never answers


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Hostile)
        self.folder, self.modes, self.requests, self.sent = folder, {}, [], 0
        self.stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/"


@pytest.fixture
def hostile(shardset: Path) -> Iterator[_Server]:
    srv = _Server(shardset)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


@pytest.fixture
def part_sizes(monkeypatch) -> list[int]:
    """Sizes of the ``.part`` files the cache deletes (what it had written before rejecting them)."""
    sizes: list[int] = []
    unlink = Path.unlink

    def recording_unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".part") and self.exists():
            sizes.append(self.stat().st_size)
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", recording_unlink)
    return sizes


ONCE = RetryPolicy(attempts=1, backoff_s=0.0, timeout_s=1.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["oversize", "oversize_nolength"])
def test_oversize_body_is_cut_at_the_manifest_size(hostile, shardset, tmp_path, part_sizes, mode):
    info = Manifest.load(shardset).shards[0]
    hostile.modes[info.name] = mode
    with pytest.raises(FetchError, match=rf"more than the manifest's {info.bytes} bytes"):
        fetch_shard(hostile.url + info.name, info, tmp_path / "cache", policy=ONCE)
    assert all(size <= info.bytes + 1 for size in part_sizes), part_sizes  # nothing beyond size + 1 written
    assert not list((tmp_path / "cache").rglob("*.part"))


@pytest.mark.timeout(20)  # today's cache reads a 1 byte / 0.2 s drip for a minute per attempt
def test_drip_feed_fails_by_its_deadline(hostile, shardset, tmp_path):
    info = Manifest.load(shardset).shards[0]
    hostile.modes[info.name] = "drip"
    policy = RetryPolicy(attempts=2, backoff_s=0.0, timeout_s=1.0)
    with pytest.raises(FetchError, match="deadline"):
        fetch_shard(hostile.url + info.name, info, tmp_path / "cache", policy=policy)
    assert [n for n, _ in hostile.requests] == [info.name] * 2


def test_deadline_grows_with_the_size():
    policy = RetryPolicy(timeout_s=10.0, min_rate=1 << 20)
    assert policy.deadline(0) == 10.0 and policy.deadline(100 << 20) == pytest.approx(110.0)
    with pytest.raises(ValueError, match="min_rate"):
        RetryPolicy(min_rate=0)


@pytest.mark.timeout(20)
def test_manifest_fetch_has_a_deadline_and_a_size_cap(hostile, shardset):
    hostile.modes["manifest.json"] = "drip"
    with pytest.raises(FetchError, match="deadline"):
        fetch_bytes(hostile.url + "manifest.json", policy=ONCE)
    hostile.modes["manifest.json"] = "oversize"
    with pytest.raises(FetchError, match="more than"):
        fetch_bytes(hostile.url + "manifest.json", policy=ONCE, max_bytes=1 << 20)


def test_complete_part_left_by_a_kill_is_checked_not_refetched(hostile, shardset, tmp_path):
    info = Manifest.load(shardset).shards[0]
    final = cache_path(info, tmp_path / "cache")
    part = final.with_name(f".{final.name}.part")
    part.parent.mkdir(parents=True)
    shutil.copy(shardset / info.name, part)  # killed after the last byte, before the rename
    got = fetch_shard(hostile.url + info.name, info, tmp_path / "cache", policy=ONCE)
    assert got == final and got.read_bytes() == (shardset / info.name).read_bytes()
    assert hostile.requests == []  # its sha256 matched: no request, so no HTTP 416
    assert not part.exists()


@pytest.mark.parametrize("damage", ["flipped", "longer"])
def test_bad_complete_part_is_downloaded_again_from_byte_0(hostile, shardset, tmp_path, damage):
    info = Manifest.load(shardset).shards[0]
    cache._checked.clear()
    final = cache_path(info, tmp_path / "cache")
    part = final.with_name(f".{final.name}.part")
    part.parent.mkdir(parents=True)
    data = bytearray((shardset / info.name).read_bytes())
    if damage == "flipped":
        data[700] ^= 0xFF  # full size, wrong hash
    else:
        data += b"x" * 100  # more than the shard can be
    part.write_bytes(bytes(data))
    got = fetch_shard(hostile.url + info.name, info, tmp_path / "cache", policy=ONCE)
    assert got.read_bytes() == (shardset / info.name).read_bytes()
    assert hostile.requests == [(info.name, None)]  # one fresh GET, no Range


@pytest.mark.timeout(90)  # today webdataset's curl waits on a hung server forever
@pytest.mark.parametrize("mode", ["hang_body", "hang_silent", "drip"])
def test_streaming_without_cache_times_out_on_a_hung_server(hostile, shardset, mode, monkeypatch):
    from vidshard.shards.loader import ClipLoader, LoaderConfig

    # two quick attempts at opening (the default five with backoff only make the test slower)
    monkeypatch.setattr(cache, "DEFAULT_POLICY", RetryPolicy(attempts=2, backoff_s=0.0))
    m = Manifest.load(shardset)
    stuck = m.shards[0]
    hostile.modes[stuck.name] = mode
    cfg = LoaderConfig(source=hostile.url, frames=2, stride=1, size=16, batch_size=2, workers=0,
                       shuffle_buffer=0, train=False, drop_last=False, timeout_s=1.0)
    loader = ClipLoader(cfg)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert loader.stats.missing == stuck.samples  # the stuck shard's samples were never read
    reasons = " ".join(f"{k}: {r}" for k, r in loader.stats.skipped_keys)
    assert stuck.name in reasons and ("timed out" in reasons or "deadline" in reasons), reasons
