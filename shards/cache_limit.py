"""A size limit on the shard cache: least-recently-used shards are evicted, never one being read.

Several processes (loader workers, trainers on one machine) share one cache folder, so every rule
here is enforced with file locks (``flock``) next to each cached shard, never with state in memory:

- ``.SHA.tar.pin.lock``: a reader holds a **shared** lock on it from before it looks the shard up until it
  has read the last byte (:func:`pinned`); an evictor takes it **exclusively without waiting** and
  skips the shard when that fails. So a shard in use is never evicted, and a reader that arrives
  after an eviction simply downloads the shard again.
- ``.SHA.tar.need``: while a shard downloads, a reservation of its size (:func:`reserve`), made under
  the cache-wide ``.evict.lock`` together with the evictions that make room for it. Cached shards
  plus live reservations stay under the limit, so concurrent downloads cannot overshoot it together.
  A reservation whose downloader died (its ``.SHA.tar.lock`` is free) is dropped.
- Recency: each use sets the shard's access time explicitly (:func:`touch`; mount options such as
  ``noatime`` do not matter), and the oldest goes first.

The limit can be exceeded only when the shards being read right now (one per loader worker) and the
one being downloaded do not fit together; then by at most those, and it is back under the limit as
soon as they are released. Lock files are empty and are kept (deleting a lock file another process
holds would break the mutual exclusion).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EVICT_LOCK = ".evict.lock"
_warned = False  # the over-limit warning is given once per process
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | int) -> int:
    """``"20G"`` / ``"20GB"`` -> 20 * 10**9, ``"512MiB"`` -> 2**29, ``"2000000"`` -> 2000000 bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"size {text!r}: expected bytes or a number with a unit, e.g. 20G, 500MB, 512MiB")
    unit = (m[2] or "").lower().removesuffix("b")
    return int(float(m[1]) * _UNITS[unit])


def default_cache_dir() -> Path:
    """Where object-storage shards are cached when no ``--cache-dir`` is given:
    ``$VIDSHARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/vidshard``, else ``~/.cache/vidshard``."""
    if os.environ.get("VIDSHARD_CACHE_DIR"):
        return Path(os.environ["VIDSHARD_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vidshard"


class CacheCounters:
    """Hits, misses, bytes downloaded and evictions, summed over every process that shares this object
    (made in the main process; DataLoader workers inherit it)."""

    FIELDS = ("hits", "misses", "bytes_downloaded", "evicted", "evicted_bytes")

    def __init__(self) -> None:
        self._values = multiprocessing.Array("q", len(self.FIELDS))  # with its own lock

    def add(self, **counts: int) -> None:
        with self._values.get_lock():
            for name, n in counts.items():
                self._values[self.FIELDS.index(name)] += n

    def snapshot(self) -> dict[str, int]:
        with self._values.get_lock():
            return dict(zip(self.FIELDS, self._values[:], strict=True))


def _lock_file(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}.{kind}")


@contextlib.contextmanager
def pinned(final: Path) -> Iterator[None]:
    """Hold a shared pin on the cached shard ``final`` (present or not yet): no evictor removes it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_file(final, "pin.lock"), "a+b") as pin:
        fcntl.flock(pin, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(pin, fcntl.LOCK_UN)


def touch(final: Path) -> None:
    """Mark ``final`` as just used (its access time; the modification time is left alone)."""
    with contextlib.suppress(FileNotFoundError):
        st = final.stat()
        os.utime(final, ns=(time.time_ns(), st.st_mtime_ns))


@dataclass(frozen=True)
class _Entry:
    path: Path
    bytes: int
    used_ns: int


def _try_lock(path: Path, mode: int) -> int | None:
    """An fd holding ``mode | LOCK_NB`` on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _scan(cache_dir: Path) -> tuple[list[_Entry], int]:
    """Cached shards (oldest use first) and the bytes reserved by live downloads; stale reservations
    (their downloader is gone) are removed on the way."""
    entries, reserved = [], 0
    for sub in (cache_dir / "sha256").glob("??"):
        for p in sub.iterdir():
            name = p.name
            try:
                if name.endswith(".tar") and not name.startswith("."):
                    st = p.stat()
                    entries.append(_Entry(p, st.st_size, st.st_atime_ns))
                elif name.endswith(".tar.need"):
                    reserved += _live_reservation(p)
            except (FileNotFoundError, ValueError):
                continue  # gone meanwhile, or a reservation being written
    entries.sort(key=lambda e: e.used_ns)
    return entries, reserved


def _live_reservation(need: Path) -> int:
    final = need.with_name(need.name[1:].removesuffix(".need"))
    fd = _try_lock(_lock_file(final, "lock"), fcntl.LOCK_EX)
    if fd is None:  # its downloader holds the download lock: the reservation is live
        return int(need.read_text() or 0)
    try:
        need.unlink(missing_ok=True)  # the downloader died: nothing is coming
    finally:
        os.close(fd)
    return 0


def usage(cache_dir: Path) -> int:
    """Bytes of cached shards plus live reservations."""
    entries, reserved = _scan(Path(cache_dir))
    return sum(e.bytes for e in entries) + reserved


def make_room(cache_dir: Path, limit: int, need: int, counters: CacheCounters | None = None) -> int:
    """Evict least-recently-used, unpinned shards until ``need`` more bytes fit under ``limit``.

    Call with the cache-wide evict lock held (:func:`reserve` does). Returns the bytes still over the
    limit (0 when it fits; more when the pinned shards alone fill it).
    """
    entries, reserved = _scan(cache_dir)
    over = sum(e.bytes for e in entries) + reserved + need - limit
    for e in entries:
        if over <= 0:
            break
        fd = _try_lock(_lock_file(e.path, "pin.lock"), fcntl.LOCK_EX)
        if fd is None:
            continue  # being read (or looked up) by some process: never evict it
        try:
            e.path.unlink(missing_ok=True)
        finally:
            os.close(fd)
        over -= e.bytes
        if counters is not None:
            counters.add(evicted=1, evicted_bytes=e.bytes)
        log.debug("evicted %s (%d bytes) from the cache", e.path.name, e.bytes)
    return max(0, over)


@contextlib.contextmanager
def reserve(final: Path, nbytes: int, cache_dir: Path, limit: int | None,
            counters: CacheCounters | None = None) -> Iterator[None]:
    """Make room for and reserve ``nbytes`` for the download of ``final`` (whose download lock the
    caller holds); the reservation ends with the block. A no-op without ``limit``."""
    if limit is None:
        yield
        return
    need = _lock_file(final, "need")
    with open(Path(cache_dir) / EVICT_LOCK, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            over = make_room(Path(cache_dir), limit, nbytes, counters)
            need.write_text(str(nbytes))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    global _warned
    if over and not _warned:
        _warned = True
        log.warning("cache %s: %d bytes over its limit of %d while the shards in use are read; raise "
                    "--cache-limit above (readers + 1) x the largest shard (a reader: each loader worker of "
                    "each process sharing the cache)", cache_dir, over, limit)
    try:
        yield
    finally:
        need.unlink(missing_ok=True)
