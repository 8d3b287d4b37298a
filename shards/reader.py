"""Samples at given positions of a shard set, read front to back without touching the others.

The loader asks for the samples of one shuffle block at a time, as spans in reading order
(:mod:`split`). A :class:`ShardReader` keeps the current shard open between blocks, so a shard is read
once from front to back; samples that are not asked for are passed over by their tar headers (a local
shard is seeked over, so their bytes are never read; a streamed one is read past), never extracted or
decoded. A sample is the run of consecutive members sharing a key (webdataset's rule: the name up to
the first dot of its base name), numbered in stored order.

Everything here is untrusted input: a shard that will not open or breaks off, a member that is not a
regular file, or a shard with fewer samples than the manifest lists make the affected samples
*missing*, with a reason; the caller reports and counts them, the epoch goes on.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from typing import Any, BinaryIO

from .split import Position, Span
from .tarsamples import add_member, member_key


class _Cursor:
    """One open shard, positioned after the last sample taken."""

    def __init__(self, stream: BinaryIO, url: str) -> None:
        self.url, self.stream = url, stream
        seekable = getattr(stream, "seekable", lambda: False)()
        # Seekable (a local or cached shard): passing a member over reads only its header.
        self.tar = tarfile.open(fileobj=stream, mode="r:" if seekable else "r|")  # noqa: SIM115
        self.index, self.key, self.taken = -1, None, -1
        self.peeked: tuple[tarfile.TarInfo, str, str, int] | None = None
        self.done = False

    def _peek(self) -> tuple[tarfile.TarInfo, str, str, int] | None:
        while self.peeked is None and not self.done:
            member = self.tar.next()
            if member is None:
                self.done = True
                break
            if (named := member_key(member)) is None:
                continue
            key, ext = named
            if key != self.key:
                self.key, self.index = key, self.index + 1
            self.peeked = (member, key, ext, self.index)
        return self.peeked

    def take(self, index: int) -> dict[str, Any] | str:
        """Sample ``index`` (not before the last one taken), or why it is missing."""
        sample: dict[str, Any] | None = None
        self.taken = index
        while (head := self._peek()) is not None and head[3] <= index:
            member, key, ext, i = head
            self.peeked = None
            if i < index:
                continue  # another reader's (or an already consumed) sample: header only
            sample = sample or {"__key__": key, "__url__": self.url}
            add_member(sample, self.tar, member, ext)  # over its size cap, or a link or device: not read
        if sample is None:
            return f"the shard ends after {self.index + 1} samples"
        return sample

    def close(self) -> None:
        self.tar.close()
        self.stream.close()


class ShardReader:
    """Samples by position from shards opened with ``open`` (``ShardSource.open``: the shard set's one
    door to bytes, http capped at the manifest's size and with a deadline)."""

    def __init__(self, open: Callable[[int], BinaryIO], url: Callable[[int], str]) -> None:
        self.open, self.url = open, url
        self.cursor: _Cursor | None = None
        self.shard: int | None = None
        self.broken: dict[int, str] = {}  # shard -> why it cannot be read (this pass)
        self.problems: list[tuple[str, str]] = []  # (shard url, why) not yet reported

    def _cursor(self, shard: int, start: int) -> _Cursor | None:
        if shard in self.broken:
            return None
        if self.shard != shard or self.cursor is None or self.cursor.taken >= start:
            self.close()
            try:
                self.cursor, self.shard = _Cursor(self.open(shard), self.url(shard)), shard
            except Exception as exn:  # unreachable, unverifiable, not a tar: its samples are missing
                self._broke(shard, exn)
                return None
        return self.cursor

    def read(self, spans: list[Span]) -> dict[Position, dict[str, Any] | str]:
        """Every sample of ``spans`` (in reading order): the sample, or the reason it is missing."""
        out: dict[Position, dict[str, Any] | str] = {}
        for span in spans:
            cursor = self._cursor(span.shard, span.start)
            for i in range(span.start, span.stop):
                if cursor is None:
                    out[span.shard, i] = self.broken.get(span.shard, "unreadable shard")
                    continue
                try:
                    out[span.shard, i] = cursor.take(i)
                except Exception as exn:  # a shard that breaks off mid-way: the rest of it is missing
                    self._broke(span.shard, exn)
                    self.close()
                    cursor = None
                    out[span.shard, i] = self.broken[span.shard]
        return out

    def _broke(self, shard: int, exn: Exception) -> None:
        self.broken[shard] = f"{type(exn).__name__}: {exn}"[:300]
        self.problems.append((self.url(shard).rsplit("/", 1)[-1], self.broken[shard]))

    def read_all(self, shard: int) -> list[dict[str, Any] | str]:
        """Every sample of a shard of unknown count (a ``pipe:`` or pattern without manifest)."""
        self.close()
        out: list[dict[str, Any] | str] = []
        try:
            cursor = _Cursor(self.open(shard), self.url(shard))
            while cursor._peek() is not None:
                out.append(cursor.take(cursor.peeked[3]))
            cursor.close()
        except Exception as exn:
            self._broke(shard, exn)
            out.append(self.broken[shard])
        return out

    def close(self) -> None:
        if self.cursor is not None:
            self.cursor.close()
        self.cursor = self.shard = None
