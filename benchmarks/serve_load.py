"""Load test of `fractalgm serve`: N concurrent generation requests against a local server.

Starts `fractalgm serve` on 127.0.0.1 (loopback only; never another host), sends `--requests`
generation requests from `--concurrency` client threads — each POSTs a job and reads its event
stream to the end — in two rounds, and reports latency percentiles (POST to the final event),
failures, "busy" answers, and the server's resident memory before, after round 1 and after round 2
(growth between the rounds would be a leak; the first round also warms caches). Bounded: at most 64
requests a round and `--max-seconds` in all. Writes JSON with `--json`.

    OMP_NUM_THREADS=1 python benchmarks/serve_load.py --model fmnist-mar --requests 12 --concurrency 4
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
MAX_REQUESTS = 64


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def one_request(base: str, body: dict, timeout: float) -> dict:
    """POST a generation, read its server-sent events to the end; the outcome and the latency."""
    start = time.perf_counter()
    request = urllib.request.Request(base + "/api/generate", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            job = json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"outcome": "busy" if e.code == 503 else f"http {e.code}", "seconds": time.perf_counter() - start}
    except OSError as e:
        return {"outcome": f"connection: {e}", "seconds": time.perf_counter() - start}
    frames, event = 0, None
    try:
        with urllib.request.urlopen(base + job["events"], timeout=timeout) as stream:
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                    frames += event == "frame"
                    if event in ("done", "failed", "cancelled"):
                        break
    except OSError as e:
        return {"outcome": f"stream: {e}", "seconds": time.perf_counter() - start}
    return {"outcome": "ok" if event == "done" else event or "no end", "seconds": time.perf_counter() - start,
            "frames": frames}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def run_round(base, n, concurrency, body, deadline) -> dict:
    timeout = max(1.0, deadline - time.monotonic())
    start = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one_request(base, {**body, "seed": i}, timeout), range(n)))
    wall = time.perf_counter() - start
    ok = [r["seconds"] for r in results if r["outcome"] == "ok"]
    failures = [r["outcome"] for r in results if r["outcome"] not in ("ok", "busy")]
    return {"requests": n, "ok": len(ok), "busy": sum(r["outcome"] == "busy" for r in results),
            "failures": len(failures), "failure_kinds": sorted(set(failures)), "wall_seconds": round(wall, 2),
            "requests_per_second": round(len(ok) / wall, 3),
            "frames_per_request": statistics.mean(r.get("frames", 0) for r in results) if results else 0,
            "latency_seconds": {f"p{q}": round(percentile(ok, q), 3) for q in (50, 90, 99)} | {
                "max": round(max(ok), 3) if ok else None} if ok else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="shipped model name or folder (default: a tiny untrained model made here)")
    p.add_argument("--requests", type=int, default=12, help=f"requests per round (at most {MAX_REQUESTS})")
    p.add_argument("--concurrency", type=int, default=4, help="client threads")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--num-iter", default="8,4", help="MAR steps per level")
    p.add_argument("--workers", type=int, default=1, help="server workers")
    p.add_argument("--queue-size", type=int, help="server queue (default: --requests, so nobody is turned away)")
    p.add_argument("--max-seconds", type=float, default=480, help="bound on the whole run")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS:
        raise SystemExit(f"--requests must be in 1..{MAX_REQUESTS}")
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import torch

            from fractalgm import create_model

            torch.manual_seed(0)
            model = str(create_model("tiny_fmnist").save_pretrained(Path(tmp) / "tiny"))
        port = free_port()
        base = f"http://{HOST}:{port}"
        cmd = [sys.executable, "-m", "fractalgm", "serve", "--model", model, "--host", HOST, "--port", str(port),
               "--device", "cpu", "--workers", str(args.workers), "--queue-size", str(args.queue_size or args.requests)]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            while True:
                try:
                    models = json.loads(urllib.request.urlopen(base + "/api/models", timeout=5).read())
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start: {server.stderr.read()}")
                    time.sleep(0.2)
            name = models["models"][0]["name"]
            body = {"model": name, "num_images": args.num_images, "num_iter": [int(v) for v in args.num_iter.split(",")]}
            one_request(base, body, 120)  # warm-up: first-use allocations are not a leak
            before = rss_mb(server.pid)
            first = run_round(base, args.requests, args.concurrency, body, deadline)
            after_first = rss_mb(server.pid)
            second = run_round(base, args.requests, args.concurrency, body, deadline)
            after_second = rss_mb(server.pid)
            alive = urllib.request.urlopen(base + "/api/models", timeout=5).status == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
    report = {"model": args.model or "tiny_fmnist (untrained)", "host": HOST, "workers": args.workers,
              "concurrency": args.concurrency, "num_images": args.num_images, "num_iter": args.num_iter,
              "rounds": [first, second], "server_alive_after": alive,
              "rss_mb": {"before": round(before, 1), "after_round_1": round(after_first, 1),
                         "after_round_2": round(after_second, 1)},
              "cpu_threads": os.environ.get("OMP_NUM_THREADS", "default")}
    for i, r in enumerate(report["rounds"], 1):
        lat = r["latency_seconds"] or {}
        print(f"round {i}: {r['ok']}/{r['requests']} ok, {r['busy']} busy, {r['failures']} failed; latency p50 "
              f"{lat.get('p50')} s, p90 {lat.get('p90')} s, p99 {lat.get('p99')} s, max {lat.get('max')} s; "
              f"{r['requests_per_second']} req/s; {r['frames_per_request']:.0f} frames streamed per request")
    m = report["rss_mb"]
    print(f"server memory (RSS): {m['before']} MB before, {m['after_round_1']} MB after round 1, "
          f"{m['after_round_2']} MB after round 2; server alive: {alive}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
