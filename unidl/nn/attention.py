"""``MultiheadAttention``, with PyTorch's arguments, masks, outputs and ``state_dict`` (``in_proj_weight``, ...).

Written once over ``ops`` (``ops.attention`` does the softmax(q k^T / sqrt(d)) v of every head at once), so a
PyTorch checkpoint of ``torch.nn.MultiheadAttention`` loads and runs the same on every backend.
"""

from __future__ import annotations

import math

import numpy as np

from unidl import arguments, input_checks, ops as functional
from unidl.dtype_kinds import is_floating
from unidl.errors import ShapeMismatchError
from unidl.nn import init
from unidl.arguments import positive_int
from unidl.nn.linear import Linear
from unidl.nn.module import Module


def _xavier_uniform(shape):
    """PyTorch's ``xavier_uniform_`` for a 2-D (fan_out, fan_in) weight."""
    return init.uniform(shape, math.sqrt(6.0 / (shape[0] + shape[1])))


class MultiheadAttention(Module):
    """Attention over ``num_heads`` heads, as ``torch.nn.MultiheadAttention``:
    ``out_proj(concat_h(softmax(q_h k_h^T / sqrt(d) + masks) v_h))`` with q, k, v the input projections.

    Args:
        embed_dim: features of the queries (and of the output); divisible by ``num_heads``.
        num_heads: parallel heads, each of ``embed_dim // num_heads`` features.
        dropout: dropout probability on the attention weights, in training.
        bias: learn ``in_proj_bias`` and ``out_proj.bias`` (both start at zero).
        kdim: features of the keys (``embed_dim`` by default; when ``kdim`` or ``vdim`` differs from it, the
            projections are ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight`` instead of ``in_proj_weight``).
        vdim: features of the values (``embed_dim`` by default).
        batch_first: (N, L, E) inputs and outputs; (L, N, E) by default, as PyTorch.
        add_bias_kv: learn ``bias_k`` and ``bias_v`` (1, 1, E), appended to the projected keys and values as one
            more source position (masks extended to attend to it), as PyTorch's.
        add_zero_attn: append a position of zeros to every head's keys and values (after ``add_bias_kv``'s), masks
            extended to attend to it, as PyTorch's; the weights returned have one column per added position.

    ``mha(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(output, weights)``: output (L, N, E) (or
    (N, L, E)), weights (N, L, S) averaged over heads (or (N, num_heads, L, S)), or None unless
    ``need_weights``. ``key_padding_mask`` (N, S): True (or -inf) marks padding keys to ignore. ``attn_mask``
    (L, S) or (N * num_heads, L, S): True marks pairs that may NOT attend; a float mask is added to the
    scores. ``is_causal`` without ``attn_mask`` applies the causal mask (PyTorch needs the mask itself); beside an
    ``attn_mask`` it is PyTorch's hint that the mask is causal, and the mask is applied (PyTorch, given a hint that
    is wrong, applies the causal mask without ``key_padding_mask`` and with ``need_weights=False``, else the mask:
    its documentation calls the result undefined; unidl's is the mask's on every backend).
    Unbatched (L, E) inputs work too. A query whose every key is masked gets what PyTorch's module gives it:
    with ``need_weights=False`` it attends to nothing (output ``out_proj.bias``, as
    ``F.scaled_dot_product_attention``), except in evaluation where PyTorch takes its fused inference path
    (batched self-attention, ``batch_first``, packed projection with biases, an even ``num_heads``); there, and
    with ``need_weights=True``, its output and weights are NaN.
    """

    _tensor_arguments = 3  # (query, key, value)

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False):
        super().__init__()
        embed_dim = positive_int("MultiheadAttention", "embed_dim", embed_dim)
        num_heads = positive_int("MultiheadAttention", "num_heads", num_heads)
        kdim = None if kdim is None else positive_int("MultiheadAttention", "kdim", kdim)
        vdim = None if vdim is None else positive_int("MultiheadAttention", "vdim", vdim)
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention embed_dim ({embed_dim}) must be divisible by num_heads "
                             f"({num_heads}); e.g. num_heads in {[h for h in range(1, embed_dim + 1) if not embed_dim % h][:8]}")
        dropout = arguments.probability("MultiheadAttention", "dropout", dropout)
        add_bias_kv = arguments.flag("MultiheadAttention", "add_bias_kv", add_bias_kv)
        self.add_zero_attn = arguments.flag("MultiheadAttention", "add_zero_attn", add_zero_attn)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = dropout, arguments.flag("MultiheadAttention", "batch_first", batch_first)
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = self.parameter(_xavier_uniform((3 * embed_dim, embed_dim)))
        else:
            self.q_proj_weight = self.parameter(_xavier_uniform((embed_dim, embed_dim)))
            self.k_proj_weight = self.parameter(_xavier_uniform((embed_dim, self.kdim)))
            self.v_proj_weight = self.parameter(_xavier_uniform((embed_dim, self.vdim)))
        self.in_proj_bias = self.parameter(init.zeros((3 * embed_dim,))) if bias else None
        # xavier_normal_ of a (1, 1, E) tensor, as PyTorch's: std sqrt(2 / (fan_in + fan_out)) = sqrt(1 / E)
        for name in ("bias_k", "bias_v"):
            setattr(self, name, self.parameter(init.normal((1, 1, embed_dim), std=math.sqrt(1.0 / embed_dim)))
                    if add_bias_kv else None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        if bias:
            self._backend.assign(self.out_proj.bias, init.zeros((embed_dim,)))

    def _projections(self):
        size = self.embed_dim
        biases = (None,) * 3 if self.in_proj_bias is None else tuple(
            self.in_proj_bias[i * size:(i + 1) * size] for i in range(3))
        if self._qkv_same_embed_dim:
            weights = tuple(self.in_proj_weight[i * size:(i + 1) * size] for i in range(3))
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return weights, biases

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True, attn_mask=None,
                average_attn_weights: bool = True, is_causal: bool = False, *, _fused_layer=None):
        # (``_fused_layer``: from a ``TransformerEncoderLayer``, whether it is on PyTorch's fused layer path, which
        # takes float masks too; off it, the layer hands its attention float masks: the module's plain path)
        ops = self._ops
        batched = len(query.shape) == 3
        layout = "(N, L, E)" if self.batch_first else "(L, N, E)"
        checked = {}  # (one tensor given twice, self-attention's, stays one)
        for label, tensor, features in (("query", query, self.embed_dim), ("key", key, self.kdim),
                                        ("value", value, self.vdim)):
            shape = tuple(tensor.shape)
            if len(shape) != len(query.shape) or len(shape) not in (2, 3) or shape[-1] not in (features, None):
                raise ShapeMismatchError(f"{self.describe()} expected {label} of shape {layout} (or unbatched (L, E)) "
                                         f"with E = {features}, received {shape}")
            if id(tensor) not in checked:  # a graph traced for any sizes: the same error when it runs (TensorFlow's
                # matrix-size error before)
                checked[id(tensor)] = input_checks.require_sizes(
                    self.describe, tensor, {-1: features}, lambda owner, template, role=label, size=features: (
                        f"{owner} expected {role} of shape {layout} (or unbatched (L, E)) with E = {size}, received "
                        f"{template}"))
        query, key, value = (checked[id(tensor)] for tensor in (query, key, value))
        for tensor in (query, key, value):
            input_checks.check_parameters_dtype(self.describe, tensor, self.out_proj.weight)
        # a query whose every key is masked: 0 where PyTorch's module runs F.scaled_dot_product_attention, NaN
        # where it runs a plain softmax (for the weights it returns, and on its fused inference path)
        safe_softmax = not need_weights and not (_fused_layer is not False and self._torchs_inference_path(
            query, key, value, batched, (key_padding_mask, attn_mask) if _fused_layer is None else ()))
        if not (query is key and key is value):  # (self-attention pairs up; a check would copy the tensors)
            key, value = self._paired(query, key, value, batched)
        if batched and not self.batch_first:
            query, key, value = (ops.permute(t, (1, 0, 2)) for t in (query, key, value))
        elif not batched:
            query, key, value = (ops.unsqueeze(t, 0) for t in (query, key, value))
        (w_q, w_k, w_v), (b_q, b_k, b_v) = self._projections()
        q, k, v = ops.linear(query, w_q, b_q), ops.linear(key, w_k, b_k), ops.linear(value, w_v, b_v)
        batch, target, source = ops.shape(q)[0], ops.shape(q)[1], ops.shape(k)[1]
        q, k, v = (ops.permute(ops.reshape(t, (batch, length, self.num_heads, self.head_dim)), (0, 2, 1, 3))
                   for t, length in ((q, target), (k, source), (v, source)))
        masks = []
        if key_padding_mask is not None:
            masks.append(self._padding_mask(key_padding_mask, batched, query, key))
        if attn_mask is not None:
            masks.append(self._attention_mask(attn_mask, query, key, batch, target, source))
        added = [bias for bias in (self.bias_k, self.bias_v) if bias is not None][:1] + [None] * self.add_zero_attn
        if added:
            if is_causal and attn_mask is None:  # the causal mask over the given keys, the added ones attended
                keys, queries = (ops.arange(0, n if isinstance(n, int) else ops.cast(n, "int64"), 1, "int64")
                                 for n in (source, target))
                masks.append(ops.unsqueeze(keys, 0) <= ops.unsqueeze(queries, 1))
            k, v = self._added_positions(k, v, batch)
            masks = [self._attending_added(mask, len(added)) for mask in masks]
        output, weights = functional.attention(q, k, v, None, self.dropout if self.training else 0.0,
                                               is_causal and attn_mask is None and not added, None, masks, safe_softmax,
                                               need_weights)
        output = ops.reshape(ops.permute(output, (0, 2, 1, 3)), (batch, target, self.embed_dim))
        output = self.out_proj(output)
        if batched and not self.batch_first:
            output = ops.permute(output, (1, 0, 2))
        elif not batched:
            output = ops.squeeze(output, 0)
        if not need_weights:
            return output, None
        if average_attn_weights:
            weights = ops.mean(weights, 1)
        return output, (weights if batched else ops.squeeze(weights, 0))

    def _added_positions(self, k, v, batch):
        """(N, H, S, d) keys and values with ``add_bias_kv``'s ``bias_k``/``bias_v`` and ``add_zero_attn``'s zeros
        appended along S, in PyTorch's order."""
        ops = self._ops

        def heads(row):  # (1, 1, E) -> (N, H, 1, d)
            return ops.reshape(row, (1, self.num_heads, 1, self.head_dim)) + ops.zeros_like(k[:, :, :1])

        if self.bias_k is not None:
            k, v = ops.concat([k, heads(self.bias_k)], 2), ops.concat([v, heads(self.bias_v)], 2)
        if self.add_zero_attn:
            k, v = ops.concat([k, ops.zeros_like(k[:, :, :1])], 2), ops.concat([v, ops.zeros_like(v[:, :, :1])], 2)
        return k, v

    def _attending_added(self, mask, count):
        """An ``ops.attention`` mask (True = attend, or additive) with ``count`` more source columns that attend."""
        column = mask[..., :1]
        column = column == column if "bool" in str(mask.dtype) else self._ops.zeros_like(column)
        return self._ops.concat([mask] + [column] * count, -1)

    def _paired(self, query, key, value, batched):
        """``key`` and ``value``, after checking that they pair up (the same batch and source length) and that the
        key holds the query's batch, as PyTorch's module asserts: a value of another batch or length was reshaped
        into the key's (wrong values, no error) or failed in the framework's reshape. Sizes a graph leaves unknown
        are checked when it runs, in the same words."""
        batch_axis = (0 if self.batch_first else 1) if batched else None
        names = ("(N, S)" if self.batch_first else "(S, N)") if batched else "(S,)"
        value = self._same_sizes(value, "value", key, tuple(range(len(key.shape) - 1)), f"the key's {names}")
        if batch_axis is not None:
            key = self._same_sizes(key, "key", query, (batch_axis,), "the query's batch size N")
        return key, value

    def _same_sizes(self, tensor, name, other, axes, what):
        """``tensor`` after checking that its sizes along ``axes`` are ``other``'s (``_paired``)."""
        given, wanted = tuple(tensor.shape), tuple(other.shape)
        if any(given[a] is not None and wanted[a] is not None and given[a] != wanted[a] for a in axes):
            raise ShapeMismatchError(f"{self.describe()} expected {name} of {what} = "
                                     f"{tuple(wanted[a] for a in axes)}, received {name} of shape {given}")
        if all(given[a] is not None and wanted[a] is not None for a in axes):
            return tensor
        sizes, others = input_checks.sizes_of(tensor), input_checks.sizes_of(other)
        condition = input_checks.all_of([input_checks.holds(sizes[a] == others[a]) for a in axes])
        return input_checks.require(tensor, condition, lambda: (
            f"{input_checks.literal(self.describe)} expected {name} of {what} = "
            f"{input_checks.shape_template(len(axes))}, received {name} of shape "
            f"{input_checks.shape_template(len(sizes))}"), tuple(others[a] for a in axes) + tuple(sizes))

    def _torchs_inference_path(self, query, key, value, batched, masks=()) -> bool:
        """Whether ``torch.nn.MultiheadAttention`` would run its fused inference path here (its evaluation under
        ``torch.no_grad()``, which unidl's ``eval()`` stands for, as ``TransformerEncoder`` does): batched
        self-attention, batch first, one packed projection with biases, an even number of heads, and no float
        mask (PyTorch: "floating-point masks are not supported for fast path")."""
        return (not self.training and batched and self.batch_first and query is key and key is value
                and self._qkv_same_embed_dim and self.in_proj_bias is not None and self.num_heads % 2 == 0
                and self.bias_k is None and not self.add_zero_attn
                and not any(mask is not None and is_floating(getattr(mask, "dtype", None) or np.asarray(mask).dtype)
                            for mask in masks))

    def _padding_mask(self, mask, batched, query, key):
        """(N, S) in MultiheadAttention's convention (True = ignore) -> (N, 1, 1, S), True = attend, or additive."""
        ops = self._ops
        mask = self._as_tensor(mask)
        input_checks.check_mask(self.describe, "key_padding_mask", mask, query)
        expected = (key.shape[0], key.shape[1]) if batched else (key.shape[1],)
        given = tuple(mask.shape)  # (an unbatched call's (S,) mask, or its (1, S))
        shape = given if batched or len(given) != 1 else (1,) + given
        if len(shape) != 2 or any(a is not None and b is not None and a != b
                                  for a, b in zip(shape, (key.shape[0], key.shape[1]))):
            raise ShapeMismatchError(f"{self.describe()} expected key_padding_mask of shape "
                                     f"{input_checks.shape_text(expected, ('N', 'S')[-len(expected):])} (batch, "
                                     f"source length), received {given}")
        wanted = input_checks.sizes_of(key)[:2][-len(given):]  # (sizes a graph leaves unknown: when it runs)
        mask = input_checks.require_shape(mask, wanted, lambda: (
            f"{input_checks.literal(self.describe)} expected key_padding_mask of shape "
            f"{input_checks.shape_template(len(expected))} (batch, source length), received "
            f"{input_checks.shape_template(len(given))}"), shown=input_checks.sizes_of(key)[:2][-len(expected):])
        if len(given) == 1:
            mask = ops.unsqueeze(mask, 0)
        return self._to_sdpa(ops.unsqueeze(ops.unsqueeze(mask, 1), 1))

    def _attention_mask(self, mask, query, key, batch, target, source):
        """(L, S) or (N * num_heads, L, S), True = may not attend -> broadcastable to (N, H, L, S)."""
        ops = self._ops
        mask = self._as_tensor(mask)
        input_checks.check_mask(self.describe, "attn_mask", mask, query)
        shape = tuple(mask.shape)
        lengths = (query.shape[1], key.shape[1])
        heads = None if query.shape[0] is None else query.shape[0] * self.num_heads
        fits = (len(shape) == 2 and all(a is None or b is None or a == b for a, b in zip(shape, lengths))) or (
            len(shape) == 3 and all(a is None or b is None or a == b for a, b in zip(shape, (heads,) + lengths)))
        if not fits:
            def named(sizes, names):  # "(L, S) = (4, 4)"; the names alone where a graph leaves every size unknown
                text = input_checks.shape_text(names, names)
                if all(size is None for size in sizes):
                    return text
                return f"{text} = {input_checks.shape_text(sizes, names)}"

            raise ShapeMismatchError(f"{self.describe()} expected attn_mask of shape {named(lengths, ('L', 'S'))} or "
                                     f"{named((heads,) + lengths, ('N * num_heads', 'L', 'S'))}, received {shape}")
        lengths = (target, source)  # (sizes a graph leaves unknown: checked when it runs, in the same words)
        expected = lengths if len(shape) == 2 else (batch * self.num_heads,) + lengths
        mask = input_checks.require_shape(mask, expected, lambda: (
            f"{input_checks.literal(self.describe)} expected attn_mask of shape (L, S) = ({{}}, {{}}) or "
            f"(N * num_heads, L, S) = ({{}}, {{}}, {{}}), received {input_checks.shape_template(len(shape))}"),
            shown=lengths + (batch * self.num_heads,) + lengths)
        if len(shape) == 3:
            mask = ops.reshape(mask, (batch, self.num_heads, target, source))
        return self._to_sdpa(mask)

    def _as_tensor(self, mask):
        if self._backend.is_tensor(mask):
            return mask
        import numpy as np

        from unidl import tensors

        return tensors.tensor(np.asarray(mask))

    def _to_sdpa(self, mask):
        """MultiheadAttention's booleans (True = blocked) as ``ops.attention``'s (True = attend); floats as they are."""
        if "bool" in str(mask.dtype):
            return ~mask
        return mask

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"
