"""The worker pool: one video per task, results as they finish, survives a worker dying.

A worker process can die without a Python exception (a decoder crash in PyAV, the
out-of-memory killer). Every task then in flight fails with ``BrokenProcessPool``
without saying whose file did it, so the pool is restarted and each of those tasks
is run again alone: the one that kills its worker again is reported as failed,
the others succeed. One bad file never stops the run.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool

from .config import PreprocessConfig
from .encode import EncodeJob, EncodeOutcome, encode_video

DIED = "the worker process died while reading this file (a decoder crash, or out of memory)"


def start_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A process pool whose workers exist as soon as it returns.

    ``fork`` makes a worker's start cost nothing (``spawn``/``forkserver`` re-import the
    caller's ``__main__``, which can pull in torch: seconds per worker). The first pool is
    started before any other thread (the progress bar) exists; a restart after a crash forks
    beside that thread, which is safe because workers never touch the progress bar's locks.
    """
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    pool.submit(int).result()  # with fork, this starts all the workers now
    return pool


class EncodePool:
    """Runs :func:`encode_video` over jobs, ``2 * workers`` in flight, yielding outcomes."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.workers = cfg.num_workers
        self.pool = start_pool(self.workers)
        self.running: dict[cf.Future, EncodeJob] = {}
        self.suspects: list[EncodeJob] = []

    def results(self, jobs: Iterable[EncodeJob]) -> Iterator[EncodeOutcome]:
        pending = iter(jobs)
        while True:
            if self.suspects:
                yield self._alone(self.suspects.pop())
                continue
            while len(self.running) < 2 * self.workers and (job := next(pending, None)) is not None:
                self.running[self.pool.submit(encode_video, job, self.cfg)] = job
            if not self.running:
                return
            finished, _ = cf.wait(self.running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                job = self.running.pop(fut)
                try:
                    out = fut.result()
                except BrokenProcessPool:
                    self.suspects.append(job)
                    continue
                yield out
            if self.suspects:  # every task still in flight died with the pool
                self.suspects += self.running.values()
                self.running.clear()
                self._restart()

    def submit(self, job: EncodeJob) -> None:
        """Start one job now (watch mode feeds jobs as files arrive; see :meth:`collect`)."""
        self.running[self.pool.submit(encode_video, job, self.cfg)] = job

    def collect(self, timeout: float) -> list[EncodeOutcome]:
        """Outcomes of submitted jobs that finish within ``timeout`` seconds (maybe none); after a
        worker died, every job then in flight is run again alone, as :meth:`results` does."""
        if not self.running:
            return []
        finished, _ = cf.wait(self.running, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        outs, suspects = [], []
        for fut in finished:
            job = self.running.pop(fut)
            try:
                outs.append(fut.result())
            except BrokenProcessPool:
                suspects.append(job)
        if suspects:
            suspects += self.running.values()
            self.running.clear()
            self._restart()
            outs += [self._alone(job) for job in suspects]
        return outs

    def _alone(self, job: EncodeJob) -> EncodeOutcome:
        try:
            return self.pool.submit(encode_video, job, self.cfg).result()
        except BrokenProcessPool:
            self._restart()
            return EncodeOutcome(item=job.item, reason=DIED)

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = start_pool(self.workers)

    def close(self, cancel: bool = False) -> None:
        """Wait for the workers to exit (``cancel``: drop queued tasks, do not wait)."""
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
