"""How a route reaches the server's state (`app.state`, set by `create_app`) and a job by its id."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi import Path as PathParam

from ..jobs import Job, JobQueue
from ..limits import Limits
from ..registry import ModelRegistry


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


def _limits(request: Request) -> Limits:
    return request.app.state.limits


Registry = Annotated[ModelRegistry, Depends(_registry)]
Queue = Annotated[JobQueue, Depends(_queue)]
ServerLimits = Annotated[Limits, Depends(_limits)]
# job ids are `secrets.token_urlsafe(12)`; anything else (a path, say) is refused before any lookup
JobId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{8,32}$")]


def find_job(queue: JobQueue, job_id: str) -> Job:
    job = queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or finished long ago and dropped)")
    return job
