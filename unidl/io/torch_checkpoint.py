"""A PyTorch state dict from a ``torch.save`` file (``.pth``/``.pt``), as NumPy arrays, on any backend.

Read with ``torch.load(weights_only=True)`` where torch is installed, and with unidl's own restricted reader of the
archive (``unidl.io.torch_archive``) where it is not; both refuse anything but tensors and plain containers without
running code named in the file, and one set of checks (``state_dict_arrays``) reads what either gives.
"""

from __future__ import annotations

import os
import re

import numpy as np

from unidl.errors import CorruptFileError
from unidl.io.torch_archive import WIDENED_BITS, StorageView, check_stored_archive, read_torch_archive, shown

#: a terminal's escape codes (torch puts bold text in its weights_only refusal), left out of unidl's messages
_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_torch_state_dict(path) -> dict[str, np.ndarray]:
    """A PyTorch state dict written by ``torch.save`` (a zip archive), as NumPy arrays, so that a torchvision or a
    user's PyTorch checkpoint loads into a unidl model on any backend: read by ``torch.load(weights_only=True)``,
    PyTorch's restricted unpickler, where torch is installed, else by ``read_without_torch``."""
    try:
        import torch  # noqa: F401 (only whether it is installed)
    except ImportError:
        return read_without_torch(path)
    return read_with_torch(path)


def read_with_torch(path) -> dict[str, np.ndarray]:
    """``read_torch_state_dict`` by ``torch.load(weights_only=True)``, which builds tensors and plain containers
    only and never runs code named in the file."""
    import torch

    check_stored_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's own refusal (e.g. a pickled object other than tensors) or a damaged archive
        # (torch's text, without the terminal's bold codes it puts in it)
        raise CorruptFileError(f"{path!r}: torch.load(weights_only=True) refused it: {_ANSI_CODES.sub('', str(error))}"
                               f" (a whole module saved with torch.save(model)? save model.state_dict() instead)"
                               ) from None
    return state_dict_arrays(path, state, lambda value: isinstance(value, torch.Tensor), _TorchTensor)


def read_without_torch(path) -> dict[str, np.ndarray]:
    """``read_torch_state_dict`` by unidl's reader of the archive (``read_torch_archive``), which refuses every
    global its pickle names but those of tensors, storages, dtypes and ``OrderedDict``: what torch's gives."""
    state = read_torch_archive(path)
    return state_dict_arrays(path, state, lambda value: isinstance(value, StorageView), lambda value: value)


class _TorchTensor:
    """A ``torch.Tensor`` seen through ``StorageView``'s attributes, which ``state_dict_arrays`` checks."""

    def __init__(self, tensor):
        self.tensor = tensor
        self.layout, self.device = str(tensor.layout), tensor.device.type
        self.dtype = str(tensor.dtype).removeprefix("torch.")

    @property
    def shape(self):
        return tuple(self.tensor.shape)

    @property
    def stride(self):
        return self.tensor.stride()

    @property
    def element_size(self) -> int:
        return self.tensor.element_size()

    @property
    def stored_bytes(self) -> int:
        return self.tensor.untyped_storage().nbytes()

    def numel(self) -> int:
        return self.tensor.numel()

    def take_values(self) -> np.ndarray:
        value = self.tensor.detach().resolve_conj().resolve_neg()  # (a complex view's bits, which .numpy() refused)
        if self.dtype in WIDENED_BITS:  # (bfloat16 and float8: NumPy has neither, float32 holds both)
            value = value.float()
        try:
            return value.numpy()
        except (TypeError, RuntimeError) as error:
            raise TypeError(str(error)) from None


def state_dict_arrays(path, state, is_tensor, as_stored) -> dict[str, np.ndarray]:
    """The state dict that ``state`` (what a reader unpickled) holds, checked and as NumPy arrays: ``state`` itself
    or its ``"state_dict"`` entry (a training checkpoint); anything else, a sparse, meta or non-NumPy tensor, or
    arrays that would total far more bytes than the file (``check_array_bytes``), is a ``CorruptFileError``.
    ``is_tensor`` says whether a value is one of the reader's tensors, which ``as_stored`` gives ``StorageView``'s
    attributes. One tensor saved under two keys (which its pickle gives as one object) is read once and copied for
    the second key, so that each key's array is its own to hand to a variable, whichever reader read it."""
    def is_state_dict(value):
        return isinstance(value, dict) and all(isinstance(k, str) and is_tensor(v) for k, v in value.items())

    if isinstance(state, dict) and is_state_dict(state.get("state_dict")):
        state = state["state_dict"]  # a training checkpoint ({"state_dict": ..., "epoch": n}), as a pickle's is read
    if not is_state_dict(state):
        nested = [key for key, value in state.items() if is_state_dict(value)] if isinstance(state, dict) else []
        hint = (f"; pass the one it holds, model.load_state_dict(torch.load(path, weights_only=True)"
                f"[{shown(nested[0])}])" if nested else "")
        raise CorruptFileError(f"{path!r} does not hold a plain state dict (parameter names -> tensors); it holds "
                               f"{type(state).__name__}" + (f" with keys {shown(list(state)[:5])}"
                                                            if isinstance(state, dict) else "") + hint)
    stored = {key: as_stored(tensor) for key, tensor in state.items()}
    check_array_bytes(path, state, stored)
    converted, taken = {}, {}
    for key, tensor in state.items():
        if id(tensor) in taken:  # (read once: its storage let go, without torch, once its values were taken)
            converted[key] = converted[taken[id(tensor)]].copy()
            continue
        taken[id(tensor)] = key
        try:
            converted[key] = stored[key].take_values()
        except TypeError as error:
            raise CorruptFileError(f"{path!r}: tensor {key!r} of dtype torch.{stored[key].dtype} has no NumPy dtype "
                                   f"({error})") from None
    return converted


def check_array_bytes(path, state: dict, stored: dict) -> None:
    """``CorruptFileError`` for a sparse or meta tensor of ``state`` (``stored``: its tensors as ``StorageView``s),
    and where the arrays ``state_dict_arrays`` would make of it, counted before any is made, total more than
    ``max(2**26, 16 * the file's size)`` bytes, naming the key where they pass it, by the same rule for both readers.
    A file's bytes can stand for far more values: a zero-stride view (a 1.5 KB file made a 1 GB tensor), many keys
    over one storage or one tensor under many keys (a 1 MiB file made 150 MiB); a model's state dict is about its
    file's size (float8 widened to float32: four times), and a small broadcast buffer (``torch.ones(1).expand(4)``)
    loads."""
    file_size = os.path.getsize(path)
    budget, total, first_key = max(2 ** 26, 16 * file_size), 0, {}
    for key, tensor in state.items():
        value = stored[key]
        if value.layout != "torch.strided" or value.device == "meta":
            raise CorruptFileError(f"{path!r}: tensor {key!r} is {value.layout} on {value.device}, not a dense "
                                   f"tensor of values; save the state dict of a dense model")
        needed = value.numel() * (4 if value.dtype in WIDENED_BITS else value.element_size)
        total += needed
        tied = first_key.setdefault(id(tensor), key) != key
        if total <= budget:
            continue
        if not tied and needed > value.stored_bytes:
            raise CorruptFileError(f"{path!r}: tensor {key!r} of shape {value.shape} holds far more values "
                                   f"than the {value.stored_bytes} bytes stored for it (a view with strides "
                                   f"{value.stride}): {needed} bytes from a file of {file_size}, which no "
                                   f"model's state dict needs: a crafted file")
        again = f", the tensor of key {first_key[id(tensor)]!r} again" if tied else ""
        raise CorruptFileError(f"{path!r}: tensor {key!r} of shape {value.shape} ({needed} bytes as an array{again}) "
                               f"brings the state dict's arrays to {total} bytes, past {budget} (16 times the "
                               f"file's {file_size} bytes, at least 64 MiB): its keys view the same stored bytes "
                               f"over and over, which no model's state dict does: a crafted file")
