"""Queueing a job: the request is checked in full first (a 4xx that says what is wrong), so only sound jobs wait."""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import readable
from ..jobs import Job, JobQueue
from ..limits import Limits
from ..registry import ModelEntry
from ..schemas import InpaintParams, JobCreated, SamplingParams
from ..tasks import RequestError, Spec, build_spec, known_mask, run_spec, test_set
from ..uploads import decode_image, decode_mask
from .deps import Queue, Registry, ServerLimits

# /api/inpaint is multipart (for the files), so its parameters come as one JSON form field
ParamsField = Annotated[str, Form(description="InpaintParams as JSON")]
ImageFile = Annotated[UploadFile | None, File(description="PNG/JPEG when source = upload")]
MaskFile = Annotated[UploadFile | None, File(description="PNG of the model's size: white = generate")]

router = APIRouter()


@router.post("/api/generate", status_code=202, response_model=JobCreated,
             summary="queue a generation (503 when busy: retry)")
async def generate(params: SamplingParams, registry: Registry, queue: Queue, limits: ServerLimits):
    spec = build_spec(params, registry.get(params.model), limits)
    return _submit(queue, limits, "generate", spec)


@router.post("/api/inpaint", status_code=202, response_model=JobCreated,
             summary="queue an inpainting / outpainting / uncropping / class edit (503 when busy: retry)")
async def inpaint(params: ParamsField, registry: Registry, queue: Queue, limits: ServerLimits,
                  image: ImageFile = None, mask: MaskFile = None):
    try:
        p = InpaintParams.model_validate_json(params)
    except ValidationError as e:
        return JSONResponse({"detail": readable(e.errors())}, status_code=422)
    entry = registry.get(p.model)
    picture = await _picture(p, entry, image, limits)
    drawn = None
    if mask is not None:
        drawn = await asyncio.to_thread(decode_mask, await mask.read(), entry.config.image_size, limits)
    known = known_mask(p, drawn, entry.config.image_size)
    spec = build_spec(p, entry, limits, picture, known)
    return _submit(queue, limits, "inpaint", spec, {"image": picture, "known": known})


async def _picture(p: InpaintParams, entry: ModelEntry, image: UploadFile | None, limits: Limits):
    """The image to complete, uint8 (1, C, S, S): the upload, or the chosen test-set image."""
    if p.source == "upload":
        if image is None:
            raise RequestError("source is 'upload' but no image file was sent")
        C, S = entry.config.channels, entry.config.image_size
        return await asyncio.to_thread(decode_image, await image.read(), C, S, limits)
    if p.index is None:
        raise RequestError("choose a test-set image (index) or upload one")
    images, _ = await asyncio.to_thread(test_set, entry)
    if p.index >= len(images):
        raise RequestError(f"index {p.index} is outside the test set (0–{len(images) - 1})")
    return images[p.index:p.index + 1].clone()


def _submit(queue: JobQueue, limits: Limits, kind: str, spec: Spec, inputs: dict | None = None) -> JobCreated:
    """Queue the job (`Busy`, a 503, when the queue is full) and tell the client where to follow it."""
    job = Job(kind, lambda j: run_spec(spec, j), limits.max_seconds, limits.max_frame_bytes)
    job.grid = spec.grid
    job.inputs = inputs or {}
    queue.submit(job)
    return JobCreated(id=job.id, events=f"/api/jobs/{job.id}/events", status=f"/api/jobs/{job.id}",
                      queued_before=queue.position(job))
