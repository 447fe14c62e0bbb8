"""``TransformerEncoderLayer``, ``TransformerEncoder``, ``TransformerDecoderLayer``, ``TransformerDecoder`` and
``Transformer``, with PyTorch's arguments, defaults and ``state_dict`` (``self_attn.in_proj_weight``, ``linear1``,
``norm1``, ``layers.0. ...``, ``encoder.norm``, ``decoder.layers.0.multihead_attn. ...``), written once over ``nn``
layers."""

from __future__ import annotations

import copy
import math

import numpy as np

from unidl import input_checks, ops as functional, tensors
from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.nn.activation import GELU, ReLU
from unidl.nn.attention import MultiheadAttention
from unidl.nn.container import ModuleList
from unidl.arguments import flag, positive_int
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
        _check_activation("TransformerEncoderLayer", activation)
        object.__setattr__(self, "_config", dict(
            d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
            layer_norm_eps=layer_norm_eps, batch_first=batch_first, norm_first=norm_first, bias=bias))
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = flag("TransformerEncoderLayer", "norm_first", norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _ACTIVATIONS[activation] if isinstance(activation, str) else activation
        self.batch_first = flag("TransformerEncoderLayer", "batch_first", batch_first)

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


def _check_activation(owner: str, activation) -> None:
    if not (activation in _ACTIVATIONS if isinstance(activation, str) else callable(activation)):
        raise ValueError(f"{owner} activation must be 'relu', 'gelu' or a callable, got {activation!r}")


def _residual(x, branch, owner: str = "TransformerEncoderLayer"):
    """``x + branch``, two float dtypes promoted as torch promotes them: under mixed precision a float32 residual
    stream (an embedding's, a LayerNorm's) beside a bfloat16 or float16 branch is float32, as in ``torch.autocast``
    (TensorFlow refused the sum); ``owner`` names the layer in an error."""
    x, branch = functional._promoted_together(owner, (x, branch))
    return x + branch


class TransformerEncoder(Module):
    """A stack of ``num_layers`` copies of ``encoder_layer`` (``layers.0``, ``layers.1``, ...), then ``norm``
    if given, as ``torch.nn.TransformerEncoder``. Every copy starts with ``encoder_layer``'s weights.

    ``encoder(src, mask=None, src_key_padding_mask=None, is_causal=None)`` passes the masks to every layer.

    Padded positions of the output are PyTorch's, in both modes. In training they hold whatever the layers
    computed there (mask them out when pooling). In evaluation, PyTorch runs batched input with a
    ``src_key_padding_mask`` and no ``mask`` as nested tensors when ``enable_nested_tensor`` and the layer allows
    it (post-norm, ``batch_first``, biases, relu or gelu, an even ``nhead``): its output is 0 at every padded
    position (``norm(0)`` after the final ``norm``), and a sequence with no real token gives zeros, not NaN (and
    finite gradients). A float mask's non-zero entries are the padding there, and the real positions attend to the
    real ones without the mask's values added, as PyTorch's packed sequences do.
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
        self.enable_nested_tensor = flag("TransformerEncoder", "enable_nested_tensor", enable_nested_tensor)
        self.mask_check = flag("TransformerEncoder", "mask_check", mask_check)
        self.use_nested_tensor = self.enable_nested_tensor and _nested_path_allowed(encoder_layer)

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x, padding_mask, padded = src, src_key_padding_mask, None
        if (self.use_nested_tensor and not self.layers[0].training and len(src.shape) == 3
                and src_key_padding_mask is not None and mask is None):
            padding_mask, padded = self._nested_padding(src, src_key_padding_mask)
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=padding_mask, is_causal=bool(is_causal))
        if padded is not None:  # 0 at the padded positions, as PyTorch's nested tensors give them back
            x = self._ops.where(self._ops.unsqueeze(padded, 2), self._ops.zeros_like(x), x)
        return self.norm(x) if self.norm is not None else x

    def _nested_padding(self, src, padding_mask):
        """The layers' padding mask and the positions to zero after them, as PyTorch's nested-tensor path has them.

        That path packs the real positions (a float mask's non-zero entries are padding, as its ``logical_not``
        reads them) and runs the layers without a mask: a real position attends to its row's real positions only,
        with no additive bias. With ``mask_check``, only when every row's padding is at its end (PyTorch's test for
        taking the path, a test made inside the graph; otherwise the layers get the mask as given and nothing is
        zeroed). A row without a real token attends to all of its positions, which are zeroed: PyTorch drops that
        row, and a softmax over keys all masked would be NaN and make every gradient NaN."""
        ops = self._ops
        padding_mask = self.layers[0].self_attn._as_tensor(padding_mask)
        is_bool = "bool" in str(padding_mask.dtype)
        padded = padding_mask if is_bool else padding_mask != 0
        empty_row = ops.sum(ops.cast_like(~padded, src), 1, keepdims=True) == 0
        nested = padded & ~empty_row
        if not is_bool:
            blocked = ops.zeros_like(padding_mask) - math.inf
            nested = ops.where(nested, blocked, ops.zeros_like(padding_mask))
        if not self.mask_check:
            return nested, padded
        taken = ops.sum(ops.cast_like(padded[:, :-1] & ~padded[:, 1:], src)) == 0  # no real position after padding
        if is_bool:  # (ONNX Runtime has no Where of booleans)
            return (nested & taken) | (padding_mask & ~taken), padded & taken
        return ops.where(taken, nested, padding_mask), padded & taken

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


class TransformerDecoderLayer(Module):
    """Self-attention, attention to the encoder's output (``memory``), then a feed-forward block, each with a residual
    connection and LayerNorm, as ``torch.nn.TransformerDecoderLayer``.

    Post-norm (default): ``x = norm1(x + sa(x)); x = norm2(x + mha(x, memory)); x = norm3(x + ff(x))``.
    Pre-norm (``norm_first=True``): ``x = x + sa(norm1(x)); x = x + mha(norm2(x), memory); x = x + ff(norm3(x))``,
    with ``sa`` = dropout1(self_attn(x, x, x)), ``mha`` = dropout2(multihead_attn(x, memory, memory)) and ``ff`` =
    dropout3(linear2(dropout(activation(linear1(x))))).

    Args: as ``TransformerEncoderLayer``'s.

    ``layer(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=False, memory_is_causal=False)``: the masks of the self-attention (``tgt_*``) and of the attention to
    the memory (``memory_*``), as ``MultiheadAttention``'s ``attn_mask`` and ``key_padding_mask``; ``*_is_causal``
    without its mask applies the causal mask.

    Example::

        layer = ud.nn.TransformerDecoderLayer(d_model=128, nhead=4, dim_feedforward=256, batch_first=True)
        y = layer(tgt, memory, tgt_mask=ud.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1]))
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True):
        super().__init__()
        _check_activation("TransformerDecoderLayer", activation)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = flag("TransformerDecoderLayer", "norm_first", norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.dropout1, self.dropout2, self.dropout3 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.activation = _ACTIVATIONS[activation] if isinstance(activation, str) else activation
        self.batch_first = flag("TransformerDecoderLayer", "batch_first", batch_first)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal: bool = False, memory_is_causal: bool = False):
        x = tgt

        def add(stream, branch):  # (the residual sum, its error naming this layer)
            return _residual(stream, branch, "TransformerDecoderLayer")

        if self.norm_first:
            x = add(x, self._self_attention(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = add(x, self._memory_attention(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                              memory_is_causal))
            return add(x, self._feed_forward(self.norm3(x)))
        x = self.norm1(add(x, self._self_attention(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)))
        x = self.norm2(add(x, self._memory_attention(x, memory, memory_mask, memory_key_padding_mask,
                                                     memory_is_causal)))
        return self.norm3(add(x, self._feed_forward(x)))

    def _self_attention(self, x, mask, padding_mask, is_causal):
        return self.dropout1(self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding_mask,
                                            need_weights=False, is_causal=bool(is_causal))[0])

    def _memory_attention(self, x, memory, mask, padding_mask, is_causal):
        return self.dropout2(self.multihead_attn(x, memory, memory, attn_mask=mask, key_padding_mask=padding_mask,
                                                 need_weights=False, is_causal=bool(is_causal))[0])

    def _feed_forward(self, x):
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def extra_repr(self):
        return f"norm_first={self.norm_first}, batch_first={self.batch_first}"


class TransformerDecoder(Module):
    """A stack of ``num_layers`` copies of ``decoder_layer`` (``layers.0``, ``layers.1``, ...), then ``norm`` if
    given, as ``torch.nn.TransformerDecoder``. Every copy starts with ``decoder_layer``'s weights.

    ``decoder(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None, memory_key_padding_mask=None,
    tgt_is_causal=None, memory_is_causal=False)`` passes the masks to every layer.
    """

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Module | None = None):
        super().__init__()
        if not isinstance(decoder_layer, TransformerDecoderLayer):
            raise TypeError(f"TransformerDecoder needs a TransformerDecoderLayer, got {type(decoder_layer).__name__}")
        num_layers = positive_int("TransformerDecoder", "num_layers", num_layers)
        self.layers = ModuleList([_copy(decoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal: bool = False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=bool(tgt_is_causal),
                      memory_is_causal=memory_is_causal)
        return self.norm(x) if self.norm is not None else x

    def extra_repr(self):
        return f"num_layers={self.num_layers}"


class Transformer(Module):
    """The encoder-decoder transformer of "Attention Is All You Need", as ``torch.nn.Transformer``:
    ``decoder(tgt, encoder(src))``, ``encoder`` a ``TransformerEncoder`` of ``num_encoder_layers`` layers and a final
    LayerNorm (``encoder.norm``), ``decoder`` a ``TransformerDecoder`` of ``num_decoder_layers`` layers and one
    (``decoder.norm``). Every parameter of more than one axis starts Xavier-uniform, as PyTorch's
    ``_reset_parameters`` draws it (a custom encoder's and decoder's too).

    ``d_model``, ``nhead``, ``dim_feedforward``, ``dropout``, ``activation``, ``layer_norm_eps``, ``batch_first``,
    ``norm_first`` and ``bias`` are ``TransformerEncoderLayer``'s, for every layer (defaults 512, 8, 2048, 0.1,
    'relu', 1e-5, False, False, True, as PyTorch's); ``num_encoder_layers`` and ``num_decoder_layers`` the depth of
    each stack (6 each by default); ``custom_encoder`` and ``custom_decoder`` modules used instead of the built
    stacks, called as they are.

    ``transformer(src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
    memory_is_causal=False)``: (T, N, E) out (or (N, T, E)), T the target's length. The encoder's padded positions
    in evaluation are PyTorch's (see ``TransformerEncoder``).

    Example::

        model = ud.nn.Transformer(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2, batch_first=True)
        mask = ud.nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        y = model(src, tgt, tgt_mask=mask, src_key_padding_mask=src_tokens == 0)
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation="relu", custom_encoder=None,
                 custom_decoder=None, layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True):
        super().__init__()
        layer_options = dict(d_model=d_model, nhead=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
                             activation=activation, layer_norm_eps=layer_norm_eps, batch_first=batch_first,
                             norm_first=norm_first, bias=bias)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            self.encoder = TransformerEncoder(TransformerEncoderLayer(**layer_options), num_encoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            self.decoder = TransformerDecoder(TransformerDecoderLayer(**layer_options), num_decoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        for parameter in self.parameters():  # (PyTorch's _reset_parameters: xavier_uniform_ on each matrix)
            shape = tuple(parameter.shape)
            if len(shape) > 1:
                receptive = int(np.prod(shape[2:]))
                bound = math.sqrt(6.0 / ((shape[0] + shape[1]) * receptive))
                self._backend.assign(parameter, init.uniform(shape, bound))
        self.d_model, self.nhead, self.batch_first = d_model, nhead, flag("Transformer", "batch_first", batch_first)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal: bool = False):
        src = self._checked_pair(src, tgt)
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)

    def _checked_pair(self, src, tgt):
        """``src``, after checking that it and ``tgt`` are both batched (3-D) or both unbatched (2-D), of one batch
        size and of ``d_model`` features: one ``ShapeMismatchError`` naming both shapes, at once where the sizes a
        rule compares are known (a graph's unknown batch beside known features too) and, for sizes a graph leaves
        unknown, when it runs (the decoder's attention raised its own words there)."""
        source, target = tuple(src.shape), tuple(tgt.shape)
        if len(source) not in (2, 3) or len(source) != len(target):
            raise ShapeMismatchError(f"{self.describe()} expected src and tgt both batched (3-D) or both unbatched "
                                     f"(2-D), received src of shape {source} and tgt of shape {target}")
        for pairs, what in self._pair_rules(source, target):
            if any(a is not None and b is not None and a != b for a, b in pairs):
                raise ShapeMismatchError(f"{self.describe()} {self._pair_message(what, source, target)}")
        if None not in source + target:
            return src
        sizes = (input_checks.sizes_of(src), input_checks.sizes_of(tgt))
        template = input_checks.shape_template(len(source))
        for pairs, what in self._pair_rules(*sizes):  # (the unknown sizes: checked when the graph runs)
            condition = input_checks.all_of([input_checks.holds(a == b) for a, b in pairs])
            src = input_checks.require(src, condition, lambda what=what: (
                f"{input_checks.literal(self.describe)} {self._pair_message(what, template, template)}"),
                sizes[0] + sizes[1])
        return src

    def _pair_rules(self, source, target):
        """``[(the pairs of sizes that must be equal, what the rule asks for)]`` of src's and tgt's ``source`` and
        ``target`` sizes: one batch size (batched input) and ``d_model`` features."""
        rules = [([(source[-1], self.d_model), (target[-1], self.d_model)], f"of d_model = {self.d_model} features")]
        if len(source) == 3:
            batch_axis = 0 if self.batch_first else 1
            rules.insert(0, ([(source[batch_axis], target[batch_axis])], "of one batch size"))
        return rules

    @staticmethod
    def _pair_message(what, source, target):
        return f"expected src and tgt {what}, received src of shape {source} and tgt of shape {target}"

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None):
        """A float (sz, sz) mask for causal attention: -inf above the diagonal (a position may not attend to the
        later ones), 0 elsewhere; of ``dtype`` (the dtype in force by default) on the device in force."""
        if device is not None:
            raise ValueError(f"Transformer.generate_square_subsequent_mask device={device!r} is not supported by "
                             f"unidl: the mask is made on the device in force (ud.use_device)")
        sz = positive_int("Transformer.generate_square_subsequent_mask", "sz", sz)
        return tensors.tensor(np.triu(np.full((sz, sz), -np.inf), 1), dtype)
