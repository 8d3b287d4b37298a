"""Samples out of one shard's tar stream, each member's size checked before a byte of it is read.

webdataset's ``tar_file_iterator`` reads every member whole (``extractfile(info).read()``) before any
later stage can look at it, so a 200 MB ``KEY.json`` would cost 200 MB in every loader worker. Here the
size in the member's tar header is checked first (``schema.check_tar_member``: the caps by type, regular
files only): a member over its cap is passed over unread (tarfile's stream mode discards it in 10 KB
blocks) and its sample is marked corrupt, as is a sample with a link or device member. Members are
grouped into samples as webdataset does: ``KEY.EXT`` split at the first dot of the file name,
extensions lower-cased, ``__...__`` entries and entries without a KEY (folders) skipped.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from webdataset.tariterators import base_plus_ext

from .schema import MemberError, check_tar_member

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's own entries, never sample members


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why member ``info`` must not be read (over its size cap, not a regular file), or ``None``."""
    try:
        check_tar_member(info)
    except MemberError as exn:
        return f"{exn.reason}: {exn}; not read"
    return None


def member_key(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """``(KEY, ext)`` of a sample member (webdataset's split at the first dot of the base name, the
    extension lower-cased), or ``None`` for entries that are no sample member (folders, ``__...__``)."""
    key, ext = base_plus_ext(info.name)
    if key is None or info.isdir() or _META.match(info.name):
        return None
    return key, ext.lower()


def add_member(sample: dict[str, Any], tar: tarfile.TarFile, info: tarfile.TarInfo, ext: str) -> None:
    """Read member ``info`` into ``sample[ext]``, or, when it must not be read (see :func:`member_problem`)
    or repeats an extension, mark the sample corrupt with ``"__error__"`` without reading it."""
    problem = member_problem(info)
    if problem is None and ext in sample:
        problem = f"{info.name}: a second .{ext} member in one sample"
    if problem is not None:
        sample.setdefault("__error__", problem)
    else:
        sample[ext] = tar.extractfile(info).read()
    tar.members = []  # as webdataset: keep no list of every header of a long shard


def tar_samples(stream: BinaryIO, url: str) -> Iterator[dict[str, Any]]:
    """Samples of one shard in stored order: ``{"__key__", "__url__", EXT: bytes, ...}``.

    A sample with an unusable member (too large for its type, or a second member of the same type)
    carries ``"__error__"`` (the reason) instead of that member, so the reader counts it as corrupt.
    A damaged tar raises ``tarfile.TarError`` (or the stream's own error) after the last good sample.
    """
    sample: dict[str, Any] | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # closes the tar reader, not ``stream``
        for info in tar:
            if (named := member_key(info)) is None:
                continue
            key, ext = named
            if sample is not None and sample["__key__"] != key:
                yield sample
                sample = None
            sample = sample or {"__key__": key, "__url__": url}
            add_member(sample, tar, info, ext)
    if sample is not None:
        yield sample
