"""A local cache of shards fetched over HTTP, checked against the manifest.

Training on another machine reads ``http://host:port/`` (a shard set served by
``vidshard serve``). With a cache directory, each shard is downloaded once into
a temporary file, its size and SHA-256 are checked against the manifest's
:class:`~vidshard.shards.schema.ShardInfo`, and only then is it renamed into the
cache, so later epochs and runs read it from local disk and never train on a
truncated or corrupt download.

Cache layout: ``CACHE_DIR/sha256/AB/ABCDEF....tar`` (the file's own SHA-256),
so two shard sets whose shards share names never collide, and a shard that two
sets share is stored once. A dropped connection resumes with a Range request
(a fresh GET when the server ignores it); a download whose size or hash is
wrong is thrown away and fetched again; after the last attempt
:class:`FetchError` names the URL and what went wrong.

The server is untrusted: no more than the manifest's byte count is ever read
(a longer body is an error, not a bigger file), and every transfer has a
deadline that grows with its size (:meth:`RetryPolicy.deadline`), so neither a
hung server nor a 1 byte/s drip can hold a download forever. A complete
``.part`` left by a kill is hashed and used, never re-requested with a Range
past its end. :func:`open_http` gives the loader the same guarantees when it
streams shards without a cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import io
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .schema import ShardInfo, fsync_dir

log = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK = 1 << 20  # bytes per read while downloading and hashing
MAX_SMALL_FILE = 64 << 20  # manifest.json, failures.jsonl: a 100,000-shard manifest is ~15 MB

# Errors worth another attempt: the network, not the request, went wrong.
_TRANSIENT = (ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError, OSError)


class FetchError(RuntimeError):
    """A shard or manifest could not be fetched intact after every attempt."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard to try before giving up on a URL."""

    attempts: int = 5
    """Total attempts per URL (dropped connections and corrupt downloads both count)."""
    backoff_s: float = 0.5
    """Wait before the second attempt; doubles after each further failure."""
    max_backoff_s: float = 10.0
    """Upper bound on one wait."""
    timeout_s: float = 60.0
    """Socket timeout for connecting and for each read; also the grace before ``min_rate`` applies."""
    min_rate: float = 256 * 1024
    """Slowest accepted average transfer rate, bytes/s: a transfer that has not reached
    ``(elapsed - timeout_s) * min_rate`` bytes fails, so a download of N bytes ends by
    :meth:`deadline` (N) (plus one socket timeout) whatever the server does."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff times must be >= 0")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.min_rate <= 0:
            raise ValueError(f"min_rate must be > 0 bytes/s, got {self.min_rate}")

    def deadline(self, size: int) -> float:
        """Seconds a transfer of ``size`` bytes may take: ``timeout_s + size / min_rate``."""
        return self.timeout_s + size / self.min_rate

    def wait(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


DEFAULT_POLICY = RetryPolicy()


def cache_path(info: ShardInfo, cache_dir: Path) -> Path:
    """Where the shard described by ``info`` lives in ``cache_dir`` (keyed by its SHA-256)."""
    sha = info.sha256.lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"shard {info.name}: manifest sha256 {info.sha256!r} is not 64 hex digits")
    return Path(cache_dir) / "sha256" / sha[:2] / f"{sha}.tar"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, info: ShardInfo) -> str | None:
    """``None`` when ``path`` has the size and SHA-256 ``info`` promises, else what is wrong."""
    size = path.stat().st_size
    return mismatch(size, file_sha256(path) if size == info.bytes else "", info)


def mismatch(size: int, digest: str, info: ShardInfo) -> str | None:
    """``None`` when ``size`` and ``digest`` are what ``info`` promises, else what is wrong."""
    if size != info.bytes:
        return f"{size} bytes, manifest says {info.bytes}"
    if digest != info.sha256.lower():
        return f"sha256 {digest[:12]}..., manifest says {info.sha256[:12]}..."
    return None


# Cached files already hashed by this process, keyed by (path, size, mtime, inode): a cache hit
# is hashed once per process (catching a file corrupted on disk between runs) and again only
# when the file changes, not on every epoch.
_checked: set[tuple[str, int, int, int]] = set()


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def fetch_shard(url: str, info: ShardInfo, cache_dir: Path, *, policy: RetryPolicy | None = None) -> Path:
    """Return a local, verified copy of the shard at ``url``, downloading it at most once.

    A cached copy is checked (size, and SHA-256 once per process); a corrupt one is
    deleted and fetched again. Raises :class:`FetchError` after ``policy.attempts``
    (default :data:`DEFAULT_POLICY`).
    """
    policy = policy or DEFAULT_POLICY
    final = cache_path(info, cache_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final):  # one download per shard even with many loader workers
        if final.exists():
            if _stat_key(final) in _checked:
                return final
            problem = check_file(final, info)
            if problem is None:
                _checked.add(_stat_key(final))
                return final
            log.warning("cached %s (%s) is corrupt (%s); fetching it again", final, info.name, problem)
            final.unlink()
        _download_verified(url, info, final, policy)
        _checked.add(_stat_key(final))
        return final


@contextlib.contextmanager
def _locked(final: Path) -> Iterator[None]:
    with open(final.with_name(f".{final.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download_verified(url: str, info: ShardInfo, final: Path, policy: RetryPolicy) -> None:
    tmp = final.with_name(f".{final.name}.part")
    if _complete_part(tmp, info):
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return
    problem = ""
    for attempt in range(1, policy.attempts + 1):
        try:
            size, digest = _download(url, tmp, info, policy)
            problem = mismatch(size, digest, info) or ""
            if not problem:
                os.replace(tmp, final)
                fsync_dir(final.parent)
                return
            tmp.unlink(missing_ok=True)  # corrupt: start over from byte 0, never train on it
            problem = f"corrupt download: {problem}"
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 416:  # 404 and friends will not heal by retrying
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}; is the shard set served there?") from e
            problem = f"HTTP {e.code} {e.reason}"  # 416: our partial file was dropped, start again
        except _TRANSIENT as e:
            problem = f"{type(e).__name__}: {e}"  # keep the partial file: the next attempt resumes it
        if attempt < policy.attempts:
            log.warning("%s: attempt %d/%d failed (%s); retrying", url, attempt, policy.attempts, problem)
            time.sleep(policy.wait(attempt))
    tmp.unlink(missing_ok=True)
    raise FetchError(f"{url} ({info.name}): gave up after {policy.attempts} attempts; last: {problem}")


def _complete_part(tmp: Path, info: ShardInfo) -> bool:
    """True when a ``.part`` left by a kill already is the whole, right shard (no request needed: a Range
    past its end would get HTTP 416). A full-size one with the wrong hash, or a longer one, is deleted."""
    if not tmp.exists() or tmp.stat().st_size < info.bytes:
        return False  # absent, or a prefix that the next request resumes
    problem = check_file(tmp, info)
    if problem is None:
        return True
    log.warning("%s: leftover partial download is unusable (%s); fetching it again", tmp, problem)
    tmp.unlink()
    return False


class TooLarge(FetchError):
    """The server sent (or announced) more bytes than the file may have."""


class _Clock:
    """The deadline of one transfer: after ``timeout_s`` of grace, ``min_rate`` bytes/s on average."""

    def __init__(self, what: str, policy: RetryPolicy, size: int | None) -> None:
        self.what, self.policy, self.size, self.start = what, policy, size, time.monotonic()

    def check(self, got: int) -> None:
        elapsed, p = time.monotonic() - self.start, self.policy
        if elapsed > p.timeout_s + got / p.min_rate:
            of = "" if self.size is None else f" of {self.size}"
            raise TimeoutError(f"{self.what}: missed its deadline: {got}{of} bytes after {elapsed:.1f} s "
                               f"(allowed: {p.timeout_s:g} s + 1 s per {p.min_rate:.0f} bytes); "
                               "is the server stalled?")


def _capped_blocks(resp: http.client.HTTPResponse, limit: int, clock: _Clock,
                   too_large: str) -> Iterator[bytes]:
    """The body of ``resp`` in blocks: ``limit`` bytes at most (reading stops at ``limit + 1``, which is
    :class:`TooLarge`), the deadline checked after every read (each read waits one socket timeout at most)."""
    announced = resp.length  # None when absent or invalid (http.client parses it)
    if announced is not None and announced > limit:
        raise TooLarge(f"{too_large} (Content-Length {announced})")
    got = 0
    while block := resp.read1(min(CHUNK, limit + 1 - got)):  # read1: what arrived; never waits for more
        got += len(block)
        if got > limit:
            raise TooLarge(too_large)
        clock.check(got)
        yield block
    if announced is not None and got < announced:  # read1 returns b"" on a dropped connection, no error
        raise ConnectionError(f"connection dropped after {got} of {announced} bytes")


def _download(url: str, tmp: Path, info: ShardInfo, policy: RetryPolicy) -> tuple[int, str]:
    """Fetch ``url`` into ``tmp``, resuming a partial ``tmp`` with a Range request.

    Returns the file's size and SHA-256, hashed while writing (one pass over the bytes). Never writes
    more than ``info.bytes``; a longer body deletes ``tmp`` and raises :class:`TooLarge`.
    """
    have = tmp.stat().st_size if tmp.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    clock = _Clock(url, policy, info.bytes - have)
    try:
        resp = urllib.request.urlopen(req, timeout=policy.timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # our partial file is no prefix of theirs: start again
            tmp.unlink(missing_ok=True)
        raise
    resumed = resp.status == 206
    start = have if resumed else 0
    sha = hashlib.sha256()
    if resumed:
        with open(tmp, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
    too_large = f"{url}: the server sent more than the manifest's {info.bytes} bytes for {info.name}"
    try:
        with resp, open(tmp, "ab" if resumed else "wb") as f:
            for block in _capped_blocks(resp, info.bytes - start, clock, too_large):
                f.write(block)
                sha.update(block)
                start += len(block)
            f.flush()
            os.fsync(f.fileno())
    except TooLarge:
        tmp.unlink(missing_ok=True)
        raise
    return start, sha.hexdigest()


def _retrying(url: str, policy: RetryPolicy, attempt: Callable[[], T]) -> T:
    """``attempt()`` until it succeeds: HTTP 4xx is final, network trouble and 5xx are retried."""
    problem = ""
    for n in range(1, policy.attempts + 1):
        try:
            return attempt()
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from e
            problem = f"HTTP {e.code} {e.reason}"
        except _TRANSIENT as e:
            problem = f"{type(e).__name__}: {e}"
        if n < policy.attempts:
            time.sleep(policy.wait(n))
    raise FetchError(f"{url}: gave up after {policy.attempts} attempts; last problem: {problem}")


def fetch_bytes(url: str, *, policy: RetryPolicy | None = None, max_bytes: int = MAX_SMALL_FILE) -> bytes:
    """GET a small file (``manifest.json``, ``failures.jsonl``) with the same retries and deadline;
    more than ``max_bytes`` is :class:`TooLarge`."""
    policy = policy or DEFAULT_POLICY

    def get() -> bytes:
        clock = _Clock(url, policy, None)
        with urllib.request.urlopen(url, timeout=policy.timeout_s) as resp:
            return b"".join(_capped_blocks(resp, max_bytes, clock, f"{url}: the server sent more than "
                                           f"{max_bytes} bytes, more than this file may have"))

    return _retrying(url, policy, get)


class _Body(io.RawIOBase):
    """A response body as a raw stream, read through :func:`_capped_blocks`."""

    def __init__(self, resp: http.client.HTTPResponse, blocks: Iterator[bytes]) -> None:
        self._resp, self._blocks, self._rest = resp, blocks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if not self._rest:
            self._rest = memoryview(next(self._blocks, b""))
        n = min(len(buf), len(self._rest))
        buf[:n], self._rest = self._rest[:n], self._rest[n:]
        return n

    def close(self) -> None:
        self._resp.close()
        super().close()


def open_http(url: str, size: int | None, *, policy: RetryPolicy | None = None) -> BinaryIO:
    """Stream ``url`` without a cache: at most ``size`` bytes (the manifest's; ``None`` when unknown), a
    socket timeout on every read and the deadline of :meth:`RetryPolicy.deadline` for the whole body.
    Opening is retried like a download; the body is read once."""
    policy = policy or DEFAULT_POLICY
    clock = _Clock(url, policy, size)
    resp = _retrying(url, policy, lambda: urllib.request.urlopen(url, timeout=policy.timeout_s))
    limit = sys.maxsize if size is None else size
    blocks = _capped_blocks(resp, limit, clock, f"{url}: the server sent more than the manifest's {size} "
                            "bytes")
    return io.BufferedReader(_Body(resp, blocks), CHUNK)
