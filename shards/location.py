"""Resolve a shard-set location into the shard URLs webdataset opens (and the manifest, when any).

Accepted, as webdataset users expect:

- a local folder holding ``manifest.json`` (a folder of ``NAME-NNNNNN.tar`` without one works too,
  with unknown counts);
- the path or ``http(s)://`` URL of a ``manifest.json``;
- an ``http(s)://host/prefix/`` (``manifest.json`` is fetched from it);
- a brace pattern such as ``/data/train-{000000..000127}.tar`` or ``http://h/train-{000000..000003}.tar``
  (the manifest next to the shards is used when it exists, for the sample counts);
- a ``pipe:`` command (``pipe:curl -s http://h/train-{000000..000003}.tar``), opened by webdataset.

With a ``cache_dir``, shards of an ``http(s)`` source are downloaded once into the cache and checked
against the manifest's sha256 (:func:`vidshard.shards.cache.fetch_shard`) when they are opened; without
one they are streamed (:func:`vidshard.shards.cache.open_http`). Either way the bytes read are capped at
the manifest's size and every transfer has a deadline (``policy``).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls

from .cache import RetryPolicy
from .schema import MANIFEST, Manifest, ManifestError, ShardInfo, check_shard_name, parse_shard_name


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
    """Where http(s) shards are cached; ``None`` streams them directly."""
    policy: RetryPolicy | None = None
    """Retries, timeout and deadline of http(s) transfers (``None``: the cache's default)."""

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

    def open_url(self, index: int) -> str:
        """The URL to open for shard ``index``: a verified cached copy for http(s) with a cache."""
        url = self.urls[index]
        if self.cache_dir is not None and _is_http(url) and self.infos is not None:
            from .cache import fetch_shard  # lazy: only remote sources need it

            return str(fetch_shard(url, self.infos[index], Path(self.cache_dir), policy=self.policy))
        return url

    def open(self, index: int) -> BinaryIO:
        """Shard ``index`` as a stream: the cached copy, an http(s) stream capped at the manifest's bytes
        with a deadline (no cache), a local file, or the user's own ``pipe:`` command (webdataset's gopen)."""
        url = self.open_url(index)
        if _is_http(url):
            from .cache import open_http

            size = None if self.infos is None else self.infos[index].bytes
            return open_http(url, size, policy=self.policy)
        return gopen(url) if url.startswith("pipe:") else open(url, "rb")  # noqa: SIM115 (the caller closes it)


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


def resolve(location: str | Path, cache_dir: str | Path | None = None, *,
            policy: RetryPolicy | None = None) -> ShardSource:
    """Resolve a shard-set location (see the module docstring) into a :class:`ShardSource`; ``policy``
    governs its http(s) transfers."""
    return replace(_resolve(str(location), cache_dir, policy), policy=policy)


def _resolve(loc: str, cache_dir: str | Path | None, policy: RetryPolicy | None) -> ShardSource:
    cache = Path(cache_dir) if cache_dir is not None else None
    if loc.startswith("pipe:"):
        return ShardSource(manifest=None, urls=expand_urls(loc), infos=None, base="", cache_dir=cache)
    if loc.startswith("file://"):
        loc = urllib.parse.urlparse(loc).path
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
                            "path or URL, an http(s):// prefix, a brace pattern or a pipe: command")
