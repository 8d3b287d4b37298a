"""What to preprocess: every file under a folder, or the rows of a CSV/JSONL list.

A folder is searched recursively and every regular file is an input (whether it
is a video is decided by probing it, not by its extension). A list names
``path`` and optionally ``label``, ``start``, ``end`` and ``caption``; with
``start``/``end`` each row is one annotated segment and becomes its own input.
Rows naming the same path, start and end are one input with all their captions
(several narrations of one clip).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vidshard.shards.schema import video_id

LIST_SUFFIXES = (".csv", ".jsonl")


class InputError(ValueError):
    """The INPUT argument (folder or list) cannot be used; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True)
class InputItem:
    """One input: a whole source file or one annotated segment of it."""

    path: Path
    """Absolute path of the source file."""
    rel: str
    """Path relative to the input root (``/``-separated), as stored in samples."""
    label_name: str | None = None
    """Class name, when labeled."""
    start_s: float | None = None
    """Segment start in the source, seconds (``None``: the beginning)."""
    end_s: float | None = None
    """Segment end in the source, seconds (``None``: the end)."""
    caption: str | None = None
    """Free text carried into the sample metadata (the first, when there are several)."""
    captions: tuple[str, ...] = ()
    """Every caption, when rows of a list gave this input several."""
    origin: dict[str, Any] | None = None
    """A sample of a shard-set INPUT: what its new samples carry over (see ``from_shards``)."""
    member: tuple[str, int, int, str] | None = None
    """A sample of a shard-set INPUT: ``(tar path, byte offset, size, ext)`` of its video."""
    invalid: str | None = None
    """Why this input cannot be used, found while listing it (it becomes a failure)."""

    @property
    def vid(self) -> str:
        """Stable id (see ``shards.schema.video_id``)."""
        return video_id(self.rel, self.start_s, self.end_s)

    @property
    def display(self) -> str:
        """How a person should see this input in logs and ``failures.jsonl``."""
        if self.start_s is None and self.end_s is None:
            return self.rel
        return f"{self.rel} [{self.start_s or 0:g}-{'' if self.end_s is None else f'{self.end_s:g}'}]"


def list_inputs(source: Path, *, labels_from_dirs: bool = False,
                exclude: Path | None = None) -> list[InputItem]:
    """The inputs named by ``source`` (a folder or a ``.csv``/``.jsonl`` list), sorted by ``rel``."""
    from .from_shards import is_shard_input, list_shard_samples

    source = Path(source)
    if is_shard_input(source):
        if labels_from_dirs:
            raise InputError("--labels-from-dirs needs a folder of videos; a shard set carries its labels")
        items = list_shard_samples(source)
    elif source.is_dir():
        items = _walk(source, labels_from_dirs, exclude)
    elif source.is_file() and source.suffix.lower() in LIST_SUFFIXES:
        if labels_from_dirs:
            raise InputError("--labels-from-dirs needs a folder INPUT; a list has a 'label' column")
        items = merge_captions(_read_list(source))
    elif source.exists():
        raise InputError(f"{source}: INPUT must be a folder of videos or a .csv / .jsonl list of them")
    else:
        raise InputError(f"{source}: no such file or folder")
    return sorted(items, key=lambda it: (it.rel, it.start_s or 0.0, it.end_s or 0.0))


def _walk(root: Path, labels_from_dirs: bool, exclude: Path | None) -> list[InputItem]:
    root = root.resolve()
    skip = exclude.resolve() if exclude is not None else None
    items, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        st = here.stat()
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder linked twice
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if skip is None or (here / d).resolve() != skip)
        for name in sorted(filenames):
            path = here / name
            if not path.is_file():
                continue  # sockets, fifos, dangling links
            rel = _printable(path.relative_to(root).as_posix())
            label = rel.split("/", 1)[0] if labels_from_dirs and "/" in rel else None
            items.append(InputItem(path=path, rel=rel, label_name=label))
    return items


def _read_list(list_path: Path) -> list[InputItem]:
    rows = _read_rows(list_path)
    base = list_path.resolve().parent
    items = []
    for n, row in enumerate(rows, start=1):
        where = f"{list_path}, row {n}"
        raw = str(row.get("path") or "").strip()
        if not raw:
            raise InputError(f"{where}: no 'path' (every row needs the video's path)")
        path = Path(raw) if Path(raw).is_absolute() else base / raw
        start, end = _time(row.get("start"), where, "start"), _time(row.get("end"), where, "end")
        if start is not None and end is not None and end <= start:
            raise InputError(f"{where}: end {end} is not after start {start}")
        label = row.get("label")
        label = None if label is None or str(label).strip() == "" else _label_name(str(label).strip())
        caption = row.get("caption")
        caption = str(caption) if caption not in (None, "") else None
        items.append(InputItem(path=path.absolute(), rel=Path(raw).as_posix(), label_name=label,
                               start_s=start, end_s=end, caption=caption))
    return items


def merge_captions(items: list[InputItem]) -> list[InputItem]:
    """One item per (path, start, end): rows repeating an input add their captions to it (in list order,
    duplicates dropped); the rows must agree on the label."""
    merged: dict[tuple, InputItem] = {}
    texts: dict[tuple, list[str]] = {}
    for it in items:
        key = (it.rel, it.start_s, it.end_s)
        first = merged.setdefault(key, it)
        if first.label_name != it.label_name:
            raise InputError(f"{it.display}: listed twice with different labels ({first.label_name!r}, "
                             f"{it.label_name!r}); a clip has one label (it may have several captions)")
        if it.caption is not None and it.caption not in texts.setdefault(key, []):
            texts[key].append(it.caption)
    out = []
    for key, it in merged.items():
        caps = texts.get(key, [])
        several = tuple(caps) if len(caps) > 1 else ()
        out.append(replace(it, caption=caps[0] if caps else None, captions=several))
    return out


def _read_rows(list_path: Path) -> list[dict]:
    text = list_path.read_text(encoding="utf-8-sig")
    if list_path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in [f.strip() for f in reader.fieldnames]:
            raise InputError(f"{list_path}: the CSV needs a header row with a 'path' column")
        return [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{list_path}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{list_path}, line {n}: expected an object such as {{\"path\": \"a.mp4\"}}")
        rows.append(row)
    return rows


def _time(value: object, where: str, name: str) -> float | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        t = float(value)
    except ValueError:
        raise InputError(f"{where}: {name} {value!r} is not a number of seconds") from None
    if t < 0:
        raise InputError(f"{where}: {name} {t} is negative")
    return t


def _printable(rel: str) -> str:
    """A file name that is not valid UTF-8 (e.g. Latin-1 bytes) gets ``\\xNN`` escapes in the
    stored path, so ids and JSON work; the file itself is still opened by its real name."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _label_name(text: str) -> str:
    """Integer labels are normalised (``"007"`` -> ``"7"``) so they index classes directly."""
    return str(int(text)) if text.isdigit() else text
