"""Where a model runs: the device, the torchrun process group and mixed precision. Used by training,
sampling, evaluation and the web app alike, so none of them needs the trainer."""
from __future__ import annotations

import os
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
    """Batches to sample side by side: two on a multi-core CPU, else one.

    Sampling runs thousands of small operations per image, and a small matrix product gains little
    from a second thread (about 1.2× on 2 cores) while two batches each on one thread keep both
    cores busy (1.4× for two batches of 100 on 2 cores, docs/speed.md). More Python threads would
    queue on the interpreter lock. On a GPU the batches share one stream: one at a time.
    """
    return 2 if device.type == "cpu" and torch.get_num_threads() >= 2 and batches >= 2 else 1


class side_by_side:
    """Run `fn` over items in `workers` threads, each with `threads // workers` intra-op threads.

    A context manager (`with side_by_side(2) as run: for result in run(fn, items): …`) so the
    intra-op thread count is restored however the loop ends. Results come back in item order. The
    CPU kernels of sampling split their work across threads by rows, never inside one sum, so each
    item's numbers do not depend on the thread count: the results are a sequential loop's (tested).
    """

    def __init__(self, workers: int):
        self.workers = workers

    def __enter__(self):
        self.threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(max(1, self.threads // self.workers))
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(self.workers)
        return self.map

    def map(self, fn, items):
        return map(fn, items) if self.workers == 1 else self.pool.map(fn, items)

    def __exit__(self, *exc):
        if self.workers > 1:
            self.pool.shutdown(cancel_futures=True)
            torch.set_num_threads(self.threads)
