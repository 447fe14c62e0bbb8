"""``TransformerEncoderLayer`` and ``TransformerEncoder``, with PyTorch's arguments, defaults and ``state_dict``
(``self_attn.in_proj_weight``, ``linear1``, ``norm1``, ``layers.0. ...``), written once over ``nn`` layers."""

from __future__ import annotations

import copy

from unidl import ops as functional
from unidl.nn.activation import GELU, ReLU
from unidl.nn.attention import MultiheadAttention
from unidl.nn.container import ModuleList
from unidl.arguments import positive_int
from unidl.nn.dropout import Dropout
from unidl.nn.linear import Linear
from unidl.nn.module import Module
from unidl.nn.normalization import LayerNorm

_ACTIVATIONS = {"relu": functional.relu, "gelu": functional.gelu}


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with a residual connection and LayerNorm, as
    ``torch.nn.TransformerEncoderLayer``.

    Post-norm (default): ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``.
    Pre-norm (``norm_first=True``): ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``,
    with ``sa`` = dropout1(self_attn(x, x, x)) and ``ff`` = dropout2(linear2(dropout(activation(linear1(x))))).

    Args:
        d_model: features of each position; nhead: attention heads (dividing ``d_model``).
        dim_feedforward: hidden features of the feed-forward block (default 2048).
        dropout: dropout probability (default 0.1) on the attention weights and in both blocks.
        activation: 'relu' (default), 'gelu', or a callable (a unidl module or function).
        layer_norm_eps: the LayerNorms' eps. batch_first: (N, S, E) in and out; (S, N, E) by default.
        norm_first: pre-norm instead of post-norm. bias: learn the biases of every linear layer and LayerNorm.

    ``layer(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``: masks as
    ``MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask``; ``is_causal`` without ``src_mask``
    applies the causal mask.

    Example::

        layer = ud.nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=256, batch_first=True)
        encoder = ud.nn.TransformerEncoder(layer, num_layers=2)
        y = encoder(x, src_key_padding_mask=tokens == 0)      # x: (batch, time, 128)
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True):
        super().__init__()
        if isinstance(activation, str) and activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerEncoderLayer activation must be 'relu', 'gelu' or a callable, got {activation!r}")
        if not isinstance(activation, str) and not callable(activation):
            raise ValueError(f"TransformerEncoderLayer activation must be 'relu', 'gelu' or a callable, got {activation!r}")
        object.__setattr__(self, "_config", dict(
            d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
            layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias))
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _ACTIVATIONS[activation] if isinstance(activation, str) else activation
        self.batch_first = bool(batch_first)

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False):
        x = src
        if self.norm_first:
            x = _residual(x, self._self_attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal))
            return _residual(x, self._feed_forward(self.norm2(x)))
        x = self.norm1(_residual(x, self._self_attention(x, src_mask, src_key_padding_mask, is_causal)))
        return self.norm2(_residual(x, self._feed_forward(x)))

    def _self_attention(self, x, mask, padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding_mask, need_weights=False,
                           is_causal=is_causal, _fused_layer=_fused_layer_path(self))[0]
        return self.dropout1(x)

    def _feed_forward(self, x):
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def extra_repr(self):
        return f"norm_first={self.norm_first}, batch_first={self.batch_first}"


def _residual(x, branch):
    """``x + branch``, two float dtypes promoted as torch promotes them: under mixed precision a float32 residual
    stream (an embedding's, a LayerNorm's) beside a bfloat16 or float16 branch is float32, as in ``torch.autocast``
    (TensorFlow refused the sum)."""
    x, branch = functional._promoted_together("TransformerEncoderLayer", (x, branch))
    return x + branch


class TransformerEncoder(Module):
    """A stack of ``num_layers`` copies of ``encoder_layer`` (``layers.0``, ``layers.1``, ...), then ``norm``
    if given, as ``torch.nn.TransformerEncoder``. Every copy starts with ``encoder_layer``'s weights.

    ``encoder(src, mask=None, src_key_padding_mask=None, is_causal=None)`` passes the masks to every layer.

    Padded positions of the output are PyTorch's, in both modes. In training they hold whatever the layers
    computed there (mask them out when pooling). In evaluation, PyTorch runs batched input with a
    ``src_key_padding_mask`` and no ``mask`` as nested tensors when ``enable_nested_tensor`` and the layer allows
    it (post-norm, ``batch_first``, biases, relu or gelu, an even ``nhead``): its output is 0 at every padded
    position (``norm(0)`` after the final ``norm``), and a sequence with no real token gives zeros, not NaN.
    unidl does the same under the same conditions, including PyTorch's ``mask_check`` (padding that is not all at
    the end of each row falls back to computed values; with ``mask_check=False``, where PyTorch assumes it is and
    packs the wrong positions, unidl zeroes the padded ones). The valid positions are the same either way. PyTorch
    takes that path only when it records no gradient (``torch.no_grad()``, ``inference_mode()``, the usual way to
    evaluate); unidl zeroes in every evaluation-mode forward, so gradients reach no padded position there.
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True):
        super().__init__()
        if not isinstance(encoder_layer, TransformerEncoderLayer):
            raise TypeError(f"TransformerEncoder needs a TransformerEncoderLayer, got {type(encoder_layer).__name__}")
        num_layers = positive_int("TransformerEncoder", "num_layers", num_layers)
        self.layers = ModuleList([_copy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor, self.mask_check = bool(enable_nested_tensor), bool(mask_check)
        self.use_nested_tensor = self.enable_nested_tensor and _nested_path_allowed(encoder_layer)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        if (self.use_nested_tensor and not self.layers[0].training and len(src.shape) == 3
                and src_key_padding_mask is not None and mask is None):
            x = self._zero_padded_positions(x, src_key_padding_mask)
        return self.norm(x) if self.norm is not None else x

    def _zero_padded_positions(self, x, padding_mask):
        """0 at the padded positions, as PyTorch's nested-tensor path gives them; with ``mask_check``, only when
        every row's padding is at its end (PyTorch's test for taking that path), a test made inside the graph."""
        ops = self._ops
        padding_mask = self.layers[0].self_attn._as_tensor(padding_mask)
        padded = padding_mask if "bool" in str(padding_mask.dtype) else padding_mask != 0  # float: -inf marks it
        if self.mask_check:  # a padded position followed by a real one anywhere: PyTorch keeps the computed values
            misplaced = ops.sum(ops.cast_like(padded[:, :-1] & ~padded[:, 1:], x))
            padded = padded & (misplaced == 0)
        return ops.where(ops.unsqueeze(padded, 2), ops.zeros_like(x), x)

    def extra_repr(self):
        return f"num_layers={self.num_layers}"


def _fused_layer_path(layer: TransformerEncoderLayer) -> bool:
    """PyTorch's conditions on the layer for its fused evaluation path (``_transformer_encoder_layer_fwd``): relu or
    gelu, equal norm epsilons, and no forward hook on any of its modules. Off it, PyTorch hands its attention float
    masks, so that a query whose every key is masked gets the plain path's values, not the fused path's NaN."""
    activation = layer._config["activation"]
    relu_or_gelu = (isinstance(activation, (str, ReLU, GELU))
                    or any(activation is function for function in _ACTIVATIONS.values()))
    return relu_or_gelu and layer.norm1.eps == layer.norm2.eps and not any(m._hooked for m in layer.modules())


def _nested_path_allowed(layer: TransformerEncoderLayer) -> bool:
    """PyTorch's conditions on the layer for ``TransformerEncoder(enable_nested_tensor=True)`` to run padded input
    as nested tensors in evaluation (``use_nested_tensor``)."""
    return (not layer.norm_first and layer.batch_first and layer.self_attn._qkv_same_embed_dim
            and layer.self_attn.in_proj_bias is not None and _fused_layer_path(layer)
            and layer.self_attn.num_heads % 2 == 0)


def _copy(layer: TransformerEncoderLayer) -> TransformerEncoderLayer:
    """A deep copy of ``layer``, as PyTorch's ``_get_clones``: its weights, mode and a module activation of its own
    (an activation module was shared by every copy, its weights tied, and loading a checkpoint left them all at
    the last layer's)."""
    return copy.deepcopy(layer)
