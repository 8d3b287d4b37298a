"""Samples out of one shard's tar stream, each member's size checked before a byte of it is read.

webdataset's ``tar_file_iterator`` reads every member whole (``extractfile(info).read()``) before any
later stage can look at it, so a 200 MB ``KEY.json`` would cost 200 MB in every loader worker. Here the
size in the member's tar header is checked first (:func:`member_problem`): an oversize member is passed
over unread (tarfile's stream mode discards it in 10 KB blocks) and its sample is marked corrupt.
Members are grouped into samples as webdataset does: ``KEY.EXT`` split at the first dot of the file
name, extensions lower-cased, ``__...__`` entries and non-regular members (links, folders) skipped.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from webdataset.tariterators import base_plus_ext

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own entries, never sample members

# Largest member read into memory, by extension (metadata is small; a video gets a generous bound).
_CAPS = {"json": 1 << 20, "cls": 64, "txt": 1 << 20}
_DEFAULT_CAP = 1 << 30


def check_member_size(ext: str, size: int) -> None:
    """Raise ``ValueError`` when a ``KEY.ext`` member of ``size`` bytes is larger than its type may be."""
    cap = _CAPS.get(ext, _DEFAULT_CAP)
    if size > cap:
        raise ValueError(f"{size} bytes, more than the {cap} a .{ext} member may have")


def member_problem(name: str, ext: str, size: int) -> str | None:
    """Why member ``name`` must not be read into memory, or ``None`` when it may be."""
    try:
        check_member_size(ext, size)
    except ValueError as exn:
        return f"{name}: {exn}; not read"
    return None


def tar_samples(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard in stored order: ``{"__key__", "__url__", EXT: bytes, ...}``.

    A sample with an unusable member (too large for its type, or a second member of the same type)
    carries ``"__error__"`` (the reason) instead of that member, so the reader counts it as corrupt.
    A damaged tar raises ``tarfile.TarError`` (or the stream's own error) after the last good sample.
    """
    sample: dict[str, Any] | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # closes the tar reader, not ``stream``
        for info in tar:
            key, ext = base_plus_ext(info.name)
            if key is None or not info.isreg() or _META.match(info.name):
                continue
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            sample = sample or {"__key__": key, "__url__": url}
            ext = ext.lower()
            problem = member_problem(info.name, ext, info.size)
            if problem is None and ext in sample:
                problem = f"{info.name}: a second .{ext} member in one sample"
            if problem is not None:
                sample.setdefault("__error__", problem)
            else:
                sample[ext] = tar.extractfile(info).read()
            tar.members = []  # as webdataset: keep no list of every header of a long shard
    if sample is not None:
        yield sample
