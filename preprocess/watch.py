"""``vidshard preprocess INPUT OUTPUT --watch``: preprocessing as a service.

It encodes what INPUT holds, then every new file as it arrives, with the journal, atomic
shards and ``failures.jsonl`` of a batch run (``store.py``): a SIGKILL at any moment loses
nothing, the next start resumes. A file counts once it has not changed for
``settle_seconds`` (or once ``NAME.done`` exists beside it); a partly filled shard is
published after ``flush_seconds`` without a new video, and the manifest is rewritten
atomically after each published shard, so a trainer can follow the set as it grows.

New files are found by listing INPUT when watchdog reports a change (inotify and friends),
every minute as a safety net, or every ``poll_seconds`` with ``poll`` (network file systems
send no events). SIGTERM / SIGINT: no new video is started, the ones being encoded finish
(a second signal leaves them staged for the next start), the open shard is published, exit 0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .config import PreprocessConfig
from .encode import EncodeJob, EncodeOutcome
from .from_shards import is_shard_input
from .inputs import InputError, InputItem, list_inputs
from .plan import class_list, part_of, part_prefix
from .pool import EncodePool
from .report import balance, balance_lines
from .store import OutputStore

MARKER = ".done"
_SAFETY_SCAN_S = 60.0  # with change events, still list INPUT this often (an event can be lost)
_TICK_S = 0.25


@dataclass
class _Seen:
    """A file found in INPUT that is not encoded yet: its last size and change time."""

    item: InputItem
    size: int = -1
    mtime_ns: int = -1
    first_seen: float = 0.0
    reported: bool = False


class Arrivals:
    """The files of INPUT waiting to settle, and which of them are ready to encode."""

    def __init__(self, cfg: PreprocessConfig, store: OutputStore, say) -> None:
        self.cfg, self.store, self.say = cfg, store, say
        self.waiting: dict[str, _Seen] = {}
        self.taken: set[str] = set()  # submitted (vid): never queued twice
        self.failed_as: dict[str, tuple[int, int]] = {}  # (size, mtime) of a file when it failed here

    def scan(self) -> None:
        """List INPUT; remember files not done, failed or taken yet."""
        try:
            items = list_inputs(self.cfg.input, labels_from_dirs=self.cfg.labels_from_dirs,
                                exclude=self.cfg.output)
        except (OSError, InputError) as e:  # INPUT itself unreadable for a moment: try again later
            self.say(f"cannot list {self.cfg.input}: {e}")
            return
        for it in items:
            name = it.path.name
            if name.endswith(MARKER) or name.startswith(".") or it.vid in self.taken:
                continue  # markers, hidden (partial) files of copy tools
            if self.cfg.part is not None and part_of(it.vid, self.cfg.part[1]) != self.cfg.part[0]:
                continue
            if self.store.is_done(it.vid) or (self.store.is_failed(it.vid) and not self._changed(it)):
                continue
            self.waiting.setdefault(it.vid, _Seen(item=it, first_seen=time.monotonic()))

    def _changed(self, it: InputItem) -> bool:
        """A file that failed in this run and has changed since (a stalled copy that went on) is
        tried again; one that failed in an earlier run waits for ``--retry-failed``."""
        if it.vid not in self.failed_as:
            return False
        try:
            st = it.path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) != self.failed_as[it.vid]

    def failed(self, item: InputItem) -> None:
        """Remember how a failed file looked, so a changed one is tried again."""
        self.taken.discard(item.vid)
        try:
            st = item.path.stat()
            self.failed_as[item.vid] = (st.st_size, st.st_mtime_ns)
        except OSError:
            self.failed_as.pop(item.vid, None)

    def ready(self, limit: int) -> list[InputItem]:
        """Up to ``limit`` files that stopped changing ``settle_seconds`` ago or have a marker."""
        out = []
        for vid, seen in list(self.waiting.items()):
            if len(out) >= limit:
                break
            path = seen.item.path
            try:
                st = path.stat()
            except FileNotFoundError:
                del self.waiting[vid]
                self.say(f"gone before it settled: {seen.item.display}")
                continue
            except OSError as e:
                if not seen.reported:
                    seen.reported = True
                    self.say(f"cannot read {seen.item.display}: {e}; waiting")
                continue
            steady = (st.st_size, st.st_mtime_ns) == (seen.size, seen.mtime_ns)
            seen.size, seen.mtime_ns = st.st_size, st.st_mtime_ns
            settled = steady and time.time() - st.st_mtime >= self.cfg.settle_seconds
            if settled or path.with_name(path.name + MARKER).exists():
                del self.waiting[vid]
                self.taken.add(vid)
                out.append(seen.item)
            elif not seen.reported and time.monotonic() - seen.first_seen > 3 * self.cfg.settle_seconds + 5:
                seen.reported = True
                self.say(f"still growing: {seen.item.display} ({st.st_size / 1e6:.1f} MB); encoded once it "
                         f"stops changing for {self.cfg.settle_seconds:g} s or {path.name}{MARKER} appears")
        return out

    def forget(self, vid: str) -> None:
        """Let a file be found again (it was removed or renamed while being encoded)."""
        self.taken.discard(vid)


class _Events:
    """Change notifications from watchdog; none with ``--poll`` or without watchdog installed."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.flag = threading.Event()
        self.observer = None
        if not enabled:
            return
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return
        handler = FileSystemEventHandler()
        handler.on_any_event = lambda _event: self.flag.set()
        self.observer = Observer()
        self.observer.schedule(handler, str(folder), recursive=True)
        self.observer.start()

    def changed(self) -> bool:
        was = self.flag.is_set()
        self.flag.clear()
        return was

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)


class _Stop:
    """SIGTERM / SIGINT set a flag the loop checks; the first finishes in-flight work, the second
    leaves it. Installed before the workers fork, which then ignore the signals alike (their ffmpeg
    child still stops on its own signal and the video is retried on the next start)."""

    def __init__(self) -> None:
        self.count = 0
        self._old = {s: signal.signal(s, self._on) for s in (signal.SIGTERM, signal.SIGINT)}

    def _on(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


class _Status:
    """One status line refreshed in place (a terminal), or log lines only (``--quiet``)."""

    def __init__(self, console: Console, cfg: PreprocessConfig) -> None:
        self.console, self.cfg = console, cfg
        self.last_shard = "-"
        self.live = None if cfg.quiet else Live(Text(""), console=console, refresh_per_second=4,
                                                transient=True)
        if self.live is not None:
            self.live.start()

    def say(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.console.print(f"{stamp} {line}", markup=False, highlight=False, soft_wrap=True)

    def show(self, waiting: int, encoding: int, store: OutputStore) -> None:
        if self.live is None:
            return
        hours = sum(v["seconds"] for v in store.videos.values()) / 3600
        self.live.update(Text(f"watching {self.cfg.input}: {waiting} waiting, {encoding} encoding, "
                              f"{len(store.videos)} published ({hours:.2f} h of video), "
                              f"{len(store.failures)} failed, last shard {self.last_shard}"))

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def check_watch_input(cfg: PreprocessConfig) -> None:
    """``--watch`` needs a folder of videos (a list or a shard set does not grow by itself)."""
    if not cfg.input.is_dir() or is_shard_input(cfg.input):
        raise InputError(f"{cfg.input}: --watch needs a folder of videos (not a list or a shard set)")
    if cfg.dry_run:
        raise InputError("--watch and --dry-run do not go together")


def watch(cfg: PreprocessConfig, console: Console | None = None):
    """Serve ``cfg.input`` into ``cfg.output`` until SIGTERM / SIGINT; return the run's result."""
    from .run import _result, _Tally

    console = console or Console(stderr=True)
    check_watch_input(cfg)
    t0 = time.monotonic()
    cfg.output.mkdir(parents=True, exist_ok=True)
    store = OutputStore(cfg.output, cfg.settings(), part_prefix(cfg.prefix, cfg.part), cfg.shard_size)
    store.recover()
    store.begin(store.classes)
    tally, stop = _Tally(), _Stop()
    try:
        pool = EncodePool(cfg)  # after the signal handlers (workers inherit them), before any thread
        events, status = _Events(cfg.input, enabled=not cfg.poll), _Status(console, cfg)
        try:
            _Loop(cfg, store, pool, events, status, stop, tally).run()
        except BaseException:
            store.abort()
            pool.close(cancel=True)
            raise
        finally:
            events.close()
            status.close()
        pool.close(cancel=stop.count > 1)
        store.finish()
        status.say(f"stopped: {len(store.videos)} videos in {len(store.shards)} shards in {cfg.output}")
        for line in balance_lines(balance(store.videos.values())):
            status.say(line)
    finally:
        stop.restore()
    return replace(_result(cfg, store, tally, t0, 0), service=True)


class _Loop:
    """The service loop: look for arrivals, feed the pool, pack outcomes, publish on time."""

    def __init__(self, cfg, store, pool, events, status, stop, tally) -> None:
        self.cfg, self.store, self.pool, self.events = cfg, store, pool, events
        self.status, self.stop, self.tally = status, stop, tally
        self.arrivals = Arrivals(cfg, store, status.say)
        self.last_pack = time.monotonic()

    def run(self) -> None:
        next_scan = 0.0
        every = self.cfg.poll_seconds if self.events.observer is None else _SAFETY_SCAN_S
        self.status.say(f"watching {self.cfg.input} -> {self.cfg.output} "
                        f"({'polling' if self.events.observer is None else 'change events'})")
        while not self.stop.count:
            if self.events.changed() or time.monotonic() >= next_scan:
                self.arrivals.scan()
                next_scan = time.monotonic() + every
            room = 2 * self.pool.workers - len(self.pool.running)
            for item in self.arrivals.ready(room):
                self.pool.submit(self._job(item))
            self._take(self.pool.collect(timeout=_TICK_S))
            if self.store.open_samples and time.monotonic() - self.last_pack >= self.cfg.flush_seconds:
                self._publish(self.store.flush())
            self.status.show(len(self.arrivals.waiting), len(self.pool.running), self.store)
        if self.pool.running:
            self.status.say(f"stopping: finishing {len(self.pool.running)} video(s) being encoded "
                            "(signal again to leave them for the next start)")
        while self.pool.running and self.stop.count < 2:
            self._take(self.pool.collect(timeout=_TICK_S))
        self._publish(self.store.flush())

    def _job(self, item: InputItem) -> EncodeJob:
        store = self.store
        if item.label_name is not None and item.label_name not in (store.classes or []):
            store.classes = class_list([item.label_name], store.classes)  # ids of old classes kept
            store.write_manifest()
        label = (store.classes or []).index(item.label_name) if item.label_name is not None else None
        return EncodeJob(item=item, label=label, staging=store.staging)

    def _take(self, outs: list[EncodeOutcome]) -> None:
        from .run import _handle

        for out in outs:
            item = out.item
            if out.staged is None and not out.stopped and not os.path.exists(item.path):
                self.arrivals.forget(item.vid)
                self.status.say(f"removed or renamed while being encoded: {item.display} (not recorded "
                                "as failed; encoded again if it comes back)")
                continue
            shards, failed = len(self.store.shards), len(self.tally.failures)
            _handle(out, self.store, self.tally, _NoBar(), self.cfg, Console(quiet=True))
            if len(self.tally.failures) > failed:
                self.arrivals.failed(item)
                self.status.say(f"failed: {item.display}: {out.reason}")
            elif out.staged is not None:
                self.last_pack = time.monotonic()
                self.status.say(f"encoded: {item.display} ({out.seconds:.1f} s of video)")
            for info in self.store.shards[shards:]:
                self._publish(info)

    def _publish(self, info) -> None:
        if info is None:
            return
        self.status.last_shard = f"{info.name} at {time.strftime('%H:%M:%S')}"
        hours = sum(v["seconds"] for v in self.store.videos.values()) / 3600
        self.status.say(f"published: {info.name} ({info.samples} samples); set: {len(self.store.videos)} "
                        f"videos, {hours:.3f} h, {len(self.store.failures)} failed")


class _NoBar:
    """``run._handle`` advances a progress bar; the service shows its own status line."""

    def advance(self, seconds: float) -> None:
        pass
