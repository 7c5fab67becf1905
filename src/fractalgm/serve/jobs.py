"""A bounded worker queue of generation jobs, each with its own live stream of frames.

`JobQueue.submit` raises `Busy` when `queue_size` jobs already wait, instead of letting requests pile
up; `workers` threads run the jobs. A job's `task(job)` reports frames through `job.frame(...)`, which
is also where a job stops: when it was cancelled (its page closed its stream) or ran past its time
limit. Finished jobs are kept a while for their downloads, the oldest dropped first, so the memory
the server holds stays bounded whatever the traffic.
"""
from __future__ import annotations

import collections
import secrets
import threading
import time
import traceback
from typing import Callable

import torch

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "error", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


class Busy(RuntimeError):
    """The queue is full: answer 503 and let the client retry."""


class JobStopped(Exception):
    """Raised inside a running job (through its frame callback) to stop it: cancelled or out of time."""


class Job:
    """One request's work, its progress and its result. Thread-safe: the worker writes, streams read."""

    def __init__(self, kind: str, task: Callable[["Job"], dict], max_seconds: float, max_frame_bytes: int):
        self.id = secrets.token_urlsafe(12)  # unguessable: a stream or a result belongs to whoever started it
        self.kind = kind
        self.task = task
        self.max_seconds = max_seconds
        self.max_frame_bytes = max_frame_bytes
        self.status = QUEUED
        self.message = ""
        self.result: dict = {}
        self.images: torch.Tensor | None = None  # the finished images, for result.png
        self.inputs: dict[str, torch.Tensor] = {}  # what an inpainting job started from, for input.png / mask.png
        self.grid: dict = {"nrow": 1, "by_column": False}
        self.gif: bytes | None = None
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel_reason: str | None = None
        self.viewers = 0  # open streams
        self.frame_count = 0
        self.latest: tuple[int | None, torch.Tensor] | None = None  # (level, painted images) of the last frame
        self.frames: list[torch.Tensor] = []  # kept for the GIF, thinned when over max_frame_bytes
        self._keep_every = 1
        self._lock = threading.Lock()

    # ------------------------------------------------------------ called by the worker / the task
    def frame(self, level: int | None, images: torch.Tensor):
        """Record one frame (uint8 (B, C, H, W), a copy the job may keep); stop the job if it must stop."""
        self.check()
        with self._lock:
            self.frame_count += 1
            self.latest = (level, images)
            if (self.frame_count - 1) % self._keep_every == 0:
                self.frames.append(images)
                if len(self.frames) > 2 and len(self.frames) * images.numel() > self.max_frame_bytes:
                    # keep memory bounded: drop every other frame (the task adds the final one last)
                    self.frames = self.frames[::2]
                    self._keep_every *= 2

    def check(self):
        if self.cancel_reason is not None:
            raise JobStopped(self.cancel_reason)
        if self.started is not None and time.monotonic() - self.started > self.max_seconds:
            raise JobStopped(f"the job ran past the server's limit of {self.max_seconds:g} s; "
                             f"ask for fewer images or steps")

    # ------------------------------------------------------------ called by streams / requests
    def cancel(self, reason: str = "cancelled"):
        if self.status not in FINISHED and self.cancel_reason is None:
            self.cancel_reason = reason
            if self.status == QUEUED:
                self._finish(CANCELLED, reason)

    def attach(self):
        with self._lock:
            self.viewers += 1

    def detach(self):
        """A stream closed; when it was the last one and the job is not finished, nobody watches: stop it."""
        with self._lock:
            self.viewers -= 1
            last = self.viewers == 0
        if last and self.status not in FINISHED:
            self.cancel("cancelled: the page that started it closed its stream")

    def snapshot(self):
        with self._lock:
            return self.status, self.frame_count, self.latest

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "status": self.status, "message": self.message,
                "frames": self.frame_count, **({"result": self.result} if self.status == DONE else {})}

    def _finish(self, status: str, message: str = ""):
        with self._lock:
            self.status, self.message, self.finished = status, message, time.monotonic()

    def run(self):
        if self.status in FINISHED:
            return
        self.status, self.started = RUNNING, time.monotonic()
        try:
            self.check()
            result = self.task(self)
            self.result = result
            self._finish(DONE)
        except JobStopped as e:
            self._finish(CANCELLED if self.cancel_reason else FAILED, str(e))
        except (ValueError, TypeError) as e:  # bad options the checks before submitting did not catch
            self._finish(FAILED, str(e))
        except Exception as e:  # never kill the worker; the page gets a message, the log the traceback
            traceback.print_exc()
            self._finish(FAILED, f"internal error: {type(e).__name__}: {e}")
        finally:
            self.task = None  # drop references to the inputs


class JobQueue:
    """At most `queue_size` waiting jobs, `workers` running ones, `keep_jobs` finished ones."""

    def __init__(self, queue_size: int, workers: int, keep_jobs: int, keep_seconds: float):
        self.queue_size, self.keep_jobs, self.keep_seconds = queue_size, keep_jobs, keep_seconds
        self.jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"fractalgm-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            self._waiting = collections.deque(j for j in self._waiting if j.status == QUEUED)
            if len(self._waiting) >= self.queue_size:
                raise Busy(f"busy: {len(self._waiting)} job(s) already wait for a worker; retry in a few seconds")
            self._prune()
            self.jobs[job.id] = job
            self._waiting.append(job)
            self._cond.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self.jobs.get(job_id)

    def waiting(self) -> int:
        with self._cond:
            return sum(j.status == QUEUED for j in self._waiting)

    def position(self, job: Job) -> int:
        """How many jobs wait before this one (0 when it runs or is next)."""
        with self._cond:
            live = [j for j in self._waiting if j.status == QUEUED]
            return live.index(job) if job in live else 0

    def _prune(self):
        now = time.monotonic()
        done = sorted((j for j in self.jobs.values() if j.status in FINISHED), key=lambda j: j.finished)
        for j in done:
            if now - j.finished > self.keep_seconds:
                del self.jobs[j.id]
        done = [j for j in done if j.id in self.jobs]
        for j in done[:max(0, len(done) - self.keep_jobs + 1)]:
            del self.jobs[j.id]

    def _work(self):
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
            job.run()
            with self._cond:
                self._prune()

    def close(self):
        """Stop the workers after their current job; cancel what waits and what runs."""
        with self._cond:
            self._closed = True
            for j in list(self.jobs.values()):
                j.cancel("the server is shutting down")
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=10)
