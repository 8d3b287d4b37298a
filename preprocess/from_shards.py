"""A shard set as preprocess INPUT: re-encode its samples with new settings, without the sources.

INPUT is a shard set when the folder holds ``manifest.json`` (a vidshard set: its shards, in
order) or ``*.tar`` files at its top level (any WebDataset of videos, e.g. video2dataset's
output). A sample is a run of tar members sharing a key (``dir/KEY.EXT``, the webdataset rule):
exactly one video member, optional ``.json``, ``.txt`` and ``.cls`` side members.

Listing reads tar headers and the small side members only. Each sample becomes one
:class:`InputItem` whose ``member`` says where its video lies inside the tar; the worker copies
those bytes out (:func:`extracted_source`) just before encoding, so the usual journal, atomic
shards and ``failures.jsonl`` apply unchanged. A sample that breaks a rule becomes an item with
``invalid`` set, which the worker reports as that input's failure: counted, never a crash.

Everything read here is untrusted (the set may come from anywhere): member names, sizes,
labels and captions are checked where they are read, with ``shards.schema``'s checks (member
type and size caps, ``KEY.json`` fields) plus the rules only a foreign set needs here.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from vidshard.shards.schema import (
    MANIFEST,
    VIDEO_EXT,
    Manifest,
    MemberError,
    SampleMeta,
    check_member_size,
    check_tar_member,
)

from .inputs import InputError, InputItem

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov", "m4v", "ogv", "mpg", "mpeg", "ts", "flv")
MAX_NAME_CHARS = 1024


class SampleProblem(ValueError):
    """One sample of a shard-set INPUT cannot be used; the message says why."""


def is_shard_input(source: Path) -> bool:
    """A folder holding ``manifest.json`` or top-level ``*.tar`` files."""
    if not source.is_dir():
        return False
    return (source / MANIFEST).is_file() or any(p.suffix == ".tar" and p.is_file() for p in source.iterdir())


def shard_files(source: Path) -> list[Path]:
    """The shards to read: the manifest's (checked names, inside the folder), else ``*.tar`` sorted."""
    if (source / MANIFEST).is_file():
        try:
            manifest = Manifest.load(source)  # checks every entry, shard names included
        except (ValueError, TypeError, KeyError) as e:
            raise InputError(f"{source / MANIFEST}: not a usable manifest ({e})") from None
        return [source / s.name for s in manifest.shards]
    return sorted(p for p in source.iterdir() if p.suffix == ".tar" and p.is_file())


def list_shard_samples(source: Path) -> list[InputItem]:
    """One :class:`InputItem` per sample of every shard (a bad sample: ``invalid`` set)."""
    items: list[InputItem] = []
    for shard in shard_files(source):
        try:
            items += _shard_items(shard)
        except (OSError, tarfile.TarError, EOFError) as e:
            why = f"shard unreadable ({type(e).__name__}: {e}); run `vidshard verify` on the old set"
            items.append(InputItem(path=shard, rel=shard.name, invalid=why))
    return items


def _shard_items(shard: Path) -> list[InputItem]:
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    problems: dict[str, str] = {}
    with tarfile.open(shard, "r:") as tar:
        for m in tar:
            try:
                key, ext = split_member_name(m)
            except (SampleProblem, MemberError) as e:
                problems.setdefault(m.name[:MAX_NAME_CHARS], str(e))
                continue
            if ext in groups.setdefault(key, {}):
                problems.setdefault(key, f"two members named {key}.{ext}")
            groups[key][ext] = m
        return [_item(shard, tar, key, members, problems.get(key)) for key, members in groups.items()] + \
            [InputItem(path=shard, rel=f"{shard.name}/{name}", invalid=why) for name, why in problems.items()
             if name not in groups]


def split_member_name(m: tarfile.TarInfo) -> tuple[str, str]:
    """``(key, ext)`` of a regular member with a safe relative name (the webdataset split)."""
    name = m.name
    unsafe = name.startswith("/") or ".." in PurePosixPath(name).parts or "\0" in name
    if unsafe or len(name) > MAX_NAME_CHARS:
        raise SampleProblem(f"member name {name[:200]!r} is unsafe (absolute, '..' or too long)")
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not m.isreg() or not stem or not dot or not ext:
        check_tar_member(m)  # says which rule it breaks
    ext = ext.lower()
    try:  # any video member gets the video cap, not the cap of an unknown type
        check_member_size(VIDEO_EXT if ext.rpartition(".")[2] in VIDEO_EXTS else ext, m.size)
    except MemberError as e:
        raise SampleProblem(str(e)) from None
    return (f"{folder}/{stem}" if folder else stem), ext


def _item(shard: Path, tar: tarfile.TarFile, key: str, members: dict[str, tarfile.TarInfo],
          problem: str | None) -> InputItem:
    where = f"{shard.name}/{key}"
    try:
        if problem:
            raise SampleProblem(problem)
        video_exts = [e for e in members if e.rpartition(".")[2] in VIDEO_EXTS]
        if len(video_exts) != 1:
            raise SampleProblem(f"{len(video_exts)} video members ({', '.join(video_exts) or 'none'}); "
                                "a sample needs exactly one")
        video = members[video_exts[0]]
        side = {e: _side(tar, m, e) for e, m in members.items() if e in ("json", "txt", "cls")}
        origin = sample_origin(key, side)
    except SampleProblem as e:
        return InputItem(path=shard, rel=key, invalid=f"{where}: {e}")
    label = origin.pop("label_name", None)
    caption = origin.pop("caption", None)
    return InputItem(path=shard, rel=key, label_name=label, caption=caption, origin=origin,
                     member=(str(shard.resolve()), video.offset_data, video.size, video_exts[0]))


def _side(tar: tarfile.TarFile, m: tarfile.TarInfo, ext: str) -> Any:
    """A side member, checked: ``.json`` an object, ``.txt`` text, ``.cls`` an integer."""
    data = tar.extractfile(m).read()
    try:
        text = data.decode("utf-8")
        if ext == "json":
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
        if ext == "cls":
            return int(text.strip())
        return text.strip()
    except (UnicodeDecodeError, ValueError) as e:
        raise SampleProblem(f".{ext} member does not parse ({e})") from None


def sample_origin(key: str, side: dict[str, Any]) -> dict[str, Any]:
    """What the new samples carry over: ``video``, ``start_s``, ``label_name``, ``caption``,
    ``captions``, ``source_key`` (the old key) and ``source_video_id``, each checked."""
    meta = side.get("json", {})
    if "video_id" in meta and "chunk" in meta:  # a vidshard KEY.json: the schema's own checks
        try:
            SampleMeta.from_dict(meta)
        except MemberError as e:
            raise SampleProblem(str(e)) from None
    origin: dict[str, Any] = {"source_key": key, "video": _text(meta.get("video") or meta.get("url")) or key,
                              "start_s": _seconds(meta.get("start_s", 0.0))}
    if isinstance(meta.get("video_id"), str):
        origin["source_video_id"] = _text(meta["video_id"])
    label = meta.get("label_name")
    if label is None and "cls" in side:
        label = str(side["cls"])
    if label is not None:
        if not isinstance(label, str | int) or isinstance(label, bool):
            raise SampleProblem(f"label {label!r} is neither a name nor an integer")
        origin["label_name"] = _text(str(label))
    caption = meta.get("caption", side.get("txt"))
    if caption is not None:
        origin["caption"] = _text(caption)
    captions = meta.get("captions")
    if captions is not None:
        if not isinstance(captions, list) or len(captions) > 1000:
            raise SampleProblem("captions is not a list of (at most 1000) strings")
        origin["captions"] = [_text(c) for c in captions]
    return origin


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise SampleProblem(f"expected text, got {type(value).__name__}")
    return value[:10_000]


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise SampleProblem(f"start_s {value!r} is not a time in seconds")
    return float(value)


@contextmanager
def extracted_source(item: InputItem, staging: Path) -> Iterator[Path]:
    """The item's video as a file: the source itself, or its tar member copied out (then removed).

    The copy lives in ``STAGING/<vid>.<pid>.src.tmp/`` so a kill leaves nothing a restart keeps.
    """
    if item.member is None:
        yield item.path
        return
    tar_path, offset, size, ext = item.member
    folder = staging / f"{item.vid}.{os.getpid()}.src.tmp"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"video.{ext.rpartition('.')[2]}"
    try:
        with open(tar_path, "rb") as src, open(out, "wb") as dst:
            if os.fstat(src.fileno()).st_size < offset + size:
                raise SampleProblem(f"{Path(tar_path).name}: the video member runs past the end of the shard")
            src.seek(offset)
            shutil.copyfileobj(_Limited(src, size), dst, 1 << 20)
        yield out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Limited:
    """A reader that stops after ``n`` bytes."""

    def __init__(self, f: Any, n: int) -> None:
        self.f, self.left = f, n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data
