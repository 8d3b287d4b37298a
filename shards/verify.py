"""Check a shard set (folder or URL) against its manifest before anyone trains on it.

Every shard is read once, as a stream: its SHA-256 and byte size are computed
while ``tarfile`` walks its members, so a URL is verified without a local copy.
Per shard the samples are counted and each must have its ``KEY.mp4`` and a
``KEY.json`` that parses into :class:`SampleMeta` (and matches its key, its
``KEY.cls`` and the manifest's classes); with ``deep`` the first frame of every
clip is decoded too. Across the set, keys must be unique.

Nothing in the set is trusted: a manifest entry outside the shard-name rule (``../x``,
an absolute path, a ``pipe:`` command) or a shard that links out of the folder is a
``refused`` finding and is never opened; a member that is not a regular file or is over
its size cap (:data:`~vidshard.shards.schema.MEMBER_MAX_BYTES`), or metadata of the wrong
shape, is a finding of its shard; no shard is read past the size its manifest gives.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .cache import CHUNK, FetchError, fetch_bytes
from .localset import OutsideSetError, open_set_file
from .schema import (
    LABEL_EXT,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    META_EXT,
    VIDEO_EXT,
    Manifest,
    MemberError,
    Rejected,
    SampleMeta,
    ShardInfo,
    check_tar_member,
)

MAX_PROBLEMS = 5  # per shard; the rest are counted


@dataclass(frozen=True, kw_only=True)
class VerifyConfig:
    """What to verify and how thoroughly."""

    location: str
    """Shard-set folder, its ``manifest.json``, or an ``http(s)://`` URL serving it."""
    deep: bool = False
    """Also decode the first frame of every clip (slower; catches broken video streams)."""
    progress: bool = True
    """Show a progress bar over the bytes read."""

    def __post_init__(self) -> None:
        if not str(self.location):
            raise ValueError("location is empty; give a shard-set folder or URL")


@dataclass(kw_only=True)
class ShardCheck:
    """What one shard turned out to be."""

    name: str
    """File name from the manifest."""
    status: str = "ok"
    """``ok``, ``missing`` (absent or unreachable), ``corrupt``, or ``refused`` (a name outside
    the shard-name rule or a file linking out of the set: never opened)."""
    expected: ShardInfo | None = None
    """The manifest's entry; ``None`` for a refused entry."""
    samples: int = 0
    """Samples found."""
    bytes: int = 0
    """Bytes read."""
    problems: list[str] = field(default_factory=list)
    """What is wrong, a person-readable line each (at most MAX_PROBLEMS, then a count)."""

    def add(self, problem: str) -> None:
        self.status = "corrupt" if self.status == "ok" else self.status
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("... and more")


@dataclass(kw_only=True)
class VerifyResult:
    """The report of :func:`verify`."""

    location: str
    manifest: Manifest
    shards: list[ShardCheck]
    problems: list[str] = field(default_factory=list)
    """Problems of the set as a whole (duplicate keys, counts); each one fails the check."""
    warnings: list[str] = field(default_factory=list)
    """Oddities that do not make the set unusable (stray files)."""

    @property
    def bad(self) -> list[ShardCheck]:
        return [s for s in self.shards if s.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.bad and not self.problems


def is_url(location: str) -> bool:
    return str(location).startswith(("http://", "https://"))


def open_manifest(location: str, rejects: list[Rejected] | None = None) -> tuple[Manifest, str]:
    """The manifest of a shard set and the folder or URL prefix of its shards.

    With a ``rejects`` list, bad shard entries go there instead of raising
    :class:`~vidshard.shards.schema.ManifestError` (see :meth:`Manifest.from_dict`).

    A folder, a ``manifest.json`` path or URL, or an ``http(s)://`` prefix is read directly;
    anything else :func:`~vidshard.shards.location.resolve` accepts (brace patterns, ``file://``)
    goes through it (which imports webdataset and torch, seconds of start-up a plain check skips).
    """
    loc = str(location)
    if is_url(loc) and "{" not in loc and not loc.endswith(".tar"):
        url = loc if loc.endswith(".json") else loc.rstrip("/") + "/" + MANIFEST
        try:
            return Manifest.from_json(fetch_bytes(url), url, rejects=rejects), url.rsplit("/", 1)[0] + "/"
        except FetchError as e:
            raise FileNotFoundError(f"{e}; is the shard set served there (`vidshard serve`)?") from None
    path = Path(loc)
    if path.is_dir() or (path.suffix == ".json" and path.is_file()):
        file = path / MANIFEST if path.is_dir() else path
        if not file.is_file():
            return Manifest.load(file), ""  # raises the usual "no manifest.json here" error
        with open(file, "rb") as f:
            return (Manifest.from_json(f.read(MANIFEST_MAX_BYTES + 1), str(file), rejects=rejects),
                    str(file.parent))
    from .location import resolve

    source = resolve(location)
    if source.manifest is None:
        raise FileNotFoundError(f"{location}: found shards but no manifest.json to check them against; "
                                "give the shard-set folder or URL that `vidshard preprocess` wrote")
    return source.manifest, source.base


def open_shard(base: str, name: str) -> BinaryIO:
    """A binary stream of shard ``name`` (a checked manifest name) under a folder or URL ``base``;
    a local shard that links out of the folder raises :class:`OutsideSetError`."""
    if is_url(base):
        return urllib.request.urlopen(base + name, timeout=60)
    return open_set_file(base, name)


class HashingReader:
    """A read-only stream wrapper that hashes and counts every byte read through it, and reads
    at most ``limit`` bytes (then it reports the end), so no source can make a reader go on forever."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], object] | None = None,
                 limit: int | None = None) -> None:
        self.f, self.sha, self.bytes, self.on_read, self.limit = f, hashlib.sha256(), 0, on_read, limit

    def read(self, n: int = -1) -> bytes:
        if self.limit is not None:
            left = self.limit - self.bytes
            n = left if n is None or n < 0 else min(n, left)
        data = self.f.read(n) if n else b""
        self.sha.update(data)
        self.bytes += len(data)
        if self.on_read:
            self.on_read(len(data))
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def check_shard(base: str, info: ShardInfo, classes: list[str] | None, keys: Counter,
                deep: bool = False, on_read: Callable[[int], object] | None = None) -> ShardCheck:
    """Stream one shard: hash, size, sample count and every sample's members (keys go into ``keys``)."""
    check = ShardCheck(name=info.name, expected=info)
    try:
        f = open_shard(base, info.name)
    except OutsideSetError as e:
        check.status, check.problems = "refused", [f"{e}; not read"]
        return check
    except FileNotFoundError:
        check.status, check.problems = "missing", ["no such file"]
        return check
    except urllib.error.HTTPError as e:
        check.status, check.problems = "missing", [f"HTTP {e.code} {e.reason}"]
        return check
    except OSError as e:
        check.status, check.problems = "missing", [f"unreadable: {e}"]
        return check
    with f:
        reader = HashingReader(f, on_read, limit=info.bytes + 1)  # one more tells "too long"
        try:
            _check_samples(reader, check, classes, keys, deep)
        except (tarfile.TarError, EOFError, OSError) as e:
            check.add(f"not a readable tar file: {e}")
        try:
            reader.drain()
        except OSError as e:
            check.add(f"read failed after {reader.bytes} bytes: {e}")
    check.bytes = reader.bytes
    if check.bytes != info.bytes:
        check.add(f"{check.bytes} bytes, manifest says {info.bytes}")
    if reader.sha.hexdigest() != info.sha256.lower():
        check.add(f"sha256 {reader.sha.hexdigest()[:12]}..., manifest says {info.sha256[:12]}...")
    if check.samples != info.samples:
        check.add(f"{check.samples} samples, manifest says {info.samples}")
    return check


def _check_samples(reader: HashingReader, check: ShardCheck, classes: list[str] | None, keys: Counter,
                   deep: bool) -> None:
    current: str | None = None
    members: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tf:
        for m in tf:
            try:
                key, ext = check_tar_member(m)
            except MemberError as e:
                check.add(str(e))
                continue
            if key != current:
                if current is not None:
                    _check_sample(current, members, check, classes, deep)
                current, members = key, {}
                keys[key] += 1
            wanted = ext in (META_EXT, LABEL_EXT) or (deep and ext == VIDEO_EXT)
            members[ext] = tf.extractfile(m).read() if wanted else None
    if current is not None:
        _check_sample(current, members, check, classes, deep)


def _check_sample(key: str, members: dict[str, bytes | None], check: ShardCheck,
                  classes: list[str] | None, deep: bool) -> None:
    check.samples += 1
    for ext in (VIDEO_EXT, META_EXT):
        if ext not in members:
            check.add(f"sample {key}: no {key}.{ext}")
    if META_EXT not in members:
        return
    try:
        meta = SampleMeta.from_json(members[META_EXT])
    except MemberError as e:
        check.add(f"sample {key}: unreadable {key}.{META_EXT} ({e})")
        return
    if meta.key != key:
        check.add(f"sample {key}: metadata says key {meta.key}")
    if classes is not None and meta.label is not None and not (
            0 <= meta.label < len(classes) and classes[meta.label] == meta.label_name):
        check.add(f"sample {key}: label {meta.label} {meta.label_name!r} not in the manifest's classes")
    if LABEL_EXT in members and members[LABEL_EXT].strip() != str(meta.label).encode():
        check.add(f"sample {key}: {key}.{LABEL_EXT} says {members[LABEL_EXT]!r}, metadata {meta.label}")
    if deep and VIDEO_EXT in members:
        problem = _decode_problem(members[VIDEO_EXT], meta)
        if problem:
            check.add(f"sample {key}: {problem}")


def _decode_problem(mp4: bytes, meta: SampleMeta) -> str | None:
    import av  # only the deep check decodes

    try:
        with av.open(io.BytesIO(mp4)) as container:
            frame = next(container.decode(video=0))
    except (av.FFmpegError, StopIteration, ValueError, IndexError, OSError) as e:
        return f"video does not decode ({type(e).__name__}: {e})"
    if (frame.width, frame.height) != (meta.width, meta.height):
        return f"video is {frame.width}x{frame.height}, metadata says {meta.width}x{meta.height}"
    return None


def verify(cfg: VerifyConfig) -> VerifyResult:
    """Check every shard of ``cfg.location`` against its manifest; see the module docstring."""
    rejects: list[Rejected] = []
    manifest, base = open_manifest(cfg.location, rejects)
    keys: Counter = Counter()
    checks = [ShardCheck(name=r.name, status="refused",
                         problems=[f"shards[{r.index}]: {r.reason}; not opened"]) for r in rejects]
    columns = (TextColumn("verify {task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(str(cfg.location), total=sum(s.bytes for s in manifest.shards))
        for info in manifest.shards:
            checks.append(check_shard(base, info, manifest.classes, keys, cfg.deep,
                                      on_read=lambda n: bar.advance(task, n)))
    result = VerifyResult(location=str(cfg.location), manifest=manifest, shards=checks)
    dups = [k for k, n in keys.items() if n > 1]
    if dups:
        result.problems.append(f"{len(dups)} keys occur more than once, e.g. {', '.join(sorted(dups)[:3])}")
    listed = manifest.num_samples  # missing or corrupt shards are reported above, not again here
    if not rejects and manifest.totals.get("samples", listed) != listed:
        result.problems.append(f"totals.samples is {manifest.totals['samples']}, "
                               f"the shard list says {listed}")
    if not is_url(base):
        listed = {s.name for s in manifest.shards}
        stray = sorted(p.name for p in Path(base).glob("*.tar") if p.name not in listed)
        if stray:
            result.warnings.append(f"shards not in the manifest (ignored): {', '.join(stray[:5])}")
    return result


def report_table(result: VerifyResult, max_rows: int = 50) -> Table:
    """One row per shard (only the bad ones beyond ``max_rows`` shards): status, samples and
    bytes found against the manifest, problems."""
    table = Table(title=f"{result.location}: {len(result.shards)} shards, "
                        f"{sum(c.samples for c in result.shards)} samples, {len(result.bad)} bad",
                  title_justify="left")
    for col in ("shard", "status", "samples", "bytes", "problems"):
        table.add_column(col, justify="right" if col in ("samples", "bytes") else "left")
    few = len(result.shards) <= max_rows
    for c in result.shards:
        if few or c.status != "ok":
            want = c.expected
            table.add_row(escape(c.name), f"[{'green' if c.status == 'ok' else 'red'}]{c.status}[/]",
                          f"{c.samples}/{want.samples if want else '?'}",
                          f"{c.bytes}/{want.bytes if want else '?'}", escape("; ".join(c.problems)))
    if not few:
        table.caption = f"{len(result.shards) - len(result.bad)} ok shards not listed"
    return table
