"""The output folder of a run: shards, manifest, failures, and the journal that makes it resumable.

The parent process is the only writer. The order of writes is what makes a run
safe to kill at any moment (even SIGKILL):

1. a worker renames ``.vidshard/staging/<vid>.<pid>.tmp`` to ``staging/<vid>``
   when every chunk of the video is encoded and verified;
2. the parent appends the video's samples to the open shard (a temporary file);
3. ``ShardWriter`` finishes a shard: fsync, rename to its final name;
4. one line is appended (and fsynced) to ``.vidshard/journal.jsonl``: the shard,
   the keys it holds and the videos it completes; then the manifest is rewritten
   atomically from the journal;
5. only then are the completed videos' staging folders deleted.

On restart a shard on disk that the journal does not list is an orphan of a
kill between steps 3 and 4: it is deleted, and its videos are still staged, so
they are packed again (keys already listed are skipped: no duplicate, no loss).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidshard.shards.schema import (
    FAILURES,
    MANIFEST,
    Manifest,
    SampleMeta,
    ShardInfo,
    atomic_write,
    parse_shard_name,
    sample_members,
)
from vidshard.shards.writer import ShardWriter

from .encode import read_staged

STATE_DIR = ".vidshard"
JOURNAL = "journal.jsonl"
# Settings a re-run may change without making the shard set inconsistent.
_FREE_SETTINGS = ("shard_size",)


class SettingsMismatch(ValueError):
    """OUTPUT already holds a shard set made with other settings."""


class NotOurOutput(ValueError):
    """OUTPUT holds shards that no preprocess journal accounts for."""


@dataclass
class _Open:
    """Samples in the shard being written, not yet listed anywhere."""

    keys: list[str] = field(default_factory=list)
    videos: dict[str, dict[str, Any]] = field(default_factory=dict)


class OutputStore:
    """Recovers, then appends to, the shard set in ``folder``."""

    def __init__(self, folder: Path, settings: dict[str, Any], prefix: str, shard_size: int) -> None:
        self.folder = folder
        self.settings = settings
        self.prefix = prefix
        self.shard_size = shard_size
        self.state = folder / STATE_DIR
        self.staging = self.state / "staging"
        self.shards: list[ShardInfo] = []
        self.packed: set[str] = set()
        self.videos: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, dict[str, Any]] = {}
        self.classes: list[str] | None = None
        self._writer: ShardWriter | None = None
        self._journal_good = 0
        self._open = _Open()

    # --- recovery -----------------------------------------------------------------------------

    def load(self) -> None:
        """Read what earlier runs finished (changes nothing; enough for ``--dry-run``)."""
        self._check_settings()
        journal = self.state / JOURNAL
        if not journal.is_file() and self.folder.is_dir():
            stray = sorted(p.name for p in self.folder.iterdir() if parse_shard_name(p.name))
            if stray:
                raise NotOurOutput(f"{self.folder} already holds shards ({stray[0]}, ...) but no "
                                   f"{STATE_DIR}/{JOURNAL}: it was not made by `vidshard preprocess` (or "
                                   "was merged or copied), and resuming would delete them. Use a new "
                                   "OUTPUT folder.")
        for entry in self._read_journal():
            if entry["shard"] is not None:
                self.shards.append(ShardInfo(**entry["shard"]))
            self.packed.update(entry["keys"])
            self.videos.update(entry["videos"])
        self.failures = _read_jsonl_by(self.folder / FAILURES, "video_id")

    def recover(self) -> None:
        """:meth:`load`, then remove what an interrupted run left half done."""
        self.load()
        self.staging.mkdir(parents=True, exist_ok=True)
        journal = self.state / JOURNAL
        if journal.is_file() and journal.stat().st_size != self._journal_good:
            with open(journal, "r+b") as f:  # cut a line torn by a kill
                f.truncate(self._journal_good)
                os.fsync(f.fileno())
        journal.touch()  # from now on, shards here without a journal line are ours to delete
        listed = {s.name for s in self.shards}
        for p in self.folder.iterdir():
            orphan = parse_shard_name(p.name) is not None and p.name not in listed
            if orphan or (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()):
                p.unlink()
        for p in self.staging.iterdir():  # half-encoded, or packed and listed before a kill
            if p.name.endswith(".tmp") or p.name in self.videos:
                shutil.rmtree(p, ignore_errors=True)
        self._rewrite_failures()

    def _check_settings(self) -> None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return
        old = Manifest.load(path)
        self.classes = old.classes
        diff = {k: (old.settings.get(k), self.settings.get(k)) for k in {*self.settings, *old.settings}
                if k not in _FREE_SETTINGS and old.settings.get(k) != self.settings.get(k)}
        if diff:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
            raise SettingsMismatch(f"{self.folder} holds a shard set made with other settings ({what}); "
                                   "use the same options to resume / add videos, or a new OUTPUT folder")

    def _read_journal(self) -> list[dict[str, Any]]:
        """Journal entries up to a torn last line (killed mid-append), whose offset is kept."""
        path = self.state / JOURNAL
        self._journal_good = 0
        if not path.is_file():
            return []
        data = path.read_bytes()
        entries, good = [], 0
        for line in data.splitlines(keepends=True):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not line.endswith(b"\n"):
                break
            good += len(line)
            shard = entry["shard"]
            if shard is None or (self.folder / shard["name"]).is_file():
                entries.append(entry)  # (a shard deleted by hand: its videos are encoded again)
        self._journal_good = good
        return entries

    # --- state queries ------------------------------------------------------------------------

    def is_done(self, vid: str) -> bool:
        return vid in self.videos

    def is_failed(self, vid: str) -> bool:
        return vid in self.failures

    def staged(self, vid: str) -> Path | None:
        folder = self.staging / vid
        return folder if (folder / "meta.json").is_file() else None

    # --- writing ------------------------------------------------------------------------------

    def begin(self, classes: list[str] | None) -> None:
        """Record the classes (and settings) before any encoding, so ids never move."""
        self.classes = classes
        self.write_manifest()
        next_index = max((parse_shard_name(s.name)[1] + 1 for s in self.shards
                          if parse_shard_name(s.name)[0] == self.prefix), default=0)
        self._writer = ShardWriter(self.folder, prefix=self.prefix, max_bytes=self.shard_size,
                                   start_index=next_index)

    def add_failure(self, record: dict[str, Any]) -> None:
        """Append one line to failures.jsonl (flushed and fsynced)."""
        self.failures[record["video_id"]] = record
        with open(self.folder / FAILURES, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def forget_failure(self, vid: str) -> None:
        if self.failures.pop(vid, None) is not None:
            self._rewrite_failures()

    def pack(self, folder: Path) -> int:
        """Append a staged video's samples to the shards; return how many were new."""
        meta = read_staged(folder)
        vid, new = meta["vid"], 0
        for sample in meta["samples"]:
            m = SampleMeta.from_dict(sample)
            if m.key in self.packed:
                continue  # listed by a shard before a kill: never twice
            mp4 = (folder / f"{m.chunk:05d}.mp4").read_bytes()
            for info in self._writer.write(sample_members(m, mp4)):
                self._commit(info)  # the shard holds the keys before this sample
            self._open.keys.append(m.key)
            new += 1
        self._open.videos[vid] = {"video": meta["video"], "samples": len(meta["samples"]),
                                  "seconds": meta["seconds"], "bytes_in": meta["bytes_in"],
                                  "label_name": next((m.get("label_name") for m in meta["samples"]), None)}
        if not self._open.keys:  # every sample was already listed: complete it now
            self._commit(None)
        return new

    @property
    def open_samples(self) -> int:
        """Samples in the shard being written (not yet published)."""
        return len(self._open.keys)

    def flush(self) -> ShardInfo | None:
        """Publish the open shard now, however full (watch mode: new data never waits for a
        full shard); the next sample opens the next shard."""
        if self._writer is None:
            return None
        info = self._writer.close()
        if info is not None or self._open.videos:
            self._commit(info)
        return info

    def finish(self) -> None:
        """Finish the open shard and write the final manifest."""
        if self._writer is not None:
            info = self._writer.close()
            self._writer = None
            if info is not None or self._open.videos:
                self._commit(info)
        self.write_manifest()
        if not any(self.staging.iterdir()):
            self.staging.rmdir()

    def abort(self) -> None:
        """Drop the open shard (its videos stay staged for the next run)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def _commit(self, info: ShardInfo | None) -> None:
        """Journal the finished shard ``info`` (or, with ``None``, videos whose samples are all
        listed already), rewrite the manifest, then drop the staging of completed videos."""
        keys, videos = self._open.keys, self._open.videos
        self._open = _Open()
        if info is not None:
            self.shards.append(info)
        shard = dataclasses.asdict(info) if info else None
        if info is not None:
            _test_pause("after-shard-rename", info.name)  # the shard has its final name, no journal line
        self._append_journal({"shard": shard, "keys": keys, "videos": videos})
        self.packed.update(keys)
        self.videos.update(videos)
        self.write_manifest()
        for vid in videos:
            shutil.rmtree(self.staging / vid, ignore_errors=True)

    def _append_journal(self, entry: dict[str, Any]) -> None:
        with open(self.state / JOURNAL, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_manifest(self) -> None:
        totals = {"videos": len(self.videos), "failed": len(self.failures),
                  "samples": sum(s.samples for s in self.shards),
                  "seconds": round(sum(v["seconds"] for v in self.videos.values()), 3),
                  "bytes_in": sum(v["bytes_in"] for v in self.videos.values()),
                  "bytes_out": sum(s.bytes for s in self.shards)}
        Manifest(settings={**self.settings, "shard_size": self.shard_size}, shards=list(self.shards),
                 totals=totals, classes=self.classes).save(self.folder)

    def _rewrite_failures(self) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.failures.values())
        atomic_write(self.folder / FAILURES, text.encode("utf-8"))


_pauses: dict[str, int] = {}


def _test_pause(point: str, detail: str) -> None:
    """Tests only: with ``VIDSHARD_TEST_PAUSE=POINT:N`` the N-th time this process reaches ``point``
    it writes ``detail`` to the file ``$VIDSHARD_TEST_PAUSE_MARKER`` and sleeps, so a test can
    SIGKILL it at exactly this moment (a real kill: no cleanup runs). Unset, this does nothing."""
    want = os.environ.get("VIDSHARD_TEST_PAUSE", "")
    if not want.startswith(point + ":"):
        return
    _pauses[point] = _pauses.get(point, 0) + 1
    if str(_pauses[point]) == want.rsplit(":", 1)[1]:
        marker = Path(os.environ["VIDSHARD_TEST_PAUSE_MARKER"])
        marker.with_name(marker.name + ".tmp").write_text(detail, encoding="utf-8")
        marker.with_name(marker.name + ".tmp").rename(marker)  # the test sees all of it or nothing
        time.sleep(600)


def _read_jsonl_by(path: Path, key: str) -> dict[str, dict[str, Any]]:
    """Records of a JSON-lines file by ``key`` (last wins); torn or foreign lines are skipped."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and key in rec:
            out[rec[key]] = rec
    return out
