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
import tarfile
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

_PREFIX = r"[A-Za-z0-9_][A-Za-z0-9_\-]*"  # ASCII only; no leading "-" (an option to other tools)
_SHARD_RE = re.compile(rf"(?P<prefix>{_PREFIX})-(?P<index>[0-9]{{6}})\.tar")

MAX_SHARD_NAME = 200
"""Longest shard name a manifest may give (file systems allow 255 bytes)."""

MEMBER_MAX_BYTES: dict[str, int] = {
    META_EXT: 1 << 20,  # KEY.json: a few hundred bytes of metadata, captions included
    LABEL_EXT: 64,  # KEY.cls: one integer
    "txt": 1 << 20,  # a caption
    VIDEO_EXT: 2 << 30,  # KEY.mp4: a clip of a few seconds is MBs; 2 GiB is generous
}
"""Largest tar member a reader accepts, by extension; a larger one is a corrupt sample."""
MEMBER_MAX_OTHER = 64 << 20
"""Largest member of an extension not in :data:`MEMBER_MAX_BYTES`."""
MANIFEST_MAX_BYTES = 256 << 20
"""Largest ``manifest.json`` a reader accepts (a million shards need about 200 MB)."""


class ManifestError(ValueError):
    """A manifest (local or served) breaks the format; the message names the manifest and the entry."""


class MemberError(ValueError):
    """A tar member or its metadata breaks the format (wrong type, too large, not a regular
    file); the sample is corrupt. The message says what is wrong, not where: callers add that."""

    def __init__(self, message: str, reason: str = "bad metadata") -> None:
        super().__init__(message)
        self.reason = reason
        """Short kind of problem, for counting skipped samples: ``bad metadata``,
        ``not a regular file``, ``oversize member`` or ``badly named member``."""


def shard_name(prefix: str, index: int) -> str:
    """``train-000042.tar``: six digits, so names sort in order."""
    if not re.fullmatch(_PREFIX, prefix):
        raise ValueError(f"shard prefix {prefix!r} may hold only letters, digits, '_' and '-' "
                         "(and may not start with '-')")
    return f"{prefix}-{index:06d}.tar"


def parse_shard_name(name: str) -> tuple[str, int] | None:
    """Inverse of :func:`shard_name`; ``None`` for names that are not shards."""
    m = _SHARD_RE.fullmatch(name)
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
    """Free text from the input list, when given."""
    starts_at_cut: bool | None = None
    """With ``--split-at-scenes``: whether the chunk starts at a shot cut (``None``: not detected)."""
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
    def from_dict(cls, d: object) -> SampleMeta:
        """Build from a ``KEY.json`` object; :class:`MemberError` when a field is missing or of the
        wrong type (the member may come from another machine)."""
        if not isinstance(d, dict):
            raise MemberError(f"metadata must be a JSON object, not {type(d).__name__}")
        for name, kinds in _META_TYPES.items():
            _check_meta_field(d, name, kinds)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except ValueError as e:
            raise MemberError(f"metadata: {e}") from None

    @classmethod
    def from_json(cls, data: bytes | str) -> SampleMeta:
        """Parse a ``KEY.json`` member (:class:`MemberError` for anything that is not valid metadata)."""
        try:
            d = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise MemberError(f"metadata is not valid JSON ({str(e)[:80]})") from None
        return cls.from_dict(d)


_NUMBER = (int, float)
_META_TYPES: dict[str, tuple[type, ...]] = {
    "video": (str,), "video_id": (str,), "chunk": (int,), "start_s": _NUMBER, "end_s": _NUMBER,
    "frames": (int,), "fps": _NUMBER, "width": (int,), "height": (int,),
    "label": (int, type(None)), "label_name": (str, type(None)), "caption": (str, type(None)),
    "starts_at_cut": (bool, type(None)),
}
"""Type of each ``KEY.json`` field (``label``, ``label_name`` and ``caption`` may be absent)."""


def _check_meta_field(d: dict[str, Any], name: str, kinds: tuple[type, ...]) -> None:
    if name not in d:
        if type(None) in kinds:
            return
        raise MemberError(f"metadata has no {name!r}")
    v = d[name]
    if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
        raise MemberError(f"metadata {name!r} is {v!r:.40}, not a {kinds[0].__name__}")
    if isinstance(v, (int, float)) and not 0 <= v < float("inf"):
        raise MemberError(f"metadata {name!r} is {v!r:.40}; it must be a non-negative finite number")
    if name == "video_id" and ("." in v or "/" in v or not v):
        raise MemberError(f"metadata video_id {v!r:.40} is empty or holds '.' or '/'")


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


MIN_SAMPLE_BYTES = 512  # one tar header: no sample is smaller, so a shard holds at most bytes // 512


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


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def check_shard_name(name: object) -> str:
    """``name`` if it is a shard name of the format (``PREFIX-NNNNNN.tar``, part names
    ``PREFIX-pIIofNN-NNNNNN.tar``), else :class:`ManifestError`.

    A manifest may come from another machine: a name is joined to the set's folder or URL and
    opened, so it must name a file inside the set and nothing else (no ``/``, ``\\``, ``..``,
    absolute path, URL scheme such as ``pipe:``, NUL byte or over-long name).
    """
    if not isinstance(name, str):
        raise ManifestError(f"shard name must be a string, not {type(name).__name__}")
    why = (
        "contains a NUL byte" if "\0" in name else
        f"is longer than {MAX_SHARD_NAME} characters" if len(name) > MAX_SHARD_NAME else
        "is a URL or command (only the command line may name a pipe: or URL source)"
        if _URL_SCHEME.match(name) else
        "is an absolute path" if name.startswith(("/", "\\")) else
        "contains a path separator or '..'" if "/" in name or "\\" in name or ".." in name else
        None if _SHARD_RE.fullmatch(name) else
        "does not match PREFIX-NNNNNN.tar (PREFIX of letters, digits, '_', '-')"
    )
    if why:
        raise ManifestError(f"shard name {name[:MAX_SHARD_NAME]!r} {why}")
    return name


def check_count(value: object, field_name: str) -> int:
    """``value`` if it is a non-negative JSON integer (not a bool, float or string);
    else :class:`ManifestError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{field_name} must be a non-negative integer, not {value!r:.40}")
    return value


def check_number(value: object, field_name: str) -> float:
    """``value`` if it is a non-negative finite JSON number (not a bool or string);
    else :class:`ManifestError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ManifestError(f"{field_name} must be a non-negative number, not {value!r:.40}")
    return value


def check_sha256(value: object) -> str:
    """``value`` if it is 64 lowercase hex digits, else :class:`ManifestError`."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ManifestError(f"sha256 must be 64 lowercase hex digits, not {value!r:.80}")
    return value


def check_classes(value: object) -> list[str] | None:
    """``value`` if it is ``None`` or a list of strings, else :class:`ManifestError`."""
    if value is not None and (not isinstance(value, list) or not all(isinstance(c, str) for c in value)):
        raise ManifestError(f"classes must be a list of strings, not {value!r:.80}")
    return value


def check_shard_entry(entry: object) -> ShardInfo:
    """One ``shards`` entry as a :class:`ShardInfo`; :class:`ManifestError` for any bad field.

    A shard holds at least one 512-byte tar header per sample, so ``samples`` is at most
    ``bytes // 512``: a manifest cannot claim more samples than its bytes can hold.
    """
    if not isinstance(entry, dict):
        raise ManifestError(f"a shard entry must be a JSON object, not {type(entry).__name__}")
    fields = {f.name for f in dataclasses.fields(ShardInfo)}
    if set(entry) != fields:
        raise ManifestError(f"a shard entry has exactly the fields {sorted(fields)}, not {sorted(entry)}")
    info = ShardInfo(name=check_shard_name(entry["name"]), samples=check_count(entry["samples"], "samples"),
                     bytes=check_count(entry["bytes"], "bytes"), sha256=check_sha256(entry["sha256"]))
    if info.samples > info.bytes // MIN_SAMPLE_BYTES:
        raise ManifestError(f"{info.samples} samples cannot fit in {info.bytes} bytes")
    return info


@dataclass(frozen=True, kw_only=True)
class Rejected:
    """A ``shards`` entry that failed its check (see :meth:`Manifest.from_dict`)."""

    index: int
    """Position in the manifest's ``shards`` list."""
    name: str
    """The entry's name, printable (``repr`` of a non-string, cut to 80 characters)."""
    reason: str
    """What is wrong with it."""


def _entry_name(entry: object) -> str:
    name = entry.get("name") if isinstance(entry, dict) else entry
    text = name if isinstance(name, str) and name.isprintable() else repr(name)
    return text[:80]


def check_tar_member(m: tarfile.TarInfo) -> tuple[str, str]:
    """``(KEY, EXT)`` of a shard's tar member; :class:`MemberError` when it is not a regular file
    (a symlink, hard link, directory or device could point anywhere), has no extension, or is over
    its size cap (checked from the header, before its data is read)."""
    if not m.isreg():
        kind = ("symlink" if m.issym() else "hard link" if m.islnk() else "directory" if m.isdir()
                else "special file")
        raise MemberError(f"member {m.name[:80]!r} is a {kind}; shards hold regular files only",
                          "not a regular file")
    key, dot, ext = m.name.rpartition("/")[2].partition(".")
    if not dot or not key:
        raise MemberError(f"member {m.name[:80]!r} is not named KEY.EXT", "badly named member")
    check_member_size(ext, m.size)
    return key, ext


def member_max_bytes(ext: str) -> int:
    """Largest size accepted for a tar member with extension ``ext`` (``mp4``, ``json``, ...)."""
    return MEMBER_MAX_BYTES.get(ext.lower(), MEMBER_MAX_OTHER)


def check_member_size(ext: str, size: int) -> None:
    """:class:`MemberError` when a ``KEY.ext`` member of ``size`` bytes is over its cap
    (:data:`MEMBER_MAX_BYTES`): readers check the header's size before reading the data."""
    cap = member_max_bytes(ext)
    if size > cap:
        raise MemberError(f".{ext[:20]} member of {size} bytes is over the {cap}-byte cap for that type",
                          "oversize member")


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
    def from_dict(cls, d: object, source: str = "manifest", *,
                  rejects: list[Rejected] | None = None) -> Manifest:
        """Build and validate a manifest read from ``source`` (its path or URL, named in errors).

        Every field is checked (see :func:`check_shard_entry`), since a shard set may come
        from another machine; a bad one raises :class:`ManifestError`. A reader that reports
        and goes on (``verify``) passes a ``rejects`` list: bad shard entries are appended
        to it and left out of the manifest instead.
        """
        if not isinstance(d, dict):
            raise ManifestError(f"{source}: a manifest must be a JSON object, not {type(d).__name__}")
        if d.get("format") != FORMAT:
            raise ManifestError(
                f"{source}: not a vidshard/1 manifest (format={d.get('format')!r:.60}); "
                "was it written by another tool or a newer vidshard?"
            )
        try:
            fields = _check_top_level(d)
        except ManifestError as exn:
            raise ManifestError(f"{source}: {exn}") from None
        shards = d.get("shards", [])
        if not isinstance(shards, list):
            raise ManifestError(f"{source}: shards must be a list, not {type(shards).__name__}")
        infos: list[ShardInfo] = []
        seen: set[str] = set()
        for i, entry in enumerate(shards):
            try:
                info = check_shard_entry(entry)
                if info.name in seen:
                    raise ManifestError(f"shard {info.name!r} is listed twice")
            except ManifestError as exn:
                if rejects is None:
                    raise ManifestError(f"{source}: shards[{i}]: {exn}; the shard set is damaged or was "
                                        "not written by vidshard (re-fetch it or ask its owner)") from None
                rejects.append(Rejected(index=i, name=_entry_name(entry), reason=str(exn)))
                continue
            seen.add(info.name)
            infos.append(info)
        return cls(shards=infos, **fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest", *,
                  rejects: list[Rejected] | None = None) -> Manifest:
        """Parse and validate ``manifest.json`` text read from ``source`` (named in errors);
        ``rejects`` as in :meth:`from_dict`."""
        if len(text) > MANIFEST_MAX_BYTES:
            raise ManifestError(f"{source}: {len(text)} bytes is over the {MANIFEST_MAX_BYTES}-byte "
                                "limit for a manifest")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exn:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ManifestError(f"{source}: not valid JSON ({str(exn)[:120]}); the file is damaged or "
                                "not a manifest") from None
        return cls.from_dict(d, source, rejects=rejects)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read ``manifest.json`` from a local path (a file or the shard-set folder)."""
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST
        try:
            if p.stat().st_size > MANIFEST_MAX_BYTES:
                raise ManifestError(f"{p}: over the {MANIFEST_MAX_BYTES}-byte limit for a manifest")
            return cls.from_json(p.read_bytes(), str(p))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{p}: no manifest.json here; is this a shard set made by `vidshard preprocess`?"
            ) from None

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/manifest.json`` atomically."""
        return atomic_write(Path(folder) / MANIFEST, self.to_json().encode("utf-8"))


def _check_top_level(d: dict[str, Any]) -> dict[str, Any]:
    """The manifest's fields other than ``shards``, checked (:class:`ManifestError`)."""
    settings, totals = d.get("settings", {}), d.get("totals", {})
    if not isinstance(settings, dict):
        raise ManifestError(f"settings must be a JSON object, not {type(settings).__name__}")
    if not isinstance(totals, dict):
        raise ManifestError(f"totals must be a JSON object, not {type(totals).__name__}")
    for k in TOTAL_KEYS:
        if k in totals:
            check_number(totals[k], f"totals.{k}")
    text = {k: d.get(k, "") for k in ("created", "tool_version")}
    for k, v in text.items():
        if not isinstance(v, str):
            raise ManifestError(f"{k} must be a string, not {v!r:.40}")
    return dict(format=FORMAT, settings=dict(settings), totals=dict(totals),
                classes=check_classes(d.get("classes")), **text)


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
