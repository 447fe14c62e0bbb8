"""File formats and safe file writing under ``unidl.save`` and the checkpoints: no pickle.

Every file written here carries a crc32 of each tensor and of its header, which the readers check; every
header read is parsed by unidl and again by the safetensors package, and both must accept it.
"""

from unidl.io.atomic import atomic_open, atomic_write_bytes, remove_stale_temporaries
from unidl.io.safetensors import SafetensorsFile, load_file, save_file

__all__ = ["atomic_open", "atomic_write_bytes", "remove_stale_temporaries", "SafetensorsFile", "load_file",
           "save_file"]
