"""A job's files: the finished grid (PNG) and its animation (GIF), and an inpainting job's input and mask."""
from __future__ import annotations

import asyncio

import torch
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from ...viz.animate import paint_unknown
from ..encode import gif_bytes, png_bytes
from ..jobs import DONE, Job, JobQueue
from .deps import JobId, Queue, find_job

PNG = {200: {"content": {"image/png": {}}}}
GIF = {200: {"content": {"image/gif": {}}}}

router = APIRouter()


@router.get("/api/jobs/{job_id}/result.png", summary="the finished images as one PNG grid",
            response_class=Response, responses=PNG)
async def result_png(queue: Queue, job_id: JobId, scale: int = Query(1, ge=1, le=16)):
    job = _finished(queue, job_id)
    png = await asyncio.to_thread(png_bytes, job.images, job.grid["nrow"], job.grid["by_column"], scale)
    return Response(png, media_type="image/png", headers=_attachment(job, "png"))


@router.get("/api/jobs/{job_id}/animation.gif", summary="the generation process as a GIF",
            response_class=Response, responses=GIF)
async def animation(queue: Queue, job_id: JobId):
    job = _finished(queue, job_id)
    if job.gif is None:  # made on the first download, then kept with the job
        job.gif = await asyncio.to_thread(gif_bytes, job)
    return Response(job.gif, media_type="image/gif", headers=_attachment(job, "gif"))


@router.get("/api/jobs/{job_id}/input.png", summary="an inpainting job's input, unknown pixels grey",
            response_class=Response, responses=PNG)
async def input_png(queue: Queue, job_id: JobId):
    job = find_job(queue, job_id)
    if "image" not in job.inputs:
        raise HTTPException(404, "this job has no input image (it is a generation)")
    image, known = job.inputs["image"], job.inputs["known"]
    return Response(png_bytes(paint_unknown(image, ~known.expand_as(image)), 1, pad=0), media_type="image/png")


@router.get("/api/jobs/{job_id}/mask.png", summary="an inpainting job's mask: white = generated, black = kept",
            response_class=Response, responses=PNG)
async def mask_png(queue: Queue, job_id: JobId):
    job = find_job(queue, job_id)
    if "known" not in job.inputs:
        raise HTTPException(404, "this job has no mask (it is a generation)")
    white = (~job.inputs["known"]).to(torch.uint8) * 255
    return Response(png_bytes(white, 1, pad=0), media_type="image/png")


def _finished(queue: JobQueue, job_id: str) -> Job:
    job = find_job(queue, job_id)
    if job.status != DONE:
        raise HTTPException(409, f"the job is {job.status}; downloads exist once it is done")
    return job


def _attachment(job: Job, extension: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="fractalgm-{job.id}.{extension}"'}
