"""Write samples into size-capped POSIX tar shards, each one atomically.

A shard is written under a temporary name (``.NAME-NNNNNN.tar.tmp``), and only
when it is complete is it flushed, fsynced and renamed to its final name, so a
reader (or a resumed run) never sees a partial shard. The SHA-256 is computed
while writing, so finishing a shard costs no second read.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds

from .schema import ShardInfo, fsync_dir, shard_name

# Fixed member mtime: the same samples give byte-identical shards.
MEMBER_MTIME = 1_700_000_000.0


class _HashingFile:
    """A write-only file wrapper that keeps a running SHA-256 and byte count."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self.f.flush()


class ShardWriter:
    """Append samples to shards ``PREFIX-NNNNNN.tar`` of at most ``max_bytes`` each.

    ``write`` returns the shards it finished (at most one); ``close`` finishes
    the open one. A sample larger than ``max_bytes`` gets a shard of its own.
    """

    def __init__(self, folder: str | Path, prefix: str = "train", max_bytes: int = 1 << 30,
                 start_index: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.index = start_index
        self._file: BinaryIO | None = None
        self._hash: _HashingFile | None = None
        self._tar: wds.TarWriter | None = None
        self._samples = 0

    @property
    def open_name(self) -> str:
        return shard_name(self.prefix, self.index)

    def _tmp_path(self) -> Path:
        return self.folder / f".{self.open_name}.tmp"

    def _open(self) -> None:
        self._file = open(self._tmp_path(), "wb")  # noqa: SIM115 (closed in _finish)
        self._hash = _HashingFile(self._file)
        self._tar = wds.TarWriter(self._hash, encoder=False, mtime=MEMBER_MTIME,
                                  user="vidshard", group="vidshard")
        self._samples = 0

    def write(self, sample: dict[str, Any]) -> list[ShardInfo]:
        """Add one sample dict (``__key__`` plus ``ext: bytes`` members)."""
        done: list[ShardInfo] = []
        size = sum(len(v) + 1024 for k, v in sample.items() if not k.startswith("__"))
        if self._tar is not None and self._samples and self._hash.bytes + size > self.max_bytes:
            done.append(self._finish())
        if self._tar is None:
            self._open()
        self._tar.write(sample)
        self._samples += 1
        return done

    def close(self) -> ShardInfo | None:
        """Finish the open shard, if it holds any sample; remove an empty one."""
        if self._tar is None:
            return None
        if self._samples == 0:
            self._tar.close()
            self._file.close()
            self._tmp_path().unlink(missing_ok=True)
            self._tar = None
            return None
        return self._finish()

    def abort(self) -> None:
        """Drop the open shard without publishing it."""
        if self._tar is not None:
            self._tar.close()  # the tar stream would otherwise write to a closed file on collection
            self._file.close()
            self._tmp_path().unlink(missing_ok=True)
            self._tar = None

    def _finish(self) -> ShardInfo:
        self._tar.close()  # writes the end-of-archive blocks through _HashingFile
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self.folder / self.open_name
        os.replace(self._tmp_path(), final)
        fsync_dir(self.folder)
        info = ShardInfo(name=final.name, samples=self._samples, bytes=self._hash.bytes,
                         sha256=self._hash.sha.hexdigest())
        self._tar = None
        self.index += 1
        return info

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
