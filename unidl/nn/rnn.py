"""``RNN``: the Elman recurrent layer, h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), as in PyTorch.

The loop over time steps is ``ops.scan``: the plain Python loop on torch, a
``tf.while_loop`` on tensorflow, so sequences of any length run through one
compiled graph without retracing.
"""

from __future__ import annotations

import math

from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.module import Module


class RNN(Module):
    """One-layer Elman RNN with PyTorch's parameters, initialisation and outputs.

    .. math::
        h_t = \\sigma(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}), \\quad h_0 = 0

    with :math:`\\sigma` = tanh (or relu).

    Args:
        input_size: features of each time step of the input.
        hidden_size: features of the hidden state.
        batch_first: input and output are (N, T, features) when True (the default here), else (T, N, features).
        nonlinearity: 'tanh' (default) or 'relu'.
        bias: learn ``bias_ih_l0`` and ``bias_hh_l0`` (default True).

    Parameters ``weight_ih_l0`` (H, I), ``weight_hh_l0`` (H, H), ``bias_ih_l0`` (H,), ``bias_hh_l0`` (H,)
    all start as U(-1/sqrt(H), 1/sqrt(H)), so ``state_dict()`` loads into ``torch.nn.RNN`` as it is.

    ``rnn(x, h0=None)`` returns ``(output, h_n)``: every step's hidden state, (N, T, H) with
    ``batch_first``, and the last one as (1, N, H). ``h0`` (1, N, H) defaults to zeros.

    Example::

        rnn = ud.nn.RNN(8, 16)
        output, h_n = rnn(x)        # x: (batch, time, 8) -> (batch, time, 16), (1, batch, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, batch_first: bool = True, nonlinearity: str = "tanh",
                 bias: bool = True):
        super().__init__()
        for label, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"RNN {label} must be a positive integer, got {value!r}")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.batch_first, self.nonlinearity = bool(batch_first), nonlinearity
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih_l0 = self.parameter(init.uniform((hidden_size, input_size), bound))
        self.weight_hh_l0 = self.parameter(init.uniform((hidden_size, hidden_size), bound))
        self.bias_ih_l0 = self.parameter(init.uniform((hidden_size,), bound)) if bias else None
        self.bias_hh_l0 = self.parameter(init.uniform((hidden_size,), bound)) if bias else None

    def forward(self, x, h0=None):
        ops = self._ops
        shape = tuple(x.shape)
        if len(shape) != 3 or shape[-1] not in (self.input_size, None):
            layout = "(N, T, input_size)" if self.batch_first else "(T, N, input_size)"
            raise ShapeMismatchError(f"{self.describe()} expected input of shape {layout} with input_size "
                                     f"{self.input_size}, received {shape}")
        time_axis = 1 if self.batch_first else 0
        activation = ops.tanh if self.nonlinearity == "tanh" else ops.relu
        projected = ops.linear(x, self.weight_ih_l0, self.bias_ih_l0)  # every step's input term at once
        if h0 is None:
            h0 = ops.zeros_like(projected[:, 0] if self.batch_first else projected[0])
        else:
            h0 = h0[0]

        def step(h, projected_x):
            h = activation(projected_x + ops.linear(h, self.weight_hh_l0, self.bias_hh_l0))
            return h, h

        h_n, output = ops.scan(step, h0, projected, axis=time_axis)
        return output, ops.stack([h_n], 0)

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, batch_first={self.batch_first}, "
                f"nonlinearity={self.nonlinearity!r}")
