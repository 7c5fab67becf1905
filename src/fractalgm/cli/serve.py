"""`fractalgm serve`: start the local web app (127.0.0.1 unless --allow-remote says otherwise)."""
from __future__ import annotations

import ipaddress

from ..checks import POSITIVE, POSITIVE_INT, Number, parse_device
from .generation import add_fast_arg

LOCAL_HOSTS = ("localhost",)


def is_local(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="the local web app: generate, inpaint, watch the recursion live",
                              description=(
        "Start a local web server: generate, inpaint, outpaint, uncrop and edit images in the browser and "
        "watch the canvas fill level by level. Only the models named here (default: the shipped ones) can "
        "be used. Example: fractalgm serve --model fmnist-mar --port 8000"))
    p.add_argument("--model", action="append", metavar="NAME_OR_FOLDER",
                   help="a shipped model name or a model folder; repeat for several (default: all shipped models)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=Number(int, 0, 65535).parse, default=8000, help="TCP port (default 8000)")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than loopback: anyone who reaches it can use this server "
                   "(default: off)")
    p.add_argument("--device", default="auto", type=parse_device, help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    p.add_argument("--testset", default="fashion_mnist",
                   help="dataset of the test-set picker, for models of its image size (default fashion_mnist)")
    p.add_argument("--queue-size", type=POSITIVE_INT.parse, default=8,
                   help="jobs that may wait; more get 503 'busy, retry' (default 8)")
    p.add_argument("--workers", type=POSITIVE_INT.parse, default=1, help="jobs that run at the same time (default 1)")
    p.add_argument("--max-images", type=POSITIVE_INT.parse, default=64, help="images per request (default 64)")
    p.add_argument("--max-steps", type=POSITIVE_INT.parse, default=256, help="MAR steps per level (default 256)")
    p.add_argument("--max-seconds", type=POSITIVE.parse, default=300.0,
                   help="running time of one job (default 300)")
    p.add_argument("--max-upload-mb", type=POSITIVE.parse, default=4.0, help="largest upload in MB (default 4)")
    add_fast_arg(p)
    p.set_defaults(fn=run)
    return p


def run(args):
    from .common import refuse_unused

    refuse_unused(args, [("allow_remote", is_local(args.host), f"--host {args.host} is this machine only")])
    if not is_local(args.host) and not args.allow_remote:
        raise SystemExit(f"refusing to bind {args.host}: it is not a loopback address and this server has no "
                         f"authentication. Pass --allow-remote to do it anyway.")
    if not 0 < args.port < 65536:
        raise SystemExit(f"--port must be in 1..65535, got {args.port}")
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise SystemExit(f"`fractalgm serve` needs the serve extra: pip install 'fractalgm[serve]' ({e})")
    from ..runtime import resolve_device
    from ..serve.limits import Limits

    limits = Limits(queue_size=args.queue_size, workers=args.workers, max_images=args.max_images,
                    max_steps=args.max_steps, max_seconds=args.max_seconds,
                    max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    app = create_app(args.model, limits, device=resolve_device(args.device), testset=args.testset or None,
                     fast=args.fast)
    names = ", ".join(app.state.registry.names)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"fractalgm serve: models {names}; open http://{shown}:{args.port}/ (HTTP API: /openapi.json)",
          flush=True)
    # open event streams must not hold a shutdown (Ctrl-C) for ever
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
