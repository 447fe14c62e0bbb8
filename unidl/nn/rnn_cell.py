"""``RNNCell``, ``LSTMCell`` and ``GRUCell``: one time step of ``RNN``, ``LSTM`` and ``GRU``, with PyTorch's
arguments, defaults, outputs and ``state_dict`` (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``).

A cell projects its input through ``weight_ih`` and runs the step functions of ``rnn.py``, the very arithmetic
the sequence layers scan, so a cell and a one-layer sequence layer with the same weights agree step by step.
"""

from __future__ import annotations

import math

from unidl import arguments, input_checks
from unidl.arguments import positive_int
from unidl.backends.op_registry import CONVERTED
from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.module import Module
from unidl.nn.rnn import checked_features, gru_step, lstm_step, rnn_step


class RNNCellBase(Module):
    """The shared machinery of the cells: parameters named and initialised as PyTorch's (U(-1/sqrt(H), 1/sqrt(H)),
    gates stacked along the first axis in PyTorch's order), the input and state checks, zero initial states, and
    unbatched (input_size,) input. A subclass names its gate count, its state count and its ``step``."""

    gates = 1
    states = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        name = type(self).__name__
        self.input_size = positive_int(name, "input_size", input_size)
        self.hidden_size = positive_int(name, "hidden_size", hidden_size)
        self.bias = arguments.flag(name, "bias", bias)
        bound, rows = 1.0 / math.sqrt(self.hidden_size), self.gates * self.hidden_size
        self.weight_ih = self.parameter(init.uniform((rows, self.input_size), bound))
        self.weight_hh = self.parameter(init.uniform((rows, self.hidden_size), bound))
        self.bias_ih = self.parameter(init.uniform((rows,), bound)) if bias else None
        self.bias_hh = self.parameter(init.uniform((rows,), bound)) if bias else None

    def step(self, carry, projected):
        """The new state from the old one and the input through ``weight_ih`` and ``bias_ih`` (N, gates * H)."""
        raise NotImplementedError

    def forward(self, input, hx=None):
        """``input`` (N, input_size) or unbatched (input_size,); ``hx`` the state(s), (N, hidden_size) or
        (hidden_size,) as the input (zeros when None); returns the new state(s), shaped as ``hx``."""
        ops, shape = self._ops, tuple(input.shape)

        def mismatch(owner, received):
            return (f"{owner} expected input of shape (N, {self.input_size}) or unbatched ({self.input_size},), "
                    f"received {received}")

        input = checked_features(self, input, (1, 2), mismatch, self.weight_ih)
        batched = len(shape) == 2
        x = input if batched else ops.unsqueeze(input, 0)
        projected = ops.linear(x, self.weight_ih, self.bias_ih)
        if hx is None:
            zeros = ops.zeros_like(projected[:, :self.hidden_size])
            carry = (zeros,) * self.states
        else:
            carry = tuple(self._checked_state(state, input, batched) for state in self._state_tuple(hx))
        new = self.step(carry if self.states > 1 else carry[0], projected)
        if batched:
            return new
        return tuple(ops.squeeze(s, 0) for s in new) if isinstance(new, tuple) else ops.squeeze(new, 0)

    def _state_tuple(self, hx):
        if self.states == 1:
            return (hx,)
        if not isinstance(hx, (tuple, list)) or len(hx) != self.states:
            raise TypeError(f"{self.describe()} expected the state as a pair (h, c), got {type(hx).__name__}")
        return tuple(hx)

    def _checked_state(self, state, input, batched):
        if isinstance(state, CONVERTED):  # (a pair holds what a module's call converts: as ud.tensor does)
            state = input_checks.value_as_tensor(self.describe, "state", state)
        shape = tuple(state.shape)
        expected = (input.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        if len(shape) != len(expected) or any(a is not None and b is not None and a != b
                                              for a, b in zip(shape, expected)):
            names = ("batch", "hidden_size") if batched else ("hidden_size",)
            raise ShapeMismatchError(f"{self.describe()} expected a state of shape "
                                     f"{input_checks.shape_text(expected, names)} ({', '.join(names)}) as its "
                                     f"input's, received {shape}")
        if batched:  # (sizes a graph leaves unknown: checked when it runs, in the same words)
            state = input_checks.require_shape(state, (input_checks.sizes_of(input)[0], self.hidden_size), lambda: (
                f"{input_checks.literal(self.describe)} expected a state of shape ({{}}, {{}}) (batch, hidden_size) "
                f"as its input's, received ({{}}, {{}})"))
        input_checks.check_parameters_dtype(self.describe, state, self.weight_ih, what="state")
        return state if batched else self._ops.unsqueeze(state, 0)

    def extra_repr(self):
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if not self.bias:
            parts.append("bias=False")
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            parts.append(f"nonlinearity={self.nonlinearity}")
        return ", ".join(parts)


class RNNCell(RNNCellBase):
    """One step of the Elman RNN, as ``torch.nn.RNNCell``: ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)`` (or relu).

    Args:
        input_size: features of the input; hidden_size: features of the state.
        bias: learn ``bias_ih`` and ``bias_hh`` (default True).
        nonlinearity: 'tanh' (default) or 'relu'.

    Parameters ``weight_ih`` (H, input_size), ``weight_hh`` (H, H), ``bias_ih``, ``bias_hh`` (H,).

    Example::

        cell = ud.nn.RNNCell(8, 16)
        h = cell(x_t, h)            # x_t: (batch, 8), h: (batch, 16) or None
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity

    def step(self, h, projected):
        return rnn_step(self._ops, h, projected, self.weight_hh, self.bias_hh, self.nonlinearity)


class LSTMCell(RNNCellBase):
    """One step of the LSTM, as ``torch.nn.LSTMCell`` (the gates of ``LSTM``'s docstring).

    Args: as ``RNNCell``'s (no ``nonlinearity``). Parameters as ``RNNCell``'s with 4H rows (input, forget, cell and
    output gates). ``cell(x, (h, c)=None)`` returns ``(h', c')``.
    """

    gates, states = 4, 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)

    def step(self, carry, projected):
        return lstm_step(self._ops, carry, projected, self.weight_hh, self.bias_hh)


class GRUCell(RNNCellBase):
    """One step of the GRU, as ``torch.nn.GRUCell`` (the gates of ``GRU``'s docstring).

    Args: as ``RNNCell``'s (no ``nonlinearity``). Parameters as ``RNNCell``'s with 3H rows (reset, update and new
    gates). ``cell(x, h=None)`` returns ``h'``.
    """

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias)

    def step(self, h, projected):
        return gru_step(self._ops, h, projected, self.weight_hh, self.bias_hh)
