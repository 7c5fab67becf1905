"""Following a job: its state, its live frames as server-sent events, and stopping it."""
from __future__ import annotations

import asyncio
import base64
import json

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..encode import png_bytes
from ..jobs import CANCELLED, DONE, FINISHED, QUEUED, Job, JobQueue
from .deps import JobId, Queue, ServerLimits, find_job

HEARTBEAT_SECONDS = 10.0

router = APIRouter()


@router.get("/api/jobs/{job_id}", summary="a job's state and, when done, its result")
async def job_status(queue: Queue, job_id: JobId):
    return find_job(queue, job_id).public()


@router.post("/api/jobs/{job_id}/cancel", summary="stop a job")
async def cancel(queue: Queue, job_id: JobId):
    job = find_job(queue, job_id)
    job.cancel("cancelled by the page")
    return job.public()


@router.get("/api/jobs/{job_id}/events", summary="server-sent events: queued…, frame…, then done | failed | cancelled",
            response_class=StreamingResponse)
async def events(request: Request, queue: Queue, limits: ServerLimits, job_id: JobId):
    job = find_job(queue, job_id)
    return StreamingResponse(_stream(request, queue, job, 1.0 / limits.frames_per_second),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(request: Request, queue: JobQueue, job: Job, interval: float):
    """Poll the job every `interval`: its place in the queue, its newest frame, then how it ended.

    The stream counts as a viewer of the job while it is open; the last viewer leaving cancels it.
    """
    job.attach()
    try:
        sent, position, quiet = 0, None, 0.0
        while True:
            status, count, latest = job.snapshot()
            if status == QUEUED and queue.position(job) != position:
                position = queue.position(job)
                yield _event("queued", {"before": position})
            if count != sent and latest is not None:
                sent, (level, images) = count, latest
                png = await asyncio.to_thread(png_bytes, images, job.grid["nrow"], job.grid["by_column"])
                yield _event("frame", {"n": count, "level": level, "png": base64.b64encode(png).decode()})
                quiet = 0.0
            if status in FINISHED:
                yield _event({DONE: "done", CANCELLED: "cancelled"}.get(status, "failed"), job.public())
                return
            if quiet >= HEARTBEAT_SECONDS:  # lets a closed connection show up as a failed write
                yield ": keep-alive\n\n"
                quiet = 0.0
            if await request.is_disconnected():
                return
            await asyncio.sleep(interval)
            quiet += interval
    finally:
        job.detach()


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
