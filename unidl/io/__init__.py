"""File formats and safe file writing under ``unidl.save`` and the checkpoints: NumPy only, no pickle."""

from unidl.io.atomic import atomic_open, atomic_write_bytes
from unidl.io.safetensors import load_file, save_file

__all__ = ["atomic_open", "atomic_write_bytes", "load_file", "save_file"]
