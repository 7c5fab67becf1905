"""The FastAPI app: the page, the JSON API (`/openapi.json`) and the live streams of frames.

`create_app` only assembles: the server's state (model whitelist, job queue, limits) on `app.state`,
the upload bound, the error answers and the routers of `routes`, whose docstring tells the protocol.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .._version import __version__
from .body_limit import BodyLimit
from .errors import add_error_handlers
from .jobs import JobQueue
from .limits import Limits
from .registry import ModelRegistry
from .routes import downloads, pages, submit, watch
from .routes.pages import STATIC

DESCRIPTION = ("Generate, inpaint and edit images with fractal generative models and watch the recursion live. "
               "POST /api/generate or /api/inpaint queues a job (202; 503 when the queue is full: retry), "
               "GET /api/jobs/{id}/events streams its frames as server-sent events.")


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    await asyncio.to_thread(app.state.queue.close)  # cancels the jobs; their streams then end


def create_app(models: list[str] | ModelRegistry | None = None, limits: Limits | None = None,
               device: str = "cpu", testset: str | None = "fashion_mnist", fast: bool = False) -> FastAPI:
    """The app over a fixed whitelist of models (shipped names or folders; default: the shipped ones),
    sampling on the fast path with `fast`."""
    limits = limits or Limits()
    registry = models if isinstance(models, ModelRegistry) else ModelRegistry(models, device, testset, fast)
    queue = JobQueue(limits.queue_size, limits.workers, limits.keep_jobs, limits.keep_seconds)
    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN, and this app stays offline
    app = FastAPI(title="fractalgm serve", version=__version__, lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description=DESCRIPTION)
    app.state.registry, app.state.queue, app.state.limits = registry, queue, limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app)
    for routes in (pages, submit, watch, downloads):
        app.include_router(routes.router)
    return app
