"""``vidshard copy SET DEST``: copy a shard set between any two locations, verified and resumable.

SET is anything ``verify`` reads (a folder, its ``manifest.json``, an ``http(s)://`` URL, an fsspec
URL such as ``s3://bucket/set/``); DEST is a folder or an fsspec prefix. Shards are copied in
parallel, each streamed once and hashed on the way: a shard whose size or SHA-256 differs from the
manifest is deleted at DEST and tried again, then reported. ``failures.jsonl`` and, **last**,
``manifest.json`` are written only when every shard arrived intact, so a reader (which starts from
the manifest) never sees a half-copied set.

Resuming: run the same command again. A shard already at DEST with the manifest's size and SHA-256 is
kept (DEST is read back to check it); anything else is copied again. A local DEST receives each
shard as ``.NAME.part`` and renames it only once verified; an object store publishes an object only
when its upload completes, so a killed copy never leaves a wrong file under a shard's name.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from . import remote
from .cache import CHUNK, FetchError, file_sha256, mismatch
from .schema import FAILURES, MANIFEST, Manifest, ShardInfo, atomic_write, fsync_dir


@dataclass(frozen=True, kw_only=True)
class CopyConfig:
    """What to copy where."""

    source: str
    """Shard set to copy: folder, ``manifest.json``, ``http(s)://`` URL or fsspec URL (``s3://b/set/``)."""
    dest: str
    """Where to: a folder or an fsspec prefix (``s3://bucket/set/``, ``gs://...``); not http(s)."""
    workers: int = 4
    """Shards copied at the same time (threads; the work is waiting on storage, not the CPU)."""
    attempts: int = 3
    """Tries per shard before it is reported as failed (a dropped connection, a corrupt transfer)."""
    progress: bool = True
    """Show a progress bar over the bytes."""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.attempts < 1:
            raise ValueError(f"workers and attempts must be at least 1, got {self.workers}, {self.attempts}")
        if str(self.dest).startswith(("http://", "https://")):
            raise ValueError(f"{self.dest}: cannot write to http(s); copy to a folder or object storage "
                             "(s3://, gs://, ...) and serve that")
        if not str(self.dest):
            raise ValueError("dest is empty; give a folder or an fsspec URL")


@dataclass(kw_only=True)
class CopyResult:
    """What :func:`copy_set` did."""

    dest: str
    copied: list[str] = field(default_factory=list)
    """Shards written to DEST."""
    kept: list[str] = field(default_factory=list)
    """Shards already at DEST with the right size and SHA-256."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(shard, what went wrong) for shards that could not be copied intact."""
    bytes_copied: int = 0
    """Bytes written to DEST (shards only)."""
    manifest_written: bool = False
    """True when every shard is in place and DEST's manifest.json was written (last)."""

    @property
    def ok(self) -> bool:
        return not self.failed and self.manifest_written


def _dest_base(dest: str) -> str:
    return remote.join(dest, "") if remote.is_remote(dest) else str(Path(dest).expanduser())


def _dest_matches(base: str, info: ShardInfo) -> bool:
    """True when DEST already holds the shard with the manifest's size and SHA-256."""
    url = remote.file_url(base, info.name)
    if remote.is_remote(url):
        if remote.size(url) != info.bytes:
            return False
        sha = hashlib.sha256()
        with remote.open_stream(url) as f:
            while block := f.read(CHUNK):
                sha.update(block)
        return sha.hexdigest() == info.sha256
    p = Path(url)
    return p.is_file() and p.stat().st_size == info.bytes and file_sha256(p) == info.sha256


def _write_local(src: BinaryIO, final: Path, info: ShardInfo,
                 on_bytes: Callable[[int], object]) -> str | None:
    """Stream into ``.NAME.part``; rename to ``final`` only when size and hash match (else the problem)."""
    tmp = final.with_name(f".{final.name}.part")
    sha, size = hashlib.sha256(), 0
    with open(tmp, "wb") as out:
        while block := src.read(CHUNK):
            out.write(block)
            sha.update(block)
            size += len(block)
            on_bytes(len(block))
            if size > info.bytes:
                break  # longer than the manifest says: corrupt, stop reading
        out.flush()
        os.fsync(out.fileno())
    problem = mismatch(size, sha.hexdigest(), info)
    if problem:
        tmp.unlink(missing_ok=True)
        return problem
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return None


def _write_remote(src: BinaryIO, url: str, info: ShardInfo,
                  on_bytes: Callable[[int], object]) -> str | None:
    size, digest = remote.upload(src, url, on_bytes, limit=info.bytes + 1)
    problem = mismatch(size, digest, info)
    if problem:
        remote.remove(url)  # never leave a wrong object under a shard's name
    return problem


def copy_shard(src_base: str, dest_base: str, info: ShardInfo, attempts: int,
               on_bytes: Callable[[int], object] = lambda n: None) -> str:
    """Copy one shard unless DEST has it already: ``"kept"`` or ``"copied"``; :class:`FetchError` when
    it could not be copied intact in ``attempts`` tries."""
    if _dest_matches(dest_base, info):
        return "kept"
    url = remote.file_url(dest_base, info.name)
    problem = ""
    for _ in range(attempts):
        try:
            with remote.open_file(src_base, info.name) as src:
                if remote.is_remote(url):
                    problem = _write_remote(src, url, info, on_bytes) or ""
                else:
                    problem = _write_local(src, Path(url), info, on_bytes) or ""
        except FileNotFoundError as e:
            raise FetchError(f"{info.name}: not found at the source ({e})") from None
        except OSError as e:  # includes dropped connections and HTTP errors
            problem = f"{type(e).__name__}: {e}"
        if not problem:
            return "copied"
    raise FetchError(f"{info.name}: {problem} (after {attempts} attempts)")


def _read_source(cfg: CopyConfig) -> tuple[Manifest, str, bytes | None]:
    from .verify import open_manifest  # folder, manifest.json, http(s), object storage, patterns

    manifest, base = open_manifest(cfg.source)
    try:
        failures = remote.read_file(base, FAILURES)
    except (FileNotFoundError, FetchError):
        failures = None
    return manifest, base, failures


def _check_dest(manifest: Manifest, dest_base: str, src_base: str) -> None:
    """Refuse a DEST that is the source or already holds another shard set."""
    if remote.is_remote(dest_base) == remote.is_remote(src_base) and (
            dest_base.rstrip("/") == src_base.rstrip("/") or (
            not remote.is_remote(dest_base) and Path(dest_base).resolve() == Path(src_base).resolve())):
        raise ValueError(f"{dest_base}: is the source itself; copy to another folder or prefix")
    try:
        url = remote.file_url(dest_base, MANIFEST)
        there = Manifest.from_json(remote.read_file(dest_base, MANIFEST), url)
    except FileNotFoundError:
        return
    if [(s.name, s.sha256) for s in there.shards] != [(s.name, s.sha256) for s in manifest.shards]:
        raise ValueError(f"{dest_base}: already holds another shard set (its manifest.json lists other "
                         "shards); copy to an empty folder or prefix")


def _write_last(manifest: Manifest, failures: bytes | None, dest_base: str) -> None:
    """``failures.jsonl``, then ``manifest.json``: the manifest is what makes the set visible."""
    data = manifest.to_json().encode("utf-8")
    if remote.is_remote(dest_base):
        if failures is not None:
            remote.write_small(remote.file_url(dest_base, FAILURES), failures)
        remote.write_small(remote.file_url(dest_base, MANIFEST), data)
    else:
        if failures is not None:
            atomic_write(Path(dest_base) / FAILURES, failures)
        atomic_write(Path(dest_base) / MANIFEST, data)


def copy_set(cfg: CopyConfig) -> CopyResult:
    """Copy the shard set ``cfg.source`` to ``cfg.dest`` (see the module docstring)."""
    manifest, src_base, failures = _read_source(cfg)
    dest_base = _dest_base(cfg.dest)
    _check_dest(manifest, dest_base, src_base)
    if not remote.is_remote(dest_base):
        Path(dest_base).mkdir(parents=True, exist_ok=True)
    result, lock = CopyResult(dest=cfg.dest), threading.Lock()
    columns = (TextColumn("copy {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(f"{cfg.source} -> {cfg.dest}", total=sum(s.bytes for s in manifest.shards))

        def one(info: ShardInfo) -> None:
            try:
                done = copy_shard(src_base, dest_base, info, cfg.attempts, lambda n: bar.advance(task, n))
            except (FetchError, OSError, ValueError) as e:
                with lock:
                    result.failed.append((info.name, str(e)))
                return
            with lock:
                (result.copied if done == "copied" else result.kept).append(info.name)
                result.bytes_copied += info.bytes if done == "copied" else 0
            if done == "kept":
                bar.advance(task, info.bytes)

        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            list(pool.map(one, manifest.shards))
    if not result.failed:
        _write_last(manifest, failures, dest_base)
        result.manifest_written = True
    result.failed.sort()
    return result
