"""Keras 3 backend metadata; the implementation lives in ``backend.py`` and is imported on first use.

Keras itself runs on a framework of its own chosen by ``KERAS_BACKEND``
(TensorFlow when unset), which must be installed as well; unidl's keras backend
delegates to unidl's backend of that framework (``host.py``).
"""

import os

from unidl import backends
from unidl.backends import BackendSpec


def _keras_backend() -> str:
    return os.environ.get("KERAS_BACKEND") or "tensorflow"  # (empty is unset, as Keras reads it)


def _hosts() -> dict:
    """unidl's other backends, by name: Keras runs under unidl on a framework that has one (``host.py``)."""
    return {name: spec for name, spec in backends.specs().items() if name != "keras"}


def _required_modules():
    host = _hosts().get(_keras_backend())
    return ("keras",) + (host.required_modules() if host is not None else (_keras_backend(),))


def _setting_problem():
    """What is wrong with ``KERAS_BACKEND`` here (a value that is no framework unidl's keras backend runs on: the
    valid ones, from the registry), else None."""
    framework, hosts = _keras_backend(), _hosts()
    if framework in hosts:
        return None
    return (f"KERAS_BACKEND={framework!r} is not a framework unidl's keras backend runs on; valid values: "
            f"{', '.join(map(repr, hosts))}")


def _install_hint(missing):
    return f"install it with: pip install 'unidl[keras,{_hosts()[_keras_backend()].extra}]'"


SPEC = BackendSpec(name="keras", aliases=(), extra="keras", priority=2, required_modules=_required_modules,
                   install_hint=_install_hint, setting_problem=_setting_problem, hosts=lambda: tuple(_hosts()))
