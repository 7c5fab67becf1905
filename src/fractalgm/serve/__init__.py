"""`fractalgm serve`: a local web app to generate, inpaint and edit images and watch the recursion live.

The paper's point that pixel-by-pixel generation is interpretable and interactive, made visible: the
page streams every frame of the recursion (level by level, depth first) as the model draws it. The
server is a FastAPI (Starlette + uvicorn) app over the public model API (`app` assembles the routers
of `routes`); generation runs in a bounded worker queue (`jobs`), requests are validated against
limits fixed at start (`limits`), and only the models named at start can ever be loaded (`registry`).
Install with `pip install "fractalgm[serve]"`.
"""
from .limits import Limits

__all__ = ["Limits", "create_app"]


def create_app(*args, **kwargs):
    """The ASGI app (see `fractalgm.serve.app.create_app`); imported lazily so the CLI works without FastAPI."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
