"""Where things run, made visible: ``ud.info()`` and ``ud.log_device_placement()``.

With device logging on (``ud.log_device_placement(True)`` or ``UNIDL_LOG_DEVICE=1``), every
parameter reports its layer, name and device when it is created, and every compiled step or
``ud.function`` reports its device on its first call and on every trace, through the ``logging``
logger ``'unidl'`` at INFO (printed to stderr unless logging is configured otherwise).
"""

from __future__ import annotations

import logging
import os
import platform
import sys

logger = logging.getLogger("unidl")

_state = {"enabled": None, "handler": None}


def log_device_placement(enabled: bool = True) -> None:
    """Turn device-placement reports on or off (overrides ``UNIDL_LOG_DEVICE``)."""
    _state["enabled"] = bool(enabled)
    if enabled:
        _make_visible()


def logging_device_placement() -> bool:
    """True when device placement is reported; first read from ``UNIDL_LOG_DEVICE`` ('1', 'true', 'yes')."""
    if _state["enabled"] is None:
        log_device_placement(os.environ.get("UNIDL_LOG_DEVICE", "").strip().lower() in ("1", "true", "yes", "on"))
    return _state["enabled"]


def _make_visible() -> None:
    # INFO records pass the logger's own level; a stderr handler only where nobody configured logging
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers() and _state["handler"] is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
        _state["handler"] = handler


def parameter_created(module, name: str, variable, backend, kind: str = "parameter") -> None:
    """Report a new parameter (or buffer) of ``module``: layer, name, shape, dtype and device."""
    if logging_device_placement():
        from unidl.dtype_kinds import dtype_name

        logger.info("%s %s.%s %s %s on %s (%s)", kind, type(module).__name__, name, tuple(variable.shape),
                    dtype_name(variable.dtype), backend.device_of(variable), backend.name)


def compiled_placed(name: str, event: str, device: str, how: str) -> None:
    """Report where a compiled step or ``ud.function`` runs (``event``: 'first call', 'traced ...')."""
    if logging_device_placement():
        logger.info("%s %s: runs on %s (%s)", name, event, device, how)


class Info(dict):
    """``ud.info()``'s answer: a dict that prints as a readable report."""

    def __str__(self):
        lines = [f"unidl {self['versions']['unidl']} (Python {self['versions']['python']})",
                 f"backend:   {self['backend']}",
                 f"device:    {self['device']}",
                 f"dtype:     {self['dtype']}",
                 f"devices:   {', '.join(self['devices'])}",
                 f"installed: {', '.join(self['available_backends'])}",
                 "versions:  " + ", ".join(f"{k} {v}" for k, v in self["versions"].items()),
                 f"device log: {'on' if self['log_device_placement'] else 'off'}"]
        return "\n".join(lines)

    __repr__ = __str__


def info() -> Info:
    """The current backend, device, dtype, framework versions and the devices the backend sees.

    Returns a dict (keys ``backend``, ``device``, ``dtype``, ``devices``, ``available_backends``,
    ``versions``, ``log_device_placement``) that prints as a report: ``print(ud.info())``.
    """
    import numpy

    from unidl import __version__, config

    backend = config.backend()
    versions = {"unidl": __version__, "python": platform.python_version(), "numpy": numpy.__version__}
    versions.update(backend.versions())
    return Info(backend=backend.name, device=config.get_device(), dtype=config.get_dtype(),
                devices=list(backend.devices()), available_backends=config.available_backends(),
                versions=versions, log_device_placement=logging_device_placement())
