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
