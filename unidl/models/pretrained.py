"""Weights shipped with unidl for its models, trained on the 8x8 digits by ``scripts/train_pretrained.py``.

Each file is a ``unidl.save`` file: the weights in the canonical layout and the configuration they
were trained with, so a model built with any other configuration is refused by name.
"""

from __future__ import annotations

import os

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def _signature(name: str, config: dict) -> str:
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in config.items())})"


def load_pretrained(model, file_name: str) -> None:
    """Load the shipped weights ``file_name`` into ``model`` (on its backend), if its config is theirs."""
    from unidl.serialization import read_weights

    path = os.path.join(WEIGHTS_DIR, file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path!r} are missing from this installation; "
                                f"recreate them with scripts/train_pretrained.py")
    state, metadata = read_weights(path)
    trained = (metadata or {}).get("config") or {}
    name = type(model).__name__
    if model.config != trained:
        raise ValueError(f"pretrained weights exist only for {_signature(name, trained)} (trained on the 8x8 "
                         f"digits); got {_signature(name, model.config)}. Build it with pretrained=False, "
                         f"or with the sizes above")
    model.load_state_dict(state, strict=True)
