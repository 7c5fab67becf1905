"""Storage: model folders (safetensors + JSON config), atomic writes, the reference's `.pth` files."""
from .atomic import atomic_write
from .checkpoint import (
                         CheckpointError,
                         list_pretrained,
                         load_pretrained,
                         read_metadata,
                         resolve_pretrained,
                         save_pretrained,
)

__all__ = ["CheckpointError", "atomic_write", "list_pretrained", "load_pretrained", "read_metadata",
           "resolve_pretrained", "save_pretrained"]
