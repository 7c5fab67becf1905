"""Where a model runs: the device, the torchrun process group and mixed precision. Used by training,
sampling, evaluation and the web app alike, so none of them needs the trainer."""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_context(amp: str, device: torch.device):
    if amp == "auto":
        amp = "bf16" if device.type in ("cpu", "cuda") else "none"
    if amp == "none":
        return nullcontext(), None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run faster than fp32 here: CUDA with bf16, or a CPU with AMX or
    AVX-512 BF16. Elsewhere (an AVX2 CPU) PyTorch emulates bf16 products, many times slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported",
                                                                    "_is_avx512_bf16_supported"))
    return False


def fast_context(device: torch.device):
    """bf16 autocast where `native_bf16`, else nothing: the fast sampling path's precision."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if native_bf16(device) else nullcontext()


def batch_workers(device: torch.device, batches: int) -> int:
    """Batches to sample side by side: one per intra-op thread on a CPU that can fork (Linux), two on
    another multi-core CPU, else one.

    Sampling runs thousands of small operations per image, and a batch gains about 1.3× from a
    second intra-op thread, while two batches each on one thread keep both cores busy (1,000 images
    of the shipped model: 1.48× in two processes, docs/speed.md). More threads than two would queue
    on the interpreter lock; processes do not. On a GPU the batches share one stream: one at a time.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or batches < 2:
        return 1
    return min(threads, batches) if can_fork() else 2


def can_fork() -> bool:
    """Whether worker processes can be forked safely: Linux (macOS forks break its system libraries)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


class side_by_side:
    """Run `fn` over items in `workers` forked processes with one intra-op thread each, or (where
    forking is unsafe, or with `processes=False`) in threads with `threads // workers` each.

    A context manager (`with side_by_side(2) as run: for result in run(fn, items): …`) so the workers
    and the intra-op thread count are cleaned up however the loop ends. Results come back as their
    items finish, in no fixed order. They are a sequential loop's at the workers' intra-op thread
    count (tested). At another thread count they may differ in rare cases: CPU attention with one
    query and 8 or more keys (most lengths) rounds differently at 2 threads than at 1 (docs/codec.md),
    which can tip a close draw (none of 1,000 images of the shipped model changed, docs/speed.md).

    Processes beat threads on a 2-core CPU (1.48× over one batch at a time against 1.39×,
    docs/speed.md): sampling is thousands of small kernels, and threads queue on the interpreter lock
    between them. A forked worker shares the model's memory and needs no re-import; `fn`'s results
    travel back pickled, so they should be small (the sampler writes its images to disk). It runs on
    one intra-op thread because PyTorch's thread pool does not survive a fork: a child's first
    parallel region would hang.
    """

    def __init__(self, workers: int, processes: bool | None = None):
        self.workers = workers
        self.processes = workers > 1 and (can_fork() if processes is None else processes)

    def __enter__(self):
        self.threads = torch.get_num_threads()
        self.pool = None
        if self.workers > 1 and not self.processes:
            torch.set_num_threads(max(1, self.threads // self.workers))
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(self.workers)
        self.children = []
        return self.map

    def map(self, fn, items):
        if self.workers == 1:
            return map(fn, items)
        if self.pool is not None:
            return self.pool.map(fn, items)
        return self._forked(fn, list(items))

    def _forked(self, fn, items):
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("fork")
        shares = [items[w::self.workers] for w in range(self.workers)]
        links = {}
        for share in filter(None, shares):
            reader, writer = ctx.Pipe(duplex=False)
            child = ctx.Process(target=_work, args=(fn, share, writer), daemon=True)
            child.start()
            writer.close()
            self.children.append(child)
            links[reader] = [child, len(share)]
        while links:
            for reader in wait(list(links)):
                child, left = links[reader]
                try:
                    ok, value = reader.recv()
                except EOFError:  # the worker died without a word (killed, out of memory)
                    child.join()
                    raise RuntimeError(f"a worker process exited with code {child.exitcode} "
                                       f"before finishing its {left} item(s)") from None
                if not ok:
                    error, where = value
                    raise error from WorkerTraceback(where)
                links[reader][1] -= 1
                if links[reader][1] == 0:
                    del links[reader]
                    reader.close()
                yield value

    def __exit__(self, *exc):
        for child in self.children:
            if child.is_alive():
                child.terminate()
            child.join()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            torch.set_num_threads(self.threads)


class WorkerTraceback(Exception):
    """Where a forked worker's error was raised: the cause of the error re-raised in the parent."""


def _work(fn, items, link):
    """A forked worker's loop: `fn` over its items, each result (or the error) sent back at once.

    The error goes back as itself (the caller catches its type, e.g. `CodecError`) with the worker's
    traceback as its cause; one that cannot be pickled goes back as a RuntimeError with its text.
    """
    torch.set_num_threads(1)  # before any parallel region: the inherited pool is unusable
    try:
        for item in items:
            link.send((True, fn(item)))
    except BaseException as e:
        import pickle
        import traceback

        where = "in a worker:\n" + traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:
            e = RuntimeError(f"a worker failed:\n{where}")
        link.send((False, (e, where)))
    link.close()
