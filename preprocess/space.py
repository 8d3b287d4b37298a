"""Is the OUTPUT side healthy? Free space and writability of the folders a run writes.

An encode that fails because the disk under OUTPUT is full (or read-only, over quota,
failing) says nothing about the input video: recording it in ``failures.jsonl`` would
make every later run skip a good video. So after any failed encode the worker asks
:func:`output_trouble` about the staging folder *before* deleting what ffmpeg wrote
(deleting it frees the space again), and the parent checks the free space before and
while encoding. Output trouble stops the run with :class:`OutputFailure`; nothing is
recorded against any video, and the next run encodes them.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# errno values that mean "the place we write to failed", never "the input is bad".
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})
# ffmpeg's wording for a failed write (its own message for the muxer's last write, and the
# strerror texts of OUTPUT_ERRNOS); the trailer is written after the whole input was decoded.
_WRITE_MARKERS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                  "File too large", "Error writing trailer")
# A disk with less free space than this after a failed encode is full, whatever ffmpeg said.
MIN_PROBE_FREE = 1 << 20
_PROBE_BYTES = 64 << 10


class OutputFailure(OSError):
    """The OUTPUT side failed (full, read-only, over quota, I/O error): stop the run, blame no video."""


def human(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``folder``."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def output_trouble(folder: Path, need: int, hint: str = "") -> str | None:
    """Why writing into ``folder`` is failing, or ``None`` when it looks healthy.

    ``hint`` is the error text of the failed step (ffmpeg's output, an exception). Trouble is: the
    hint names a write failure, fewer than ``max(need, 1 MiB)`` bytes are free, or a small file
    cannot be written and fsynced there (a quota or an I/O error shows only on writing).
    """
    marker = next((m for m in _WRITE_MARKERS if m in hint), None)
    try:
        free = free_bytes(folder)
    except OSError as e:
        return f"{folder} cannot be examined ({e.strerror})"
    where = f"{folder} ({human(free)} free)"
    if marker:
        return f"writing into {where} failed: {marker}"
    if free < max(need, MIN_PROBE_FREE):
        return f"the disk is (nearly) full: {where}"
    probe = folder / f".vidshard-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return f"{folder} cannot be written ({e.strerror}; {human(free)} free)"
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return None


def check_margin(folder: Path, margin: int) -> None:
    """Raise :class:`OutputFailure` when ``folder``'s filesystem has less than ``margin`` bytes free."""
    free = free_bytes(folder)
    if free < margin:
        raise OutputFailure(f"only {human(free)} free on the disk of {folder}, below --min-free-space "
                            f"{human(margin)}: stopped before the disk fills up. {AFTER}")


@contextmanager
def output_errors(folder: Path) -> Iterator[None]:
    """Turn an OSError of the OUTPUT side raised inside the block into an :class:`OutputFailure`."""
    try:
        yield
    except OSError as e:
        failure = as_output_failure(e, folder)
        if failure is None or failure is e:
            raise
        raise failure from e


def as_output_failure(e: OSError, folder: Path) -> OutputFailure | None:
    """An error the OUTPUT side raised in this process, as an :class:`OutputFailure` (else None)."""
    if isinstance(e, OutputFailure):
        return e
    if e.errno not in OUTPUT_ERRNOS:
        return None
    try:
        free = human(free_bytes(folder))
    except OSError:
        free = "unknown"
    return OutputFailure(f"writing the shard set in {folder} failed ({e.strerror}; {free} free). {AFTER}")


AFTER = ("Nothing was recorded against any video; free some space (or fix the disk) and run the same "
         "command again: finished work is kept.")
