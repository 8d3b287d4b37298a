"""The shard-set contract, format ``vidshard/1``: the one module both stages import.

A shard set is a folder (or a URL prefix serving one) with ``manifest.json``,
shards ``NAME-NNNNNN.tar`` and ``failures.jsonl``. Each sample in a shard is one
short clip of one source video, stored as the tar members ``KEY.mp4``,
``KEY.json`` and (when labeled) ``KEY.cls``. See ARCHITECTURE.md and the README.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

FORMAT = "vidshard/1"
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
DEFAULT_PREFIX = "train"

# Tar member extensions of one sample (the webdataset convention: KEY.EXT).
VIDEO_EXT = "mp4"
META_EXT = "json"
LABEL_EXT = "cls"

_SHARD_RE = re.compile(r"^(?P<prefix>[A-Za-z0-9_\-]+)-(?P<index>\d{6})\.tar$")


def shard_name(prefix: str, index: int) -> str:
    """``train-000042.tar``: six digits, so names sort in order."""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", prefix):
        raise ValueError(f"shard prefix {prefix!r} may hold only letters, digits, '_' and '-'")
    return f"{prefix}-{index:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """Inverse of :func:`shard_name`; ``None`` for names that are not shards."""
    m = _SHARD_RE.match(name)
    return (m["prefix"], int(m["index"])) if m else None


def video_id(rel_path: str, start_s: float | None = None, end_s: float | None = None) -> str:
    """Stable id of one input: 16 hex digits of the SHA-1 of its path (and segment).

    ``rel_path`` is the path relative to the input root with ``/`` separators, so
    the id is the same on every machine. An annotated segment (``start_s`` /
    ``end_s`` from a CSV or JSONL list) gets its own id.
    """
    text = rel_path.replace(os.sep, "/")
    if start_s is not None or end_s is not None:
        text += f"@{_fmt_time(start_s)}-{_fmt_time(end_s)}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _fmt_time(t: float | None) -> str:
    return "" if t is None else f"{t:.3f}"


def sample_key(vid: str, chunk: int) -> str:
    """``KEY`` of chunk ``chunk`` of input ``vid``. Contains no dot (webdataset
    splits member names at the first dot) and is stable across runs."""
    if "." in vid or "/" in vid:
        raise ValueError(f"video id {vid!r} may not contain '.' or '/'")
    return f"{vid}_{chunk:05d}"


@dataclass(frozen=True, kw_only=True)
class SampleMeta:
    """The ``KEY.json`` member of a sample."""

    video: str
    """Source path relative to the input root, ``/``-separated."""
    video_id: str
    """:func:`video_id` of the source (and segment)."""
    chunk: int
    """Index of this chunk within the source (or segment), from 0."""
    start_s: float
    """Start of the chunk in the source's timeline, seconds."""
    end_s: float
    """End of the chunk in the source's timeline, seconds."""
    frames: int
    """Number of frames in ``KEY.mp4``."""
    fps: float
    """Average frame rate of ``KEY.mp4``."""
    width: int
    """Width of ``KEY.mp4`` in (square) pixels."""
    height: int
    """Height of ``KEY.mp4`` in (square) pixels."""
    label: int | None = None
    """Class index into the manifest's ``classes``, when labeled."""
    label_name: str | None = None
    """Class name, when labeled."""
    caption: str | None = None
    """Free text from the input list, when given (the first, when there are several)."""
    captions: list[str] | None = None
    """Every caption, when the input list gave several for this clip (a contrastive run samples one)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further fields a writer chose to add; kept on round trips."""

    def __post_init__(self) -> None:
        if self.end_s < self.start_s:
            raise ValueError(f"end_s {self.end_s} before start_s {self.start_s}")
        if (self.label is None) != (self.label_name is None):
            raise ValueError("label and label_name go together")

    @property
    def key(self) -> str:
        return sample_key(self.video_id, self.chunk)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d = {k: v for k, v in d.items() if v is not None}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleMeta:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)


def sample_captions(meta: dict[str, Any]) -> list[str]:
    """The distinct non-empty captions of a parsed ``KEY.json`` (``caption`` first, then ``captions``).

    Untrusted input: a ``caption`` that is not a string or ``captions`` that is not a list of strings
    raises ``ValueError`` naming the field.
    """
    caption, captions = meta.get("caption"), meta.get("captions")
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"KEY.json 'caption' must be a string, got {type(caption).__name__}")
    if captions is not None and (not isinstance(captions, list) or
                                 not all(isinstance(c, str) for c in captions)):
        raise ValueError("KEY.json 'captions' must be a list of strings")
    texts = [caption, *(captions or [])]
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def sample_members(meta: SampleMeta, mp4: bytes) -> dict[str, Any]:
    """The webdataset sample dict (``__key__`` plus member bytes) for one clip."""
    sample: dict[str, Any] = {
        "__key__": meta.key,
        VIDEO_EXT: mp4,
        META_EXT: json.dumps(meta.to_dict(), ensure_ascii=False, sort_keys=True).encode("utf-8"),
    }
    if meta.label is not None:
        sample[LABEL_EXT] = str(meta.label).encode("ascii")
    return sample


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """One entry of the manifest's ``shards`` list."""

    name: str
    """File name, ``NAME-NNNNNN.tar``."""
    samples: int
    """Number of samples in the shard."""
    bytes: int
    """Size of the file in bytes."""
    sha256: str
    """Hex SHA-256 of the whole file."""


TOTAL_KEYS = ("videos", "failed", "samples", "seconds", "bytes_in", "bytes_out")


@dataclass(kw_only=True)
class Manifest:
    """``manifest.json``: what a shard set holds and how it was made."""

    settings: dict[str, Any]
    """Every preprocessing choice (chunk seconds, short side, fps, gop, crf, codec, ...)."""
    shards: list[ShardInfo] = field(default_factory=list)
    """The shards in order."""
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOTAL_KEYS, 0))
    """``videos``, ``failed``, ``samples``, ``seconds``, ``bytes_in``, ``bytes_out``."""
    classes: list[str] | None = None
    """Label names, index = label id; ``None`` when unlabeled."""
    format: str = FORMAT
    """Always ``vidshard/1`` for this version of the contract."""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    """UTC time the shard set was (last) written."""
    tool_version: str = ""
    """vidshard version that wrote it."""

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ValueError(f"unsupported shard-set format {self.format!r} (this vidshard reads {FORMAT!r})")
        if not self.tool_version:
            from vidshard import __version__

            self.tool_version = __version__

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "created": self.created,
            "tool_version": self.tool_version,
            "settings": self.settings,
            "totals": self.totals,
            "classes": self.classes,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("format") != FORMAT:
            raise ValueError(
                f"not a vidshard/1 manifest (format={d.get('format')!r}); "
                "was it written by another tool or a newer vidshard?"
            )
        return cls(
            format=d["format"],
            created=d.get("created", ""),
            tool_version=d.get("tool_version", ""),
            settings=dict(d.get("settings", {})),
            totals=dict(d.get("totals", {})),
            classes=d.get("classes"),
            shards=[ShardInfo(**s) for s in d.get("shards", [])],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read ``manifest.json`` from a local path (a file or the shard-set folder)."""
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST
        try:
            return cls.from_json(p.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{p}: no manifest.json here; is this a shard set made by `vidshard preprocess`?"
            ) from None

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/manifest.json`` atomically."""
        return atomic_write(Path(folder) / MANIFEST, self.to_json().encode("utf-8"))


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one.

    ``data`` is the bytes, or a function that writes them to the open file (so a large object,
    such as a checkpoint, is streamed rather than held in memory twice).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a shard set is shared and served
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def failure_record(path: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One line of ``failures.jsonl``: the input's path and a reason a person understands."""
    return {"path": path, "reason": reason, **extra}
