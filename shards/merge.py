"""Merge shard sets made on different machines (``preprocess --part I/N``) into one.

The sets must have been made with the same settings (apart from per-run fields
such as ``part`` and ``shard_size``) and the same class list; otherwise merge
refuses and names the differing keys. Sample keys must be unique across all
sets. The shards are hard-linked (copied when OUTPUT is on another file system,
or with ``copy``) into OUTPUT and renamed ``PREFIX-000000.tar``,
``PREFIX-000001.tar``, ... in the order the sets are given, so OUTPUT is a
self-contained shard set that ``verify``, ``serve`` and plain webdataset read
like any other (a manifest that referenced files in other folders would not
be). The bytes, and so each shard's SHA-256, are unchanged. Totals are summed,
``failures.jsonl`` files concatenated, and ``manifest.json`` is written last,
atomically: OUTPUT is a shard set only once the merge is complete.

The input sets are not trusted: their manifests are checked like any other
(names inside the set, sane values), each shard is opened only inside its set's
folder (a shard linking elsewhere is refused) and read once before anything is
placed, and its size, SHA-256 and sample count must match its manifest. The
merged manifest holds the sizes and hashes merge computed itself; a placed
file is checked to be the one that was read (same inode for a link, same hash
for a copy).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from .cache import CHUNK
from .localset import open_set_file
from .schema import (
    FAILURES,
    MANIFEST,
    TOTAL_KEYS,
    Manifest,
    ManifestError,
    MemberError,
    ShardInfo,
    atomic_write,
    check_tar_member,
    shard_name,
)
from .verify import HashingReader

PER_RUN_SETTINGS = ("part", "shard_size", "merged_from")
"""Settings that may differ between the sets of one merge (each part run has its own)."""


class MergeError(ValueError):
    """The sets cannot be merged; the message says which sets and what differs."""


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    """Which sets to merge into which folder."""

    sets: tuple[Path, ...]
    """Shard-set folders to merge, in this order."""
    output: Path
    """Folder of the merged set (created; must not hold a shard set yet)."""
    copy: bool = False
    """Copy the shards instead of hard-linking them (hard links need one file system)."""
    prefix: str | None = None
    """Shard name prefix in OUTPUT; default the sets' ``prefix`` setting, else ``train``."""
    progress: bool = True
    """Show a progress bar while linking or copying."""

    def __post_init__(self) -> None:
        if not self.sets:
            raise ValueError("give at least one shard set to merge")
        out = Path(self.output).resolve()
        for s in self.sets:
            if not (Path(s) / MANIFEST).is_file():
                raise FileNotFoundError(f"{s}: no {MANIFEST}; is this a shard set made by "
                                        "`vidshard preprocess`?")
            if Path(s).resolve() == out:
                raise ValueError(f"OUTPUT {self.output} is one of the sets being merged; choose a new folder")
        if (out / MANIFEST).exists():
            raise FileExistsError(f"{self.output} already holds a shard set; merge into a new folder")
        if len({Path(s).resolve() for s in self.sets}) != len(self.sets):
            raise ValueError("a shard set is given twice")


def check_compatible(manifests: dict[str, Manifest]) -> None:
    """Refuse sets whose settings (other than PER_RUN_SETTINGS) or class lists differ."""
    names = list(manifests)
    first = manifests[names[0]]
    for name in names[1:]:
        m = manifests[name]
        keys = sorted((set(first.settings) | set(m.settings)) - set(PER_RUN_SETTINGS))
        diff = [k for k in keys if first.settings.get(k) != m.settings.get(k)]
        if diff:
            what = ", ".join(f"{k} ({names[0]}: {first.settings.get(k)!r}, {name}: {m.settings.get(k)!r})"
                             for k in diff)
            raise MergeError(f"{name} was made with other settings than {names[0]}: {what}; "
                             "only sets made with the same settings can be merged")
        if first.classes != m.classes:
            diff = _class_diff(first.classes, m.classes)
            raise MergeError(f"{name} has other classes than {names[0]}: {diff}; "
                             "re-run preprocess with the same class list")


def _class_diff(a: list[str] | None, b: list[str] | None) -> str:
    if a is None or b is None:
        return "one is labeled, the other is not"
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} classes (only in one: {sorted(set(a) ^ set(b))[:5]})"
    i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"class id {i} is {a[i]!r} vs {b[i]!r}"


def shard_keys(path: Path) -> list[str]:
    """Sample keys of one local shard, in order, from the tar headers only (videos are skipped)."""
    keys: list[str] = []
    with tarfile.open(path, mode="r:") as tf:
        for m in tf:
            key = Path(m.name).name.partition(".")[0]
            if m.isfile() and (not keys or keys[-1] != key):
                keys.append(key)
    return keys


@dataclass(frozen=True, kw_only=True)
class CheckedShard:
    """An input shard as merge read it (not as its manifest says)."""

    folder: Path
    """The input set's folder."""
    info: ShardInfo
    """Name and sample count from the input manifest; bytes and sha256 as computed."""
    stat: os.stat_result
    """``fstat`` of the file that was read: a hard link must be to this same, unchanged inode."""
    keys: list[str]
    """Sample keys in order."""


def read_shard(set_name: str, folder: Path, info: ShardInfo) -> CheckedShard:
    """Read one input shard inside its set; :class:`MergeError` unless its size, SHA-256, sample
    count and members (regular files of sane size) match its manifest."""
    where = f"{set_name}: shard {info.name}"
    fix = f"run `vidshard verify {set_name}`"
    try:
        f = open_set_file(folder, info.name)
    except (OSError, ManifestError) as e:
        raise MergeError(f"{where}: cannot be merged ({e}); {fix}") from None
    with f:
        st = os.fstat(f.fileno())
        reader = HashingReader(f, limit=info.bytes + 1)
        keys: list[str] = []
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                for m in tf:
                    key = check_tar_member(m)[0]
                    if not keys or keys[-1] != key:
                        keys.append(key)
            while reader.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError, MemberError) as e:
            raise MergeError(f"{where}: not a readable tar ({e}); {fix}") from None
    got = ShardInfo(name=info.name, samples=len(keys), bytes=reader.bytes, sha256=reader.sha.hexdigest())
    for field_name in ("bytes", "sha256", "samples"):
        if getattr(got, field_name) != getattr(info, field_name):
            raise MergeError(f"{where}: {field_name} is {getattr(got, field_name)}, its manifest says "
                             f"{getattr(info, field_name)}; the shard is damaged or the manifest is wrong "
                             f"(nothing was merged); {fix}")
    return CheckedShard(folder=folder, info=got, stat=st, keys=keys)


def check_keys(sets: dict[str, tuple[Path, Manifest]]) -> list[CheckedShard]:
    """Read every input shard (:func:`read_shard`); refuse sample keys that occur more than once."""
    where: dict[str, list[str]] = defaultdict(list)
    checked: list[CheckedShard] = []
    for name, (folder, m) in sets.items():
        for info in m.shards:
            checked.append(read_shard(name, folder, info))
            for key in checked[-1].keys:
                where[key].append(f"{name}/{info.name}")
    dups = {k: v for k, v in where.items() if len(v) > 1}
    if dups:
        shown = "; ".join(f"{k} in {', '.join(v)}" for k, v in sorted(dups.items())[:5])
        raise MergeError(f"{len(dups)} sample keys occur more than once ({shown}); were the same inputs "
                         "preprocessed twice? Merge only disjoint parts.")
    return checked


def _place(shard: CheckedShard, dst: Path, copy: bool) -> bool:
    """Hard-link (or copy) the checked shard to ``dst`` atomically; True when it was linked.

    The placed file must be the one that was read: a link the same unchanged inode, a copy the
    same bytes (hashed while copying); otherwise :class:`MergeError` and nothing is placed.
    """
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    src = shard.folder / shard.info.name
    linked = False
    if not copy:
        try:
            os.link(src.resolve(), tmp, follow_symlinks=False)
            linked = True
        except OSError:  # another file system, or links not allowed: fall back to a copy
            pass
    if linked:
        st, want = os.stat(tmp), shard.stat
        same = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (
            want.st_ino, want.st_dev, want.st_size, want.st_mtime_ns)
    else:
        same = _copy_hashed(src.parent, src.name, tmp) == shard.info.sha256
    if not same:
        tmp.unlink(missing_ok=True)
        raise MergeError(f"{src} changed while it was being merged; merge again when nothing writes to it")
    os.replace(tmp, dst)
    return linked


def _copy_hashed(folder: Path, name: str, dst: Path) -> str:
    """Copy file ``name`` of the set in ``folder`` to ``dst``; the SHA-256 of the bytes copied."""
    with open_set_file(folder, name) as f, open(dst, "wb") as out:
        reader = HashingReader(f)
        while data := reader.read(CHUNK):
            out.write(data)
    return reader.sha.hexdigest()


def merge(cfg: MergeConfig) -> Manifest:
    """Merge ``cfg.sets`` into ``cfg.output``; returns the merged manifest."""
    sets = {str(s): (Path(s), Manifest.load(s)) for s in cfg.sets}
    check_compatible({name: m for name, (_, m) in sets.items()})
    checked = check_keys(sets)
    first = next(iter(sets.values()))[1]
    prefix = cfg.prefix or first.settings.get("prefix") or "train"
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[ShardInfo] = []
    total = sum(len(m.shards) for _, m in sets.values())
    with Progress(disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(f"merge into {out}", total=total)
        for shard in checked:
            name = shard_name(prefix, len(shards))
            _place(shard, out / name, cfg.copy)
            shards.append(ShardInfo(name=name, samples=shard.info.samples, bytes=shard.info.bytes,
                                    sha256=shard.info.sha256))  # computed by read_shard
            bar.advance(task)
    failures = b"".join(_failures(name, folder) for name, (folder, _) in sets.items())
    atomic_write(out / FAILURES, failures)
    totals = {k: sum(m.totals.get(k, 0) for _, m in sets.values()) for k in TOTAL_KEYS}
    settings = {**first.settings, "part": None, "merged_from": len(sets)}
    sizes = [m.settings["shard_size"] for _, m in sets.values() if "shard_size" in m.settings]
    if sizes:
        settings["shard_size"] = max(sizes)
    merged = Manifest(settings=settings, shards=shards, totals=totals, classes=first.classes)
    merged.save(out)
    return merged


def _failures(set_name: str, folder: Path) -> bytes:
    """The set's ``failures.jsonl`` (read inside the set only), each line checked to be a JSON object."""
    try:
        with open_set_file(folder, FAILURES) as f:
            data = f.read()
    except FileNotFoundError:
        return b""
    except (OSError, ManifestError) as e:
        raise MergeError(f"{set_name}: {FAILURES} cannot be merged ({e})") from None
    for i, line in enumerate(data.splitlines(), 1):
        try:
            ok = not line.strip() or isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok:
            raise MergeError(f"{set_name}/{FAILURES} line {i} is not a JSON object; fix or remove that line")
    return data if not data or data.endswith(b"\n") else data + b"\n"
