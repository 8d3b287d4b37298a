"""Resolve a shard-set location into the shard URLs webdataset opens (and the manifest, when any).

Accepted, as webdataset users expect:

- a local folder holding ``manifest.json`` (a folder of ``NAME-NNNNNN.tar`` without one works too,
  with unknown counts);
- the path or ``http(s)://`` URL of a ``manifest.json``;
- an ``http(s)://host/prefix/`` (``manifest.json`` is fetched from it);
- a brace pattern such as ``/data/train-{000000..000127}.tar`` or ``http://h/train-{000000..000003}.tar``
  (the manifest next to the shards is used when it exists, for the sample counts);
- a ``pipe:`` command (``pipe:curl -s http://h/train-{000000..000003}.tar``), opened by webdataset;
- an fsspec URL of object storage (``s3://bucket/set/``, ``gs://...``, ``hf://datasets/org/name/set``)
  or of its ``manifest.json`` (:mod:`vidshard.shards.remote`).

The one door to a shard's bytes is :meth:`ShardSource.open`: with a ``cache_dir``, a shard of an
``http(s)`` source is downloaded once into the cache and checked against the manifest's sha256
(:func:`vidshard.shards.cache.fetch_shard`) and held (pinned) until its stream is closed, so a
``cache_limit`` never evicts it under a reader; without one it is streamed
(:func:`vidshard.shards.cache.open_http`). Either way the bytes read are capped at the manifest's size
and every http(s) transfer has a deadline (``policy``). Object storage is always read through the cache
(by default in :func:`~vidshard.shards.cache_limit.default_cache_dir`). Whole-file streams of a set
(``verify``, ``copy``) and its small files go through :func:`vidshard.shards.remote.open_file` and
:func:`~vidshard.shards.remote.read_file`.
"""

from __future__ import annotations

import contextlib
import io
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from . import remote
from .cache import CHUNK, RetryPolicy
from .cache_limit import CacheCounters, default_cache_dir
from .schema import (
    MANIFEST,
    MANIFEST_MAX_BYTES,
    Manifest,
    ManifestError,
    ShardInfo,
    check_shard_name,
    parse_shard_name,
)


@dataclass(frozen=True, kw_only=True)
class ShardSource:
    """What a location resolved to."""

    manifest: Manifest | None
    """The shard set's manifest; ``None`` for a brace pattern or ``pipe:`` without one."""
    urls: list[str]
    """One URL (local path, ``http(s)://`` or ``pipe:``) per shard, in manifest order."""
    infos: list[ShardInfo] | None
    """Manifest entry of each URL (same order), or ``None`` when the counts are unknown."""
    base: str
    """Folder or URL prefix the shards live under (``""`` for ``pipe:``)."""
    cache_dir: Path | None = None
    """Where http(s) and object-storage shards are cached; ``None`` streams http(s) shards directly."""
    policy: RetryPolicy | None = None
    """Retries, timeout and deadline of http(s) transfers (``None``: the cache's default)."""
    cache_limit: int | None = None
    """Bytes the cache may hold; least-recently-used shards not in use are evicted (None: no limit)."""
    counters: CacheCounters | None = None
    """Cache hits, misses, bytes downloaded and evictions of every process reading this source."""

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError(f"{self.base or 'shard set'}: no shards found")
        if self.infos is not None and len(self.infos) != len(self.urls):
            raise ValueError("infos and urls must have the same length")

    @property
    def counts(self) -> list[int] | None:
        """Samples per shard from the manifest, or ``None`` when unknown."""
        return None if self.infos is None else [i.samples for i in self.infos]

    @property
    def classes(self) -> list[str] | None:
        return None if self.manifest is None else self.manifest.classes

    def _cached(self, index: int) -> bool:
        url = self.urls[index]
        cacheable = _is_http(url) or remote.is_remote(url)
        return cacheable and self.cache_dir is not None and self.infos is not None

    def open_url(self, index: int) -> str:
        """The URL to open for shard ``index``: a verified cached copy for http(s) with a cache.

        Not pinned: with a ``cache_limit``, read through :meth:`open` instead."""
        if not self._cached(index):
            return self.urls[index]
        from .cache import fetch_shard  # lazy: only remote sources need it

        return str(fetch_shard(self.urls[index], self.infos[index], Path(self.cache_dir), policy=self.policy,
                               limit=self.cache_limit, counters=self.counters))

    def open(self, index: int) -> BinaryIO:
        """Shard ``index`` as a stream: the cached copy (pinned until the stream is closed), an http(s)
        stream capped at the manifest's bytes with a deadline (no cache), a local file, or the user's own
        ``pipe:`` command (webdataset's gopen)."""
        if self._cached(index):
            return self._open_cached(index)
        url = self.urls[index]
        if _is_http(url):
            from .cache import open_http

            size = None if self.infos is None else self.infos[index].bytes
            return open_http(url, size, policy=self.policy)
        return gopen(url) if url.startswith("pipe:") else open(url, "rb")  # noqa: SIM115 (the caller closes it)

    def _open_cached(self, index: int) -> BinaryIO:
        from .cache import use_shard

        held = contextlib.ExitStack()
        try:
            path = held.enter_context(use_shard(self.urls[index], self.infos[index], Path(self.cache_dir),
                                                policy=self.policy, limit=self.cache_limit,
                                                counters=self.counters))
            return io.BufferedReader(_PinnedFile(path, held), CHUNK)
        except BaseException:
            held.close()
            raise


class _PinnedFile(io.FileIO):
    """A cached shard open for reading; closing it releases the shard's pin (then it may be evicted)."""

    def __init__(self, path: Path, held: contextlib.ExitStack) -> None:
        super().__init__(path, "rb")
        self._held = held

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._held.close()


def _is_http(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _fetch_manifest(url: str, policy: RetryPolicy | None = None) -> Manifest:
    from .cache import fetch_bytes  # retries dropped connections

    try:
        return Manifest.from_json(fetch_bytes(url, policy=policy), url)
    except ManifestError:
        raise  # it was read: the manifest itself is bad, and the error names the entry
    except Exception as exn:
        raise FileNotFoundError(f"{url}: could not read the manifest ({exn}); is the shard set served "
                                "there (`vidshard serve`) and is the URL right?") from exn


def _join(base: str, name: str) -> str:
    """The URL or absolute path of shard ``name`` (checked again here) under ``base``.

    A local path is made absolute, so no name can leave a bare ``pipe:`` or URL
    (``Path(".") / "pipe:cmd"`` is ``"pipe:cmd"``, which webdataset would run).
    """
    check_shard_name(name)
    if remote.is_remote(base):
        return remote.join(base, name)
    return base + name if _is_http(base) else str(Path(base).absolute() / name)


def _from_manifest(manifest: Manifest, base: str, cache_dir: Path | None) -> ShardSource:
    infos = list(manifest.shards)
    return ShardSource(manifest=manifest, urls=[_join(base, i.name) for i in infos], infos=infos,
                       base=base, cache_dir=cache_dir)


def _parent(url_or_path: str) -> str:
    if _is_http(url_or_path):
        return url_or_path.rsplit("/", 1)[0] + "/"
    return str(Path(url_or_path).parent)


def _try_manifest(base: str) -> Manifest | None:
    """The manifest next to a shard pattern, or ``None`` when there is none."""
    try:
        if _is_http(base):
            from .cache import RetryPolicy, fetch_bytes

            url = base + MANIFEST
            return Manifest.from_json(fetch_bytes(url, policy=RetryPolicy(attempts=1)), url)
        p = Path(base) / MANIFEST
        return Manifest.load(p) if p.is_file() else None
    except ManifestError:
        raise  # a manifest is there but bad: say so rather than silently dropping the counts
    except Exception:
        return None


def _from_pattern(location: str, cache_dir: Path | None) -> ShardSource:
    """A brace pattern or a single ``.tar``: counts come from a manifest next to the shards."""
    urls = expand_urls(location)
    base = _parent(urls[0])
    manifest = _try_manifest(base)
    infos = None
    if manifest is not None:
        by_name = {i.name: i for i in manifest.shards}
        names = [u.rsplit("/", 1)[-1] for u in urls]
        infos = [by_name[n] for n in names] if all(n in by_name for n in names) else None
        manifest = manifest if infos is not None else None
    if not _is_http(base):
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: no such shard ({len(missing)} of {len(urls)} missing); "
                                    "check the pattern's range")
    return ShardSource(manifest=manifest, urls=urls, infos=infos, base=base, cache_dir=cache_dir)


def _from_folder(folder: Path, cache_dir: Path | None) -> ShardSource:
    if (folder / MANIFEST).is_file():
        return _from_manifest(Manifest.load(folder), str(folder), cache_dir)
    tars = sorted(p for p in folder.iterdir() if parse_shard_name(p.name))
    if not tars:
        raise FileNotFoundError(f"{folder}: no manifest.json and no NAME-NNNNNN.tar shards; "
                                "is this the output folder of `vidshard preprocess`?")
    return ShardSource(manifest=None, urls=[str(p.absolute()) for p in tars], infos=None, base=str(folder),
                       cache_dir=cache_dir)


def resolve(location: str | Path, cache_dir: str | Path | None = None, cache_limit: int | None = None, *,
            policy: RetryPolicy | None = None) -> ShardSource:
    """Resolve a shard-set location (see the module docstring) into a :class:`ShardSource`; ``policy``
    governs its http(s) transfers. With a cache (``cache_dir``; always for object storage), the source
    counts cache hits and misses and keeps the cache under ``cache_limit`` bytes."""
    source = replace(_resolve(str(location), cache_dir, policy), policy=policy)
    if source.cache_dir is None:
        return source
    return replace(source, cache_limit=cache_limit, counters=CacheCounters())


def _from_remote(loc: str, cache: Path | None) -> ShardSource:
    """An fsspec prefix or ``manifest.json`` URL; read through the cache (the default one without one)."""
    if "{" in loc or loc.endswith(".tar"):
        raise FileNotFoundError(f"{loc}: give the shard set's prefix (or its manifest.json), not shards; "
                                "object storage is read by the manifest's list")
    base = remote.parent(loc) if loc.endswith(".json") else loc.rstrip("/") + "/"
    url = loc if loc.endswith(".json") else base + MANIFEST
    try:
        data = remote.read_small(url, MANIFEST_MAX_BYTES)
    except FileNotFoundError:
        raise FileNotFoundError(f"{url}: no manifest.json there; is this the prefix `vidshard copy` "
                                "wrote the shard set to?") from None
    return _from_manifest(Manifest.from_json(data, url), base, cache or default_cache_dir())


def _resolve(loc: str, cache_dir: str | Path | None, policy: RetryPolicy | None) -> ShardSource:
    cache = Path(cache_dir) if cache_dir is not None else None
    if loc.startswith("pipe:"):
        return ShardSource(manifest=None, urls=expand_urls(loc), infos=None, base="", cache_dir=cache)
    if loc.startswith("file://"):
        loc = urllib.parse.urlparse(loc).path
    if remote.is_remote(loc):
        return _from_remote(loc, cache)
    if _is_http(loc):
        if "{" in loc or loc.endswith(".tar"):
            return _from_pattern(loc, cache)
        if loc.endswith(".json"):
            return _from_manifest(_fetch_manifest(loc, policy), _parent(loc), cache)
        base = loc if loc.endswith("/") else loc + "/"
        return _from_manifest(_fetch_manifest(base + MANIFEST, policy), base, cache)
    if "{" in loc:
        return _from_pattern(loc, cache)
    path = Path(loc).expanduser()
    if path.is_dir():
        return _from_folder(path, cache)
    if path.suffix == ".json" and path.is_file():
        return _from_manifest(Manifest.load(path), str(path.parent), cache)
    if path.suffix == ".tar" and path.is_file():
        return _from_pattern(str(path), cache)
    raise FileNotFoundError(f"{loc}: not a shard set; give a folder with manifest.json, a manifest.json "
                            "path or URL, an http(s):// prefix, an fsspec URL (s3://bucket/set/), a brace "
                            "pattern or a pipe: command")
