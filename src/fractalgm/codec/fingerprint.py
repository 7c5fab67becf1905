"""What a coded file depends on: the model (weights, config) and the arithmetic that computed its
probabilities (software versions, CPU capability, device, dtype).

The decoder must recompute the encoder's probabilities bit for bit. Anything in `runtime` that differs
could change a rounding somewhere, so a mismatch is refused before decoding rather than risking a
desynchronised stream; the per-image checksums catch what these fields cannot see.
"""
from __future__ import annotations

import hashlib

import torch

from .errors import CodecError


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 (first 32 hex digits) of every tensor of the state dict: names, dtypes, shapes, bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def config_hash(config) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def device_name(device: torch.device) -> str:
    """"cpu", or the accelerator's model (another GPU model may round differently)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def runtime(model) -> dict:
    """The software and hardware that computed the probabilities."""
    from .._version import __version__

    return {"fractalgm": __version__, "torch": torch.__version__,
            "cpu": torch.backends.cpu.get_cpu_capability(), "device": device_name(model.device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def model_fields(model, name: str | None) -> dict:
    return {"model": name or "?", "weights": weights_hash(model), "config": config_hash(model.config)}


def check_compatible(header: dict, model, name: str | None):
    """Refuse to decode with another model or another arithmetic, naming the difference."""
    mine = model_fields(model, name)
    if header["weights"] != mine["weights"] or header["config"] != mine["config"]:
        raise CodecError(f"coded with model {header['model']} (weights {header['weights'][:12]}), not with "
                         f"{mine['model']} (weights {mine['weights'][:12]}); decode with --model {header['model']}")
    here = runtime(model)
    for key, value in here.items():
        if header[key] != value:
            hint = (f"; set ATEN_CPU_CAPABILITY={header[key].lower()} if this CPU supports it"
                    if key == "cpu" else "")
            raise CodecError(f"coded with {key} {header[key]}, this process has {value}: the model's "
                             f"probabilities could round differently, so it is refused{hint}")
