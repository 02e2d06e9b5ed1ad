"""One queue per device: a worker thread runs the jobs one at a time, oldest first; a newer
request from the same page cancels that page's stale jobs, queued or running."""

from __future__ import annotations

import secrets
import sys
import threading
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..devices import is_oom
from ..errors import LatentFitError

KEEP_JOBS = 256  # finished jobs kept for their pages to read back
MAX_QUEUED = 16  # jobs waiting for the device, all pages together
MAX_QUEUED_PER_PAGE = 4  # jobs waiting for the device from one page


class QueueFull(LatentFitError):
    """Too many jobs wait for the device (from the page, or in all): the request is refused."""


class Cancelled(Exception):
    """The job was made stale by a newer request from its page."""


@dataclass(eq=False)
class Job:
    page: str
    kind: str
    run: Callable[[Job], dict]  # the device work; returns the result sent to the page
    total: int = 0  # progress units (optimization steps), 0: none shown
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "queued"  # queued | running | done | error | cancelled
    done: int = 0
    result: dict | None = None
    error: str | None = None
    version: int = 0  # bumped at every change, for long polls
    queue: DeviceQueue | None = field(default=None, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def progress(self, done: int, _loss: float | None = None) -> None:
        """The optimization loop's progress callback: records the step, and stops a stale run
        by raising Cancelled."""
        if self.cancelled:
            raise Cancelled
        with self.queue.lock:
            self.done = done
            self._changed()

    def commit(self, apply: Callable[[], None]) -> None:
        """Apply a change to shared state only if the job is still current (under the lock, so
        a newer request cannot slip in between the check and the change)."""
        with self.queue.lock:
            if self.cancelled:
                raise Cancelled
            apply()

    def snapshot(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "result": self.result,
            "error": self.error,
            "version": self.version,
        }

    def _changed(self) -> None:  # call with the lock held
        self.version += 1
        self.queue.lock.notify_all()


class DeviceQueue:
    """Runs submitted jobs on one worker thread, so one job at a time uses the device."""

    def __init__(self):
        self.lock = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="latent-fit-device", daemon=True)
        self._worker.start()

    def submit(
        self, page: str, kind: str, run: Callable[[Job], dict], total: int = 0, supersedes: tuple[str, ...] = ()
    ) -> Job:
        """Queue a job; the page's queued or running jobs of this kind or of `supersedes` are
        cancelled first (a running one stops at its next progress check). Raises QueueFull, and
        cancels nothing, when MAX_QUEUED_PER_PAGE or MAX_QUEUED jobs would still be waiting."""
        job = Job(page=page, kind=kind, run=run, total=total, queue=self)
        with self.lock:
            stale = {kind, *supersedes}
            self._check_room(page, [j for j in self._pending if not (j.page == page and j.kind in stale)])
            for old in [*self._pending, *([self._running] if self._running else [])]:
                if old.page == page and old.kind in stale:
                    self._cancel(old)
            self._pending = deque(j for j in self._pending if not j.cancelled)
            self._pending.append(job)
            self._jobs[job.id] = job
            while len(self._jobs) > KEEP_JOBS:
                self._jobs.popitem(last=False)
            self.lock.notify_all()
        return job

    def _check_room(self, page: str, left: list[Job]) -> None:
        """Refuse a job when `left` (the jobs that would still wait) is at a limit."""
        if len(left) >= MAX_QUEUED:
            raise QueueFull(
                f"{len(left)} jobs are waiting for the device (at most {MAX_QUEUED}); try again when some are done"
            )
        if sum(j.page == page for j in left) >= MAX_QUEUED_PER_PAGE:
            raise QueueFull(
                f"this page has {MAX_QUEUED_PER_PAGE} jobs waiting for the device; try again when one is done"
            )

    def wait(self, job_id: str, since: int = -1, timeout: float = 10.0) -> dict | None:
        """The job's state once its version passes `since` (or after `timeout` s); None if unknown."""
        with self.lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            self.lock.wait_for(lambda: job.version > since or self._closed, timeout)
            return job.snapshot()

    def close(self) -> None:
        with self.lock:
            self._closed = True
            for job in [*self._pending, *([self._running] if self._running else [])]:
                self._cancel(job)
            self.lock.notify_all()

    def _cancel(self, job: Job) -> None:  # call with the lock held
        job._cancel.set()
        if job.state == "queued":
            job.state = "cancelled"
            job._changed()

    def _work(self) -> None:
        while True:
            with self.lock:
                self.lock.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                job = self._running = self._pending.popleft()
                job.state = "running"
                job._changed()
            state, result, error = self._run(job)
            with self.lock:
                job.state, job.result, job.error = state, result, error
                self._running = None
                job._changed()

    @staticmethod
    def _run(job: Job) -> tuple[str, dict | None, str | None]:
        """(state, result, error) of running the job; a user's mistake is its one-line message."""
        try:
            result = job.run(job)
        except Cancelled:
            return "cancelled", None, None
        except LatentFitError as e:
            return "error", None, str(e)
        except Exception as e:
            if is_oom(e):
                return (
                    "error",
                    None,
                    (
                        f"{job.kind}: out of memory on the device; start the server with "
                        "fewer --starts or on a device with more memory"
                    ),
                )
            traceback.print_exc(file=sys.stderr)  # a bug: tell the page, log the traceback
            return "error", None, f"internal error in {job.kind}: {type(e).__name__}: {e}"
        return ("cancelled", None, None) if job.cancelled else ("done", result, None)
