"""The jax backend's native view of a unidl module: its variables as a dict of arrays and a pure ``apply``."""

from __future__ import annotations


class NativeModule:
    """What a JAX user expects of a model: ``params`` (``{dotted name: array}``, parameters and buffers,
    the ``state_dict`` names) and ``apply(params, x, rng=None) -> outputs``, a pure function of them that
    ``jax.jit``, ``jax.grad`` and ``jax.vmap`` take as it is. Calling it runs the module's forward."""

    def __init__(self, module, generator):
        self._module, self._generator = module, generator
        # every state_dict name (a tied weight's too), and the buffers state_dict leaves out (persistent=False)
        self._variables = dict(module._state_variables(non_persistent=True))

    @property
    def params(self) -> dict:
        return {name: v.value for name, v in self._variables.items()}

    def apply(self, params: dict, x, rng=None):
        """The forward of ``params`` at ``x``, pure: every state it writes (a BatchNorm's statistics in train mode,
        the backend's dropout key) is as it was afterwards, so a trace of it leaks no tracer into the module (an
        eager forward after a ``jax.jit`` of it raised JAX's UnexpectedTracerError). Dropout in train mode draws
        from ``rng`` (a ``jax.random`` key; pass a new one per call, as to Flax's ``apply``), else from the
        backend's key as it is, the same masks each call."""
        touched = [*self._variables.values(), self._generator.state]
        saved = [v._value for v in touched]  # (bookkeeping: not recorded as a read)
        try:
            for name, value in params.items():
                self._variables[name].value = value
            if rng is not None:
                self._generator.state.value = rng
            return self._module(x)
        finally:
            for variable, value in zip(touched, saved):
                variable.value = value

    def __call__(self, x):
        return self._module(x)
