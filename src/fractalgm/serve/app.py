"""The FastAPI app: the page, the JSON API (`/openapi.json`) and the live streams of frames.

A generation is two requests: POST /api/generate (or /api/inpaint) checks everything and queues a
job, answering 202 with its id, 503 "busy, retry" when the queue is full, or a 4xx that says what
is wrong; GET /api/jobs/{id}/events then streams the job's frames as server-sent events, at most
`frames_per_second`, the latest frame winning. Closing that stream (closing the tab) cancels the job.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError

from .._version import __version__
from ..viz.animate import paint_unknown, save_animation
from ..viz.grid import make_grid, to_pil
from .jobs import CANCELLED, DONE, FINISHED, QUEUED, Busy, Job, JobQueue
from .limits import Limits
from .registry import ModelRegistry, UnknownModel
from .schemas import InpaintParams, JobCreated, SamplingParams
from .tasks import RequestError, build_spec, known_mask, run_spec
from .uploads import UploadError, decode_image, decode_mask

STATIC = Path(__file__).parent / "static"
JOB_ID = r"^[A-Za-z0-9_-]{8,32}$"
HEARTBEAT_SECONDS = 10.0


def png_bytes(images: torch.Tensor, nrow: int, by_column: bool = False, scale: int = 1, pad: int = 2) -> bytes:
    """uint8 images as one PNG grid (`fractalgm.viz.make_grid`; pad 0 for a single image)."""
    buffer = io.BytesIO()
    to_pil(make_grid(images, nrow, pad=pad, by_column=by_column), scale).save(buffer, format="PNG")
    return buffer.getvalue()


def _readable(errors) -> str:
    """pydantic errors as one line a person can act on: 'cfg: Input should be a finite number'."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (413) before they are parsed or stored."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"detail": f"the request is larger than the server's limit of {self.max_bytes:,} "
                                     f"bytes; upload a smaller image"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(models: list[str] | ModelRegistry | None = None, limits: Limits | None = None,
               device: str = "cpu", testset: str | None = "fashion_mnist") -> FastAPI:
    """The app over a fixed whitelist of models (shipped names or folders; default: the shipped ones)."""
    limits = limits or Limits()
    registry = models if isinstance(models, ModelRegistry) else ModelRegistry(models, device, testset)
    queue = JobQueue(limits.queue_size, limits.workers, limits.keep_jobs, limits.keep_seconds)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(queue.close)

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN, and this app stays offline
    app = FastAPI(title="fractalgm serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=(
        "Generate, inpaint and edit images with fractal generative models and watch the recursion live. "
        "POST /api/generate or /api/inpaint queues a job (202; 503 when the queue is full: retry), "
        "GET /api/jobs/{id}/events streams its frames as server-sent events."))
    app.state.registry, app.state.queue, app.state.limits = registry, queue, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------------ errors: always a message
    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return JSONResponse({"detail": _readable(exc.errors())}, status_code=422)

    @app.exception_handler(UnknownModel)
    async def _unknown_model(request, exc):
        return JSONResponse({"detail": exc.message}, status_code=404)

    @app.exception_handler(RequestError)
    @app.exception_handler(UploadError)
    async def _bad_request(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Busy)
    async def _busy(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # no traceback to the client; the server log has it
        import traceback

        traceback.print_exception(exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    # ------------------------------------------------------------------ page and models
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/models", summary="the models this server offers, and its limits")
    async def list_models():
        infos = await asyncio.to_thread(lambda: [registry.get(n).info() for n in registry.names])
        return {"models": infos, "limits": {k: v for k, v in vars(limits).items()}}

    @app.get("/api/models/{model}/testset", summary="test-set images for the picker (PNG data URLs)")
    async def test_images(model: str, start: int = Query(0, ge=0), count: int = Query(24, ge=1, le=100)):
        entry = registry.get(model)
        data = await asyncio.to_thread(_test_set, entry)
        images, labels = data
        names = entry.class_names()
        items = [{"index": i, "label": int(labels[i]), "class_name": names[int(labels[i])],
                  "png": "data:image/png;base64," + base64.b64encode(png_bytes(images[i:i + 1], 1, pad=0)).decode()}
                 for i in range(start, min(start + count, len(images)))]
        return {"total": len(images), "items": items}

    # ------------------------------------------------------------------ jobs
    def _queue(kind: str, spec, inputs: dict | None = None) -> JobCreated:
        job = Job(kind, lambda j: run_spec(spec, j), limits.max_seconds, limits.max_frame_bytes)
        job.grid = spec.grid
        job.inputs = inputs or {}
        queue.submit(job)
        return JobCreated(id=job.id, events=f"/api/jobs/{job.id}/events", status=f"/api/jobs/{job.id}",
                          queued_before=queue.position(job))

    @app.post("/api/generate", status_code=202, response_model=JobCreated,
              summary="queue a generation (503 when busy: retry)")
    async def generate(params: SamplingParams):
        spec = build_spec(params, registry.get(params.model), limits)
        return _queue("generate", spec)

    @app.post("/api/inpaint", status_code=202, response_model=JobCreated,
              summary="queue an inpainting / outpainting / uncropping / class edit (503 when busy: retry)")
    async def inpaint(params: str = Form(..., description="InpaintParams as JSON"),
                      image: UploadFile | None = File(None, description="PNG/JPEG when source = upload"),
                      mask: UploadFile | None = File(None, description="PNG of the model's size: white = generate")):
        try:
            p = InpaintParams.model_validate_json(params)
        except ValidationError as e:
            return JSONResponse({"detail": _readable(e.errors())}, status_code=422)
        entry = registry.get(p.model)
        C, S = entry.config.channels, entry.config.image_size
        if p.source == "upload":
            if image is None:
                raise RequestError("source is 'upload' but no image file was sent")
            picture = await asyncio.to_thread(decode_image, await image.read(), C, S, limits)
        else:
            if p.index is None:
                raise RequestError("choose a test-set image (index) or upload one")
            images, _ = await asyncio.to_thread(_test_set, entry)
            if p.index >= len(images):
                raise RequestError(f"index {p.index} is outside the test set (0–{len(images) - 1})")
            picture = images[p.index:p.index + 1].clone()
        drawn = None
        if mask is not None:
            drawn = await asyncio.to_thread(decode_mask, await mask.read(), S, limits)
        known = known_mask(p, drawn, S)
        spec = build_spec(p, entry, limits, picture, known)
        return _queue("inpaint", spec, {"image": picture, "known": known})

    def _job(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or finished long ago and dropped)")
        return job

    @app.get("/api/jobs/{job_id}", summary="a job's state and, when done, its result")
    async def job_status(job_id: str = PathParam(pattern=JOB_ID)):
        return _job(job_id).public()

    @app.post("/api/jobs/{job_id}/cancel", summary="stop a job")
    async def cancel(job_id: str = PathParam(pattern=JOB_ID)):
        job = _job(job_id)
        job.cancel("cancelled by the page")
        return job.public()

    @app.get("/api/jobs/{job_id}/events", summary="server-sent events: queued…, frame…, then done | failed | cancelled",
             response_class=StreamingResponse)
    async def events(request: Request, job_id: str = PathParam(pattern=JOB_ID)):
        job = _job(job_id)
        return StreamingResponse(_stream(request, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def _stream(request: Request, job: Job):
        job.attach()
        try:
            sent, position, quiet = 0, None, 0.0
            interval = 1.0 / limits.frames_per_second
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

    # ------------------------------------------------------------------ downloads
    @app.get("/api/jobs/{job_id}/result.png", summary="the finished images as one PNG grid",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def result_png(job_id: str = PathParam(pattern=JOB_ID), scale: int = Query(1, ge=1, le=16)):
        job = _finished(job_id)
        png = await asyncio.to_thread(png_bytes, job.images, job.grid["nrow"], job.grid["by_column"], scale)
        return Response(png, media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="fractalgm-{job.id}.png"'})

    @app.get("/api/jobs/{job_id}/animation.gif", summary="the generation process as a GIF",
             response_class=Response, responses={200: {"content": {"image/gif": {}}}})
    async def animation(job_id: str = PathParam(pattern=JOB_ID)):
        job = _finished(job_id)
        if job.gif is None:
            job.gif = await asyncio.to_thread(_gif, job)
        return Response(job.gif, media_type="image/gif",
                        headers={"Content-Disposition": f'attachment; filename="fractalgm-{job.id}.gif"'})

    @app.get("/api/jobs/{job_id}/input.png", summary="an inpainting job's input, unknown pixels grey",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def input_png(job_id: str = PathParam(pattern=JOB_ID)):
        job = _job(job_id)
        if "image" not in job.inputs:
            raise HTTPException(404, "this job has no input image (it is a generation)")
        image, known = job.inputs["image"], job.inputs["known"]
        return Response(png_bytes(paint_unknown(image, ~known.expand_as(image)), 1, pad=0), media_type="image/png")

    @app.get("/api/jobs/{job_id}/mask.png", summary="an inpainting job's mask: white = generated, black = kept",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def mask_png(job_id: str = PathParam(pattern=JOB_ID)):
        job = _job(job_id)
        if "known" not in job.inputs:
            raise HTTPException(404, "this job has no mask (it is a generation)")
        white = (~job.inputs["known"]).to(torch.uint8) * 255
        return Response(png_bytes(white, 1, pad=0), media_type="image/png")

    def _finished(job_id: str) -> Job:
        job = _job(job_id)
        if job.status != DONE:
            raise HTTPException(409, f"the job is {job.status}; downloads exist once it is done")
        return job

    return app


def _test_set(entry):
    try:
        data = entry.test_set()
    except (OSError, ValueError) as e:
        raise RequestError(f"the test set of {entry.name!r} cannot be loaded: {e}", 404) from e
    if data is None:
        raise RequestError(f"{entry.name!r} has no test-set picker; upload an image instead", 404)
    return data


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def _gif(job: Job) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "animation.gif"
        save_animation(job.frames, path, nrow=job.grid["nrow"], by_column=job.grid["by_column"], scale=4,
                       seconds=6.0)
        return path.read_bytes()
