"""The jax backend's native view of a unidl module: its variables as a dict of arrays and a pure ``apply``."""

from __future__ import annotations


class NativeModule:
    """What a JAX user expects of a model: ``params`` (``{dotted name: array}``, parameters and buffers,
    the ``state_dict`` names) and ``apply(params, x) -> outputs``, a pure function of them that
    ``jax.jit``, ``jax.grad`` and ``jax.vmap`` take as it is. Calling it runs the module's forward."""

    def __init__(self, module):
        self._module = module
        self._variables = dict(module._state_variables())  # (every state_dict name: a tied weight's too)

    @property
    def params(self) -> dict:
        return {name: v.value for name, v in self._variables.items()}

    def apply(self, params: dict, x):
        saved = {name: v._value for name, v in self._variables.items()}  # (bookkeeping: not recorded as a read)
        try:
            for name, value in params.items():
                self._variables[name].value = value
            return self._module(x)
        finally:
            for name, value in saved.items():
                self._variables[name].value = value

    def __call__(self, x):
        return self._module(x)
