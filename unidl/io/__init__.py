"""File formats and safe file writing under ``unidl.save`` and the checkpoints: NumPy only, no pickle.

Every file written here carries a crc32 of each tensor and of its header, which the readers check.
"""

from unidl.io.atomic import atomic_open, atomic_write_bytes, remove_stale_temporaries
from unidl.io.safetensors import SafetensorsFile, load_file, save_file

__all__ = ["atomic_open", "atomic_write_bytes", "remove_stale_temporaries", "SafetensorsFile", "load_file",
           "save_file"]
