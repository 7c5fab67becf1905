"""Every error answers JSON `{"detail": one line a person can act on}`, never a traceback (the log has it)."""
from __future__ import annotations

import traceback

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .jobs import Busy
from .registry import UnknownModel
from .tasks import RequestError
from .uploads import UploadError


def readable(errors) -> str:
    """pydantic errors as one line: 'cfg: Input should be a finite number'."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


async def _invalid(request, exc: RequestValidationError):
    return JSONResponse({"detail": readable(exc.errors())}, status_code=422)


async def _unknown_model(request, exc: UnknownModel):
    return JSONResponse({"detail": exc.message}, status_code=404)


async def _bad_request(request, exc: RequestError | UploadError):
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _busy(request, exc: Busy):
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "2"})


async def _internal(request, exc: Exception):
    traceback.print_exception(exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def add_error_handlers(app: FastAPI):
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(UnknownModel, _unknown_model)
    app.add_exception_handler(RequestError, _bad_request)
    app.add_exception_handler(UploadError, _bad_request)
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(Exception, _internal)
