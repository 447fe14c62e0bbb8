"""Recurrent layers ``RNN``, ``LSTM`` and ``GRU``, with PyTorch's arguments, defaults, outputs and ``state_dict``.

Written once over ``ops``: every layer and direction projects the whole sequence's input at once, then
``ops.scan`` runs the recurrence (the plain Python loop on torch, a ``tf.while_loop`` on tensorflow,
``jax.lax.scan`` on jax), so sequences of any length run through one compiled graph without retracing.
Variable-length batches (``lengths=``) are a mask inside the same scan, so new lengths never retrace either.
"""

from __future__ import annotations

import warnings

import math

import numpy as np

from unidl import arguments, input_checks, tensors
from unidl.errors import ShapeMismatchError
from unidl.backends.op_registry import CONVERTED
from unidl.nn import init
from unidl.arguments import positive_int
from unidl.nn.module import Module


class RNNBase(Module):
    """The shared machinery of ``RNN``, ``LSTM`` and ``GRU``: parameters named as PyTorch's
    (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``..._reverse`` for the
    backward direction, gates stacked along the first axis in PyTorch's order), the layer and direction
    loop, inter-layer dropout, initial states and ``lengths``. A subclass names its gate count and its
    ``cell(carry, projected_input, layer_key)``. ``proj_size`` (an LSTM's): the size of the hidden state that each
    step outputs, projected from hidden_size by ``weight_hr_l{k}`` (0: no projection)."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0):
        super().__init__()
        name = type(self).__name__
        input_size = positive_int(name, "input_size", input_size)
        hidden_size = positive_int(name, "hidden_size", hidden_size)
        num_layers = positive_int(name, "num_layers", num_layers)
        dropout = arguments.probability(name, "dropout", dropout)
        if dropout > 0 and num_layers == 1:  # (torch's warning: a dropout that does nothing, said)
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                          UserWarning, stacklevel=3)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias = arguments.flag(name, "bias", bias)
        self.batch_first = arguments.flag(name, "batch_first", batch_first)
        self.dropout = dropout
        self.bidirectional = arguments.flag(name, "bidirectional", bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self.proj_size = arguments.non_negative_int(name, "proj_size", proj_size)
        if self.proj_size >= hidden_size:
            raise ValueError(f"{name} proj_size ({self.proj_size}) must be smaller than hidden_size ({hidden_size})")
        outputs = self.proj_size or hidden_size  # the size of h, each step's output
        bound = 1.0 / math.sqrt(hidden_size)
        rows = self.gates * hidden_size
        for layer in range(num_layers):
            features = input_size if layer == 0 else outputs * self.num_directions
            for suffix in ("", "_reverse")[:self.num_directions]:
                key = f"l{layer}{suffix}"
                setattr(self, f"weight_ih_{key}", self.parameter(init.uniform((rows, features), bound)))
                setattr(self, f"weight_hh_{key}", self.parameter(init.uniform((rows, outputs), bound)))
                setattr(self, f"bias_ih_{key}", self.parameter(init.uniform((rows,), bound)) if bias else None)
                setattr(self, f"bias_hh_{key}", self.parameter(init.uniform((rows,), bound)) if bias else None)
                if self.proj_size:
                    setattr(self, f"weight_hr_{key}", self.parameter(init.uniform((outputs, hidden_size), bound)))

    # ---- what a subclass defines ------------------------------------------------------------------------------
    def cell(self, carry, projected, key):
        """One time step: the new carry from the old one and the step's projected input (N, gates * H)."""
        raise NotImplementedError

    def _state_sizes(self):
        """The last axis of each state tensor: h's (the projection's size where there is one), then c's."""
        return [self.proj_size or self.hidden_size, self.hidden_size][:self._count_states()]

    def _state_parts(self, hx):
        """The initial state tensors (each (L*D, N, size), ``_state_sizes``) from ``hx``, or None."""
        return None if hx is None else [hx]

    def _carry(self, parts):
        """The scan carry from one (layer, direction)'s slices of the state tensors."""
        return parts[0]

    def _hidden(self, carry):
        return carry

    def _result(self, output, finals):
        return output, finals[0]

    # ---- the recurrence ---------------------------------------------------------------------------------------
    def forward(self, input, hx=None, lengths=None):
        """``input`` (T, N, input_size), or (N, T, input_size) with ``batch_first``, or unbatched (T, input_size);
        ``hx`` the initial state(s) of shape (num_layers * num_directions, N, hidden_size) (zeros when None);
        ``lengths`` (N,) the valid length of each sequence, in [1, T]: the outputs past a sequence's length
        are zero and its final state is the one at its last valid step, as with ``pack_padded_sequence``
        and ``pad_packed_sequence(total_length=T)`` in PyTorch."""
        ops = self._ops
        shape = tuple(input.shape)
        layout = "(N, T, input_size)" if self.batch_first else "(T, N, input_size)"

        def mismatch(owner, received):
            return (f"{owner} expected input of shape {layout} (or unbatched (T, input_size)) with input_size "
                    f"{self.input_size}, received {received}")

        input = checked_features(self, input, (2, 3), mismatch, self.weight_ih_l0)
        batched = len(shape) == 3
        time_axis = 1 if batched and self.batch_first else 0
        if shape[time_axis] is None or shape[time_axis] == 0:  # PyTorch's rule: frameworks fail on different ops
            sizes = input_checks.sizes_of(input)

            def template():
                return (f"{input_checks.literal(self.describe)} expected a sequence length larger than 0, received "
                        f"input of shape {input_checks.shape_template(len(sizes))}")

            input = input_checks.require(input, input_checks.holds(sizes[time_axis] > 0), template, tuple(sizes))
        x = input if not batched or not self.batch_first else ops.permute(input, (1, 0, 2))
        if not batched:
            x = ops.unsqueeze(x, 1)
        states = self._state_parts(hx)
        if states is not None:
            states = [self._checked_state(s, input, batched, size) for s, size in zip(states, self._state_sizes())]
        mask = None if lengths is None else self._mask(lengths, x, batched)
        finals = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                key = f"l{layer}{'_reverse' if direction else ''}"
                projected = ops.linear(x, getattr(self, f"weight_ih_{key}"), getattr(self, f"bias_ih_{key}"))
                if states is None:
                    carry = self._carry([ops.zeros_like(projected[0][:, :size]) for size in self._state_sizes()])
                else:
                    carry = self._carry([s[index] for s in states])
                carry, output = self._scan(carry, projected, key, mask, reverse=bool(direction))
                outputs.append(output)
                finals.append(carry)
            x = outputs[0] if len(outputs) == 1 else ops.concat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = ops.dropout(x, self.dropout, True, self._backend.generator())
        if batched and self.batch_first:
            x = ops.permute(x, (1, 0, 2))
        elif not batched:
            x = ops.squeeze(x, 1)
        stacked = [ops.stack(list(parts), 0) for parts in zip(*[self._flat_carry(c) for c in finals])]
        if not batched:
            stacked = [ops.squeeze(s, 1) for s in stacked]
        return self._result(x, stacked)

    def _count_states(self):
        return 1

    def _flat_carry(self, carry):
        return (carry,)

    def _scan(self, carry, projected, key, mask, reverse):
        ops = self._ops

        def step(carry, projected_x):
            new = self.cell(carry, projected_x, key)
            return new, self._hidden(new)

        def masked_step(carry, inputs):
            projected_x, valid = inputs
            new = self._blend(valid, self.cell(carry, projected_x, key), carry)
            hidden = self._hidden(new)
            return new, ops.where(valid, hidden, ops.zeros_like(hidden))

        if mask is None:
            return ops.scan(step, carry, projected, 0, reverse)
        return ops.scan(masked_step, carry, (projected, mask), 0, reverse)

    def _blend(self, valid, new, old):
        """``new`` where the step is inside the sequence, else ``old``: the final carry is the last valid
        step's (forward), and the backward direction starts from the initial state at each sequence's end."""
        if isinstance(new, tuple):
            return tuple(self._ops.where(valid, a, b) for a, b in zip(new, old))
        return self._ops.where(valid, new, old)

    def _mask(self, lengths, x, batched):
        """(T, N, 1) booleans: step t of sequence n is inside its length."""
        ops = self._ops
        if not self._backend.is_tensor(lengths):
            lengths = tensors.tensor(np.asarray(lengths, dtype=np.int64))
        elif self._backend.is_concrete(lengths):  # on the device in force, as x: PyTorch's packed sequences take
            lengths = tensors.tensor(lengths)     # their lengths on the CPU, beside a batch on a GPU
        lengths = ops.cast(lengths, "int64")
        if not batched:
            lengths = ops.reshape(lengths, (1,))
        steps, batch = ops.shape(x)[0], x.shape[1]
        if len(lengths.shape) != 1 or batch is not None and lengths.shape[0] not in (batch, None):
            raise ShapeMismatchError(f"{self.describe()} expected lengths of shape ({batch},) (one per sequence), "
                                     f"received {tuple(lengths.shape)}")
        lengths = input_checks.require_shape(lengths, (ops.shape(x)[1],), lambda: (  # (when a graph runs)
            f"{input_checks.literal(self.describe)} expected lengths of shape ({{}},) (one per sequence), "
            f"received ({{}},)"))
        lengths = ops.check_index(lengths - 1, steps, f"{self.describe()} lengths - 1 (each length must lie in "
                                                      f"[1, sequence length])") + 1
        positions = ops.arange(0, steps, 1, "int64")
        return ops.unsqueeze(ops.unsqueeze(positions, 1) < ops.unsqueeze(lengths, 0), 2)

    def _checked_state(self, state, input, batched, size):
        if isinstance(state, CONVERTED):  # (an LSTM's pair holds what a module's call converts: as ud.tensor does)
            state = input_checks.value_as_tensor(self.describe, "initial state", state)
        expected_rank = 3 if batched else 2
        batch_axis = 0 if self.batch_first else 1
        batch = input.shape[batch_axis] if batched else None
        layers = self.num_layers * self.num_directions
        shape = tuple(state.shape)
        expected = (layers, batch, size) if batched else (layers, size)
        if len(shape) != expected_rank or any(a is not None and b is not None and a != b
                                              for a, b in zip(shape, expected)):
            names = ("num_layers * num_directions",) + (("batch",) if batched else ()) + ("hidden_size",)
            raise ShapeMismatchError(f"{self.describe()} expected an initial state of shape "
                                     f"{input_checks.shape_text(expected, names)} ({', '.join(names)}), "
                                     f"received {shape}")
        if batched:  # (sizes a graph leaves unknown: checked when it runs, in the same words)
            expected = (layers, input_checks.sizes_of(input)[batch_axis], size)
        state = input_checks.require_shape(state, expected, lambda: (
            f"{input_checks.literal(self.describe)} expected an initial state of shape "
            f"{input_checks.shape_template(expected_rank)} (num_layers * num_directions, batch, hidden_size), "
            f"received {input_checks.shape_template(expected_rank)}"))
        input_checks.check_parameters_dtype(self.describe, state, self.weight_ih_l0, what="initial state")
        return state if batched else self._ops.unsqueeze(state, 1)

    def extra_repr(self):
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.proj_size:  # (second, as torch's repr shows it)
            parts.append(f"proj_size={self.proj_size}")
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        return ", ".join(parts)


class _NotGiven:
    """The default of an argument whose every given value is refused (``None`` too, which torch.nn refuses)."""

    def __repr__(self) -> str:
        return "<not given>"


_NOT_GIVEN = _NotGiven()


def _refuse_projection(name: str, proj_size) -> None:
    """A ``ValueError`` for a ``proj_size`` given to ``RNN`` or ``GRU`` (any value, 0 and None too), as torch.nn's:
    the projection of the hidden state is the LSTM's alone (taken as a keyword, it was a ``TypeError``; None, the
    default it had, was taken where torch.nn refuses it)."""
    if proj_size is not _NOT_GIVEN:
        raise ValueError(f"{name}: proj_size argument is only supported for LSTM, not RNN or GRU (got "
                         f"proj_size={proj_size!r})")


class RNN(RNNBase):
    """Elman RNN, as ``torch.nn.RNN``.

    .. math::
        h_t = \\sigma(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    with :math:`\\sigma` = tanh (or relu), stacked ``num_layers`` deep (each layer's output the next one's
    input, with ``dropout`` between layers in training), in both directions with ``bidirectional``.

    Args:
        input_size: features of each input step.
        hidden_size: features of the hidden state.
        num_layers: stacked layers (default 1).
        nonlinearity: 'tanh' (default) or 'relu'.
        bias: learn ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (default True).
        batch_first: input and output are (N, T, features) when True; (T, N, features) by default, as PyTorch.
        dropout: dropout probability on the outputs of every layer but the last, in training.
        bidirectional: run a second direction from the end (parameters ``..._reverse``); outputs concatenated.
        proj_size: an LSTM's option; given to RNN or GRU (any value), a ``ValueError``, as torch.nn's.

    Parameters ``weight_ih_l{k}`` (H, in), ``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H,),
    all U(-1/sqrt(H), 1/sqrt(H)): ``state_dict()`` is ``torch.nn.RNN``'s, both ways.

    ``rnn(x, h0=None, lengths=None)`` returns ``(output, h_n)``: the last layer's hidden state at every step,
    (T, N, D * H), and every layer's and direction's final state, (num_layers * D, N, H) (D = 2 when
    bidirectional). See ``RNNBase.forward`` for ``lengths``.

    Example::

        rnn = ud.nn.RNN(8, 16, batch_first=True)
        output, h_n = rnn(x)        # x: (batch, time, 8) -> (batch, time, 16), (1, batch, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 proj_size=_NOT_GIVEN):
        _refuse_projection("RNN", proj_size)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)
        self.nonlinearity = nonlinearity

    def cell(self, h, projected, key):
        return rnn_step(self._ops, h, projected, getattr(self, f"weight_hh_{key}"), getattr(self, f"bias_hh_{key}"),
                        self.nonlinearity)


class LSTM(RNNBase):
    """Long short-term memory, as ``torch.nn.LSTM``.

    .. math::
        i, f, g, o = \\sigma(\\cdot), \\sigma(\\cdot), \\tanh(\\cdot), \\sigma(\\cdot) \\text{ of }
        x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh} \\text{ split in four};\\quad
        c_t = f c_{t-1} + i g, \\quad h_t = o \\tanh(c_t)

    Args: as ``RNN`` (no ``nonlinearity``), and ``proj_size`` (P, 0 < P < H; default 0, none): each step's
    h = (o tanh(c_t)) W_{hr}^T, of size P, is the output and the next step's and layer's input.

    Parameters ``weight_ih_l{k}`` (4H, in), ``weight_hh_l{k}`` (4H, H, or P), ``bias_ih_l{k}``, ``bias_hh_l{k}``
    (4H,), with ``proj_size`` ``weight_hr_l{k}`` (P, H), gates in PyTorch's order (input, forget, cell, output), all
    U(-1/sqrt(H), 1/sqrt(H)): ``state_dict()`` is ``torch.nn.LSTM``'s.

    ``lstm(x, (h0, c0)=None, lengths=None)`` returns ``(output, (h_n, c_n))``, shapes as ``RNN``'s (h's and the
    output's last axis P where ``proj_size``; c's H).

    Example::

        lstm = ud.nn.LSTM(32, 64, num_layers=2, bidirectional=True, batch_first=True)
        output, (h_n, c_n) = lstm(x, lengths=lengths)   # (N, T, 128), (4, N, 64), (4, N, 64)
    """

    gates = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size)

    def cell(self, carry, projected, key):
        return lstm_step(self._ops, carry, projected, getattr(self, f"weight_hh_{key}"),
                         getattr(self, f"bias_hh_{key}"), getattr(self, f"weight_hr_{key}", None))

    def _state_parts(self, hx):
        if hx is None:
            return None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{self.describe()} expected the initial state as a pair (h_0, c_0), "
                            f"got {type(hx).__name__}")
        return list(hx)

    def _carry(self, parts):
        return tuple(parts)

    def _count_states(self):
        return 2

    def _flat_carry(self, carry):
        return carry

    def _hidden(self, carry):
        return carry[0]

    def _result(self, output, finals):
        return output, (finals[0], finals[1])


class GRU(RNNBase):
    """Gated recurrent unit, as ``torch.nn.GRU``.

    .. math::
        r = \\sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \\quad z = \\sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}),
        \\quad n = \\tanh(W_{in} x + b_{in} + r (W_{hn} h + b_{hn})), \\quad h' = (1 - z) n + z h

    Args: as ``RNN`` (no ``nonlinearity``). Parameters as ``RNN``'s with 3H rows (gates r, z, n in PyTorch's
    order). ``gru(x, h0=None, lengths=None)`` returns ``(output, h_n)``.
    """

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *, proj_size=_NOT_GIVEN):
        _refuse_projection("GRU", proj_size)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional)

    def cell(self, h, projected, key):
        return gru_step(self._ops, h, projected, getattr(self, f"weight_hh_{key}"), getattr(self, f"bias_hh_{key}"))


# ---- one time step of each recurrence, shared by the sequence layers above and the cells of rnn_cell.py --------
# (``projected`` is the step's input through weight_ih and bias_ih, (N, gates * H): the sequence layers project a
# whole sequence at once, a cell one step)

def checked_features(module, input, ranks, mismatch, weight):
    """``input`` of a recurrent layer or cell ``module``, checked: a rank in ``ranks`` and ``module.input_size``
    features on its last axis (``ShapeMismatchError`` of ``mismatch(owner, received)``; where a graph leaves that
    size unknown, when it runs), in ``weight``'s dtype (``check_parameters_dtype``)."""
    shape = tuple(input.shape)
    if len(shape) not in ranks or shape[-1] not in (module.input_size, None):
        raise ShapeMismatchError(mismatch(module.describe(), shape))
    if shape[-1] is None:  # (a graph traced for any sizes: checked when it runs)
        input = input_checks.require_sizes(module.describe, input, {-1: module.input_size}, mismatch)
    input_checks.check_parameters_dtype(module.describe, input, weight)
    return input


def rnn_step(ops, h, projected, weight_hh, bias_hh, nonlinearity):
    """Elman's step: ``activation(projected + h W_hh^T + b_hh)``, activation tanh or relu."""
    activation = ops.tanh if nonlinearity == "tanh" else ops.relu
    return activation(projected + ops.linear(h, weight_hh, bias_hh))


def lstm_step(ops, carry, projected, weight_hh, bias_hh, weight_hr=None):
    """The LSTM's step from ``(h, c)`` to the new ``(h, c)``, gates in PyTorch's order (input, forget, cell, output);
    the new h projected by ``weight_hr`` (P, H) where given (``proj_size``)."""
    h, c = carry
    size = weight_hh.shape[0] // 4
    gates = projected + ops.linear(h, weight_hh, bias_hh)
    i, f = ops.sigmoid(gates[:, :size]), ops.sigmoid(gates[:, size:2 * size])
    g, o = ops.tanh(gates[:, 2 * size:3 * size]), ops.sigmoid(gates[:, 3 * size:])
    c = f * c + i * g
    h = o * ops.tanh(c)
    return (h if weight_hr is None else ops.linear(h, weight_hr)), c


def gru_step(ops, h, projected, weight_hh, bias_hh):
    """The GRU's step, gates in PyTorch's order (reset, update, new); the reset gate scales ``h W_hn^T + b_hn``."""
    size = weight_hh.shape[1]
    hidden = ops.linear(h, weight_hh, bias_hh)
    r = ops.sigmoid(projected[:, :size] + hidden[:, :size])
    z = ops.sigmoid(projected[:, size:2 * size] + hidden[:, size:2 * size])
    n = ops.tanh(projected[:, 2 * size:] + r * hidden[:, 2 * size:])
    return (1 - z) * n + z * h
