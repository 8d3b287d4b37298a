"""Open files of a local shard set without ever leaving its folder.

A manifest may come from another machine and a set's folder may hold symlinks (a
copy made with ``cp -a``, or a planted link): every file of a set is looked up
through :func:`set_file`, which checks the name (:func:`~vidshard.shards.schema.check_shard_name`,
or one of the set's fixed names), resolves the real path and refuses anything outside the
folder; :func:`open_set_file` then opens that real path without following a link swapped in
since, and only when it is a regular file (a FIFO or device would block or never end).
Callers resolve on every use, not once at start, so a file replaced by a link later is
refused too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from .schema import FAILURES, MANIFEST, ManifestError, check_shard_name

FIXED_NAMES = (MANIFEST, FAILURES)
"""Files of a set that are not shards."""


class OutsideSetError(ManifestError):
    """A set's file is a link to somewhere outside the set, or not a regular file."""


def set_file(folder: str | Path, name: str) -> Path:
    """The real path of file ``name`` of the set in ``folder`` (it need not exist).

    Raises :class:`~vidshard.shards.schema.ManifestError` for a name outside the shard-name rule
    and :class:`OutsideSetError` when the path resolves outside the folder.
    """
    if name not in FIXED_NAMES:
        check_shard_name(name)
    root = Path(folder).resolve()
    real = (root / name).resolve()
    if not real.is_relative_to(root) or real == root:
        raise OutsideSetError(f"{Path(folder) / name} is a link to {real}, outside the shard set {root}; "
                              "a set's files must be inside its folder")
    return real


def open_set_file(folder: str | Path, name: str) -> BinaryIO:
    """Open file ``name`` of the set in ``folder`` for reading (see :func:`set_file`).

    ``FileNotFoundError`` when it does not exist; :class:`OutsideSetError` when it is a link out
    of the set (also one swapped in after the check: the final open does not follow links) or
    not a regular file.
    """
    real = set_file(folder, name)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:  #: the file became a symlink after it was resolved
            raise OutsideSetError(f"{real} became a link while it was being opened; refused") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OutsideSetError(f"{real} is not a regular file; a set's files are plain files")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
