"""``Parameter``: a free-standing trainable variable of the backend in force, as ``torch.nn.Parameter`` makes one,
for code that builds a parameter outside a module (``ud.nn.ParameterList([ud.nn.Parameter(w) for w in ...])``, or
``self.scale = ud.nn.Parameter(np.ones(3))``)."""

from __future__ import annotations

import numpy as np

from unidl import arguments, config
from unidl.nn.module import new_parameter


class _ParameterType(type):
    """``isinstance(value, ud.nn.Parameter)``: whether ``value`` is a parameter of the backend in force (a
    ``torch.nn.Parameter``, a trainable ``tf.Variable``, ...), as a module registers it."""

    def __instancecheck__(cls, value) -> bool:
        return config.backend().is_parameter(value)


class Parameter(metaclass=_ParameterType):
    """A new parameter of the backend in force: that framework's own trainable variable (``torch.nn.Parameter``,
    ``tf.Variable``, ``keras.Variable``, unidl's JAX variable), which a module registers when it is assigned to an
    attribute (``self.scale = ud.nn.Parameter(...)``) or held by a ``ParameterList``/``ParameterDict``, so that
    ``parameters()``, ``state_dict()``, optimizers and ``train_step`` see it.

    As ``module.parameter(value)`` makes one: ``data`` (a tensor of any backend, a NumPy array, nested lists of
    numbers) is copied, in unidl's float dtype (``ud.use_dtype``) and on the device in force (``ud.use_device``);
    torch's ``Parameter(tensor)`` shares the tensor's memory and keeps its dtype. ``data=None`` is an empty
    parameter (shape ``(0,)``), as torch's. Strings, objects and complex numbers are a ``DtypeMismatchError``.

    Example::

        self.scale = ud.nn.Parameter(np.ones(8, np.float32))
        isinstance(self.scale, ud.nn.Parameter)  # True
    """

    def __new__(cls, data=None, requires_grad: bool = True):
        """The new parameter (the framework's own variable, not an instance of this class).

        Args:
            data: the parameter's initial value.
            requires_grad: False makes a frozen parameter (``requires_grad_(False)``): optimizers and train steps
                leave it as it is. True or False, as torch's.
        """
        requires_grad = arguments.boolean("ud.nn.Parameter", "requires_grad", requires_grad)
        backend = config.backend()
        parameter = new_parameter(backend, "ud.nn.Parameter: the data",
                                  np.zeros((0,), np.float32) if data is None else data)
        if not requires_grad:
            backend.set_requires_grad(parameter, False)
        return parameter
