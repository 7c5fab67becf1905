"""The page, and what it shows before any job: the models on offer, the server's limits, test-set pictures."""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from ..encode import png_bytes
from ..tasks import test_set
from .deps import Registry, ServerLimits

STATIC = Path(__file__).parents[1] / "static"  # the page's files, served under /static by `create_app`

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/api/models", summary="the models this server offers, and its limits")
async def list_models(registry: Registry, limits: ServerLimits):
    infos = await asyncio.to_thread(lambda: [registry.get(n).info() for n in registry.names])
    return {"models": infos, "limits": dict(vars(limits))}


@router.get("/api/models/{model}/testset", summary="test-set images for the picker (PNG data URLs)")
async def test_images(registry: Registry, model: str, start: int = Query(0, ge=0),
                      count: int = Query(24, ge=1, le=100)):
    entry = registry.get(model)
    images, labels = await asyncio.to_thread(test_set, entry)
    names = entry.class_names()
    items = [{"index": i, "label": int(labels[i]), "class_name": names[int(labels[i])],
              "png": "data:image/png;base64," + base64.b64encode(png_bytes(images[i:i + 1], 1, pad=0)).decode()}
             for i in range(start, min(start + count, len(images)))]
    return {"total": len(images), "items": items}
