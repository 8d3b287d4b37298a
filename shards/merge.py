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
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from .schema import FAILURES, MANIFEST, TOTAL_KEYS, Manifest, ShardInfo, atomic_write, shard_name

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


def check_keys(sets: dict[str, tuple[Path, Manifest]]) -> None:
    """Refuse missing or resized shards and sample keys that occur more than once."""
    where: dict[str, list[str]] = defaultdict(list)
    for name, (folder, m) in sets.items():
        for info in m.shards:
            path = folder / info.name
            if not path.is_file() or path.stat().st_size != info.bytes:
                raise MergeError(f"{path}: missing or not the size its manifest says; "
                                 f"run `vidshard verify {folder}`")
            try:
                keys = shard_keys(path)
            except (tarfile.TarError, EOFError) as e:
                msg = f"{path}: not a readable tar ({e}); run `vidshard verify {folder}`"
                raise MergeError(msg) from None
            for key in keys:
                where[key].append(f"{name}/{info.name}")
    dups = {k: v for k, v in where.items() if len(v) > 1}
    if dups:
        shown = "; ".join(f"{k} in {', '.join(v)}" for k, v in sorted(dups.items())[:5])
        raise MergeError(f"{len(dups)} sample keys occur more than once ({shown}); were the same inputs "
                         "preprocessed twice? Merge only disjoint parts.")


def _place(src: Path, dst: Path, copy: bool) -> bool:
    """Hard-link (or copy) ``src`` to ``dst`` atomically; True when it was linked."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    linked = False
    if not copy:
        try:
            os.link(src, tmp)
            linked = True
        except OSError:  # another file system, or links not allowed: fall back to a copy
            pass
    if not linked:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return linked


def merge(cfg: MergeConfig) -> Manifest:
    """Merge ``cfg.sets`` into ``cfg.output``; returns the merged manifest."""
    sets = {str(s): (Path(s), Manifest.load(s)) for s in cfg.sets}
    check_compatible({name: m for name, (_, m) in sets.items()})
    check_keys(sets)
    first = next(iter(sets.values()))[1]
    prefix = cfg.prefix or first.settings.get("prefix") or "train"
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[ShardInfo] = []
    total = sum(len(m.shards) for _, m in sets.values())
    with Progress(disable=not cfg.progress, transient=True) as bar:
        task = bar.add_task(f"merge into {out}", total=total)
        for folder, m in sets.values():
            for info in m.shards:
                name = shard_name(prefix, len(shards))
                _place(folder / info.name, out / name, cfg.copy)
                shards.append(ShardInfo(name=name, samples=info.samples, bytes=info.bytes,
                                        sha256=info.sha256))
                bar.advance(task)
    failures = b"".join(_failures(folder) for folder, _ in sets.values())
    atomic_write(out / FAILURES, failures)
    totals = {k: sum(m.totals.get(k, 0) for _, m in sets.values()) for k in TOTAL_KEYS}
    settings = {**first.settings, "part": None, "merged_from": len(sets)}
    sizes = [m.settings["shard_size"] for _, m in sets.values() if "shard_size" in m.settings]
    if sizes:
        settings["shard_size"] = max(sizes)
    merged = Manifest(settings=settings, shards=shards, totals=totals, classes=first.classes)
    merged.save(out)
    return merged


def _failures(folder: Path) -> bytes:
    path = folder / FAILURES
    data = path.read_bytes() if path.exists() else b""
    return data if not data or data.endswith(b"\n") else data + b"\n"
