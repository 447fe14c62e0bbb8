"""The functional ops for users' own forwards (``ud.ops``) against ``torch`` / ``torch.nn.functional``: output and
input gradients, float32 (2e-6 / 1e-5) inside ``ud.function`` and float64 (1e-12) eagerly, on every backend.
The other activations and ``prelu`` are compared through their layers (``test_activations_losses.py``), which call
exactly these ops."""

import collections
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import unidl as ud
from unidl.testing import max_relative_difference
from tests.parity.torch_oracle import RUNS, TORCH_AVX2_KERNELS, Case, compare_table

R = np.random.default_rng(21)
ROWS = R.standard_normal((4, 6))
OTHER = R.standard_normal((4, 6))
IMAGES = R.standard_normal((2, 3, 4, 5))
SEQUENCE = R.standard_normal((2, 3, 4))
INDICES = np.array([[3, 0], [1, 3]])
GATHER_ROWS = np.array([[0, 5], [2, 2], [4, 1]])          # smaller than ROWS on both axes
GATHER_COLUMNS = R.integers(0, 4, (2, 6))
LABELS = np.array([0, -100, 5, 2])
LABELS_IGNORING_5 = np.array([0, 5, 3, 2])
CLASS_WEIGHT = R.random(6) + 0.5
PROBABILITIES = R.dirichlet(np.ones(6), 4)
FLAT_INDICES = np.array([[23, 0], [7, 7], [12, 5]])       # into 24 entries (ROWS's, and SEQUENCE's), one repeated
# grouped-query attention: 4 query heads, keys and values of 2 (each serving 2 query heads), one of 1 (all 4)
GQA = (R.standard_normal((2, 4, 3, 5)), R.standard_normal((2, 2, 6, 5)), R.standard_normal((2, 2, 6, 3)))
POSITIVE = R.random((4, 6))
NORM_WEIGHT, NORM_BIAS = R.standard_normal((2, 6)) + np.array([[1.0], [0.0]])   # (6,) each, for layer_norm
TOKENS = np.array([[1, 3, 0], [3, 2, 3]])                   # rows of ROWS, one repeated (its gradient summed)
# maximum/minimum at ties: TIED equals OTHER in half its entries, and the bounds ((1, 6) and a scalar) equal
# some of TIED's entries, so that each kind of tie gets a gradient (torch splits it in halves)
TIED = np.where(R.random((4, 6)) < 0.5, OTHER, ROWS)
ROW_BOUND = TIED[2:3] * np.where(R.random((1, 6)) < 0.5, 1.0, 0.5)
SCALAR_BOUND = np.array(TIED[1, 3])
NUMBER_TIES = np.array([[0.5, -1.0, 0.75, 1.0], [0.5, 2.0, 0.25, 1.0]])  # ties with the Python numbers 0.5 and 1


def _like(array, x):
    """``array`` as a torch tensor of ``x``'s dtype (a constant beside the oracle's inputs)."""
    return torch.tensor(array, dtype=x.dtype)


def case(build, oracle, *inputs):
    return Case(lambda: build, lambda: oracle, list(inputs))


OPS = {
    "take-axis0": case(lambda x, i: ud.ops.take(x, i, axis=0), lambda x, i: x[i], ROWS, INDICES),
    # without an axis: of x flattened, as torch.take and numpy.take (it took rows along axis 0)
    "take-flattened": case(lambda x, i: ud.ops.take(x, i), torch.take, ROWS, FLAT_INDICES),
    "take-flattened-3d": case(lambda x, i: ud.ops.take(x, i), torch.take, SEQUENCE, FLAT_INDICES),
    "index_select": case(lambda x, i: ud.ops.index_select(x, 1, i), lambda x, i: torch.index_select(x, 1, i), ROWS,
                         np.array([5, 0, 5])),
    "take-axis1": case(lambda x, i: ud.ops.take(x, i, 1), lambda x, i: x[:, i], ROWS, INDICES),
    "gather-dim1": case(lambda x, i: ud.ops.gather(x, 1, i), lambda x, i: torch.gather(x, 1, i), ROWS, GATHER_ROWS),
    "gather-dim0": case(lambda x, i: ud.ops.gather(x, 0, i), lambda x, i: torch.gather(x, 0, i), ROWS, GATHER_COLUMNS),
    "cast-int64": case(lambda x: ud.ops.cast(x * 3, "int64"), lambda x: (x * 3).to(torch.int64), ROWS),
    "zeros": case(lambda: ud.ops.zeros((2, 3)), lambda: torch.zeros(2, 3)),
    "ones": case(lambda: ud.ops.ones([3]), lambda: torch.ones(3)),
    # torch's forms: sizes as arguments (a TypeError before), a torch.Size, the dtype by keyword
    "zeros-sizes": case(lambda: ud.ops.zeros(2, 3), lambda: torch.zeros(2, 3)),
    "zeros-one-size": case(lambda: ud.ops.zeros(3), lambda: torch.zeros(3)),
    "zeros-torch-size": case(lambda: ud.ops.zeros(torch.Size([2, 1])), lambda: torch.zeros(torch.Size([2, 1]))),
    # a size a graph knows only when it runs (TensorFlow's), among the arguments
    "zeros-size-of-a-graph": case(lambda x: ud.ops.zeros(ud.ops.shape(x)[0], 2) + ud.ops.sum(x),
                                  lambda x: torch.zeros(x.shape[0], 2, dtype=x.dtype) + x.sum(), ROWS),
    "ones-sizes-int64": case(lambda: ud.ops.ones(2, 3, dtype="int64"), lambda: torch.ones(2, 3, dtype=torch.int64)),
    "arange-int": case(lambda: ud.ops.arange(2, 9, 3), lambda: torch.arange(2, 9, 3)),
    "arange-float": case(lambda: ud.ops.arange(0.5, 3.0, 0.5), lambda: torch.arange(0.5, 3.0, 0.5)),
    "argmax-dim": case(lambda x: ud.ops.argmax(x, 1), lambda x: torch.argmax(x, 1), ROWS),
    "argmax-all-keepdim": case(lambda x: ud.ops.argmax(x, None, True), lambda x: torch.argmax(x, None, True), ROWS),
    "transpose": case(lambda x: ud.ops.transpose(x, 0, -1), lambda x: torch.transpose(x, 0, -1), SEQUENCE),
    "permute": case(lambda x: ud.ops.permute(x, (2, 0, 1)), lambda x: x.permute(2, 0, 1), SEQUENCE),
    "cat": case(lambda a, b: ud.ops.cat([a, b], 1), lambda a, b: torch.cat([a, b], 1), ROWS, OTHER),
    "unsqueeze": case(lambda x: ud.ops.unsqueeze(x, -1), lambda x: torch.unsqueeze(x, -1), ROWS),
    "squeeze": case(lambda x: ud.ops.squeeze(x, (1, 3)), lambda x: x.squeeze((1, 3)), IMAGES[:, :1, :, :1]),
    "pad-constant": case(lambda x: ud.ops.pad(x, (1, 2), value=0.5), lambda x: F.pad(x, (1, 2), value=0.5), ROWS),
    **{f"pad-{mode}": case(lambda x, mode=mode: ud.ops.pad(x, (1, 2, 2, 1), mode),
                           lambda x, mode=mode: F.pad(x, (1, 2, 2, 1), mode), IMAGES)
       for mode in ("constant", "reflect", "replicate", "circular")},
    **{f"pad-{mode}-{amounts}": case(lambda x, mode=mode, amounts=amounts: ud.ops.pad(x, amounts, mode),
                                     lambda x, mode=mode, amounts=amounts: F.pad(x, amounts, mode), inputs)
       for mode, amounts, inputs in [("constant", (-1, 2, 1, -2), IMAGES), ("constant", (1, 1, -1, 2), ROWS),
                                     ("reflect", (-2, 3, 2, -1), IMAGES), ("replicate", (3, -4, -1, 5), IMAGES),
                                     ("reflect", (5, 2), ROWS), ("circular", (1, 2, 3, 0, 2, 1), IMAGES)]},
    "log1p": case(ud.ops.log1p, torch.log1p, POSITIVE),
    "minimum": case(ud.ops.minimum, torch.minimum, ROWS, OTHER),
    **{f"{name}-{inputs}": case(getattr(ud.ops, name), getattr(torch, name), *arrays)
       for name, inputs, arrays in [("maximum", "ties", (TIED, OTHER)), ("maximum", "ties-swapped", (OTHER, TIED)),
                                    ("maximum", "row-bound", (TIED, ROW_BOUND)),
                                    ("maximum", "scalar-bound-first", (SCALAR_BOUND, TIED)),
                                    ("minimum", "ties", (TIED, OTHER)),
                                    ("minimum", "row-bound-first", (ROW_BOUND, TIED)),
                                    ("minimum", "scalar-bound", (TIED, SCALAR_BOUND))]},
    # a Python number on either side, as torch takes it in x + 0.5 (torch.maximum itself refuses numbers)
    "maximum-number": case(lambda x: ud.ops.maximum(x, 0.5),
                           lambda x: torch.maximum(x, torch.tensor(0.5, dtype=x.dtype)), NUMBER_TIES),
    "minimum-number-first": case(lambda x: ud.ops.minimum(1, x),
                                 lambda x: torch.minimum(torch.tensor(1, dtype=x.dtype), x), NUMBER_TIES),
    "cross_entropy-ignore-none": case(lambda x, y: ud.ops.cross_entropy(x, y, reduction="none"),
                                      lambda x, y: F.cross_entropy(x, y, reduction="none"), ROWS, LABELS),
    # torch's signature: weight third, then size_average, ignore_index, reduce, reduction, label_smoothing
    # (the weight a constant: torch does not differentiate it)
    "cross_entropy-weight": case(lambda x, y: ud.ops.cross_entropy(x, y, CLASS_WEIGHT),
                                 lambda x, y: F.cross_entropy(x, y, _like(CLASS_WEIGHT, x)), ROWS, LABELS),
    "cross_entropy-positional-ignore_index": case(lambda x, y: ud.ops.cross_entropy(x, y, None, None, 5),
                                                  lambda x, y: F.cross_entropy(x, y, None, None, 5), ROWS,
                                                  LABELS_IGNORING_5),
    "cross_entropy-weight-smoothing-sum": case(
        lambda x, y: ud.ops.cross_entropy(x, y, CLASS_WEIGHT, reduction="sum", label_smoothing=0.2),
        lambda x, y: F.cross_entropy(x, y, _like(CLASS_WEIGHT, x), reduction="sum", label_smoothing=0.2), ROWS,
        LABELS),
    "cross_entropy-probabilities": case(ud.ops.cross_entropy, F.cross_entropy, ROWS, PROBABILITIES),
    "scaled_dot_product_attention-gqa": case(
        lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), *GQA),
    "scaled_dot_product_attention-gqa-causal": case(
        lambda q, k, v: ud.ops.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), GQA[0],
        GQA[1], GQA[2][:, :1]),
    "cross_entropy_loss-smoothing-sum": case(
        lambda x, y: ud.ops.cross_entropy_loss(x, y, None, -100, "sum", 0.25),
        lambda x, y: F.cross_entropy(x, y, reduction="sum", label_smoothing=0.25), ROWS, LABELS),
    "nll_loss": case(lambda x, y: ud.ops.nll_loss(x, y), lambda x, y: F.nll_loss(x, y), ROWS, LABELS),
    "gelu": case(ud.ops.gelu, F.gelu, ROWS),
    "gelu-tanh": case(lambda x: ud.ops.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh"), ROWS),
    "layer_norm": case(lambda x, w, b: ud.ops.layer_norm(x, 6, w, b), lambda x, w, b: F.layer_norm(x, (6,), w, b),
                       ROWS, NORM_WEIGHT, NORM_BIAS),
    "layer_norm-two-axes-eps": case(lambda x: ud.ops.layer_norm(x, (4, 5), eps=1e-3),
                                    lambda x: F.layer_norm(x, (4, 5), eps=1e-3), IMAGES),
    "embedding": case(lambda i, w: ud.ops.embedding(i, w), lambda i, w: F.embedding(i, w), TOKENS, ROWS),
    # the rows read over max_norm renormalized first (torch writes them into w, unidl's pure op does not): the rows
    # and w's gradient
    "embedding-max-norm": case(lambda i, w: ud.ops.embedding(i, w, max_norm=2.2, norm_type=2),
                               lambda i, w: F.embedding(i, w, max_norm=2.2, norm_type=2), TOKENS, ROWS),
    "embedding-padding_idx": case(lambda i, w: ud.ops.embedding(i, w, padding_idx=3),
                                  lambda i, w: F.embedding(i, w, padding_idx=3), TOKENS, ROWS),
}


@pytest.mark.parametrize("dtype, modes", RUNS)
def test_functional_ops_match_torch(backend, dtype, modes):
    failures = compare_table(OPS, backend, dtype, modes)
    assert not failures, "\n".join(failures)


# ---- maximum/minimum: PyTorch's gradient at ties, infinities and NaNs, in every float dtype -------------------
SPECIAL = np.array([[1.0, 2.0, np.nan, 3.0, np.nan, np.inf, -np.inf, 0.0],
                    [1.0, -1.0, 1.0, np.nan, np.nan, np.inf, -np.inf, -0.0]])


def test_maximum_and_minimum_split_ties_and_nans_as_torch(backend):
    """``torch.maximum``/``torch.minimum``'s value (NaN where either input is NaN) and gradient, bit for bit, in
    float16, bfloat16 and float32, eagerly and inside ``ud.function``: half of a tie's gradient to each input
    (infinities tie too), all of a NaN's to both (TensorFlow gave a tie's to the first input and a NaN's to the
    second, JAX a NaN's to neither). The upstream gradient's values and their halves are exact in every dtype."""
    upstream = np.array([1.5, -3.0, 0.25, 6.0, -0.75, 2.0, 0.5, -1.0])
    cases = [(name, dtype) for name in ("maximum", "minimum") for dtype in ("float16", "bfloat16", "float32")]
    expected = []
    for name, dtype in cases:
        a, b = (torch.tensor(row, dtype=getattr(torch, dtype), requires_grad=True) for row in SPECIAL)
        value = getattr(torch, name)(a, b)
        (value * torch.tensor(upstream, dtype=value.dtype)).sum().backward()
        expected += [t.float().numpy() for t in (value.detach(), a.grad, b.grad)]

    def run_all(a, b, r):  # float32 in and out (exact for these values), each op in its dtype
        results = []
        for name, dtype in cases:
            def op(a, b, name=name, dtype=dtype):
                return getattr(ud.ops, name)(ud.ops.cast(a, dtype), ud.ops.cast(b, dtype))

            def objective(a, b, op=op, dtype=dtype):
                return ud.ops.sum(ud.ops.cast(op(a, b) * ud.ops.cast(r, dtype), "float32"))

            results += [ud.ops.cast(op(a, b), "float32"), *ud.value_and_grad(objective, (0, 1))(a, b)[1]]
        return tuple(results)

    inputs = [ud.tensor(array.astype(np.float32)) for array in (*SPECIAL, upstream)]
    names = [f"{name} {dtype}: {what}" for name, dtype in cases for what in ("value", "gradient of a", "gradient of b")]
    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        for what, got, want in zip(names, function(*inputs), expected):
            np.testing.assert_array_equal(ud.to_numpy(got), want, err_msg=f"{backend} {mode} {what}")


def test_maximum_and_minimum_of_integers_are_integers(backend):
    """Integer inputs: torch's values in the inputs' integer dtype (no gradient to split), eagerly and inside
    ``ud.function``."""
    a, b = np.array([[3, -2, 5], [0, 7, -7]]), np.array([[3, 4, -5], [1, 7, -8]])
    for name, numpy_op in [("maximum", np.maximum), ("minimum", np.minimum)]:
        ours = getattr(ud.ops, name)
        for function in (ours, ud.function(lambda a, b, ours=ours: ours(a, b))):
            got = ud.to_numpy(function(ud.tensor(a), ud.tensor(b)))
            assert got.dtype == np.int64, (name, got.dtype)
            np.testing.assert_array_equal(got, numpy_op(a, b))


def test_maximum_and_minimum_of_two_dtypes_promote_as_torch(backend):
    """An integer tensor with a float one, and float16 with float32, either first, and a 0-dim tensor beside a
    dimensioned one (of the same kind it takes the other's dtype, of a higher kind its own): ``torch.maximum``'s
    dtype and values (TensorFlow raised its own error; JAX and Keras took a 0-dim float64 or int64 over a
    float32 or int32 vector), eagerly and inside ``ud.function``."""
    integers, floats = np.array([[3, -2, 5], [0, 7, -7]]), np.array([[2.5, -1.5, 5.0], [0.25, 7.5, -8.0]])
    # (first dtype, second dtype, which of the two is 0-dim: its [0, 1] element)
    pairs = [("int64", "float32", None), ("float32", "int64", None), ("float16", "float32", None),
             ("float32", "float64", 1), ("float64", "float32", 0), ("int32", "int64", 1), ("int32", "float64", 1)]

    def operands(a, b, first, second, zero_dim, convert, cast):
        a, b = (a[0, 1] if zero_dim == 0 else a), (b[0, 1] if zero_dim == 1 else b)
        return cast(convert(a), first), cast(convert(b), second)

    expected = [getattr(torch, name)(*operands(integers, floats, first, second, zero_dim, torch.tensor,
                                               lambda t, dtype: t.to(getattr(torch, dtype)))).numpy()
                for name in ("maximum", "minimum") for first, second, zero_dim in pairs]

    def run_all(a, b):
        return [getattr(ud.ops, name)(*operands(a, b, first, second, zero_dim, lambda t: t, ud.ops.cast))
                for name in ("maximum", "minimum") for first, second, zero_dim in pairs]

    for function in (run_all, ud.function(run_all)):
        for got, want in zip(function(ud.tensor(integers), ud.tensor(floats)), expected, strict=True):
            got = ud.to_numpy(got)
            assert got.dtype == want.dtype and got.shape == want.shape, (backend, got.dtype, want.dtype)
            np.testing.assert_array_equal(got, want)


def test_joins_and_where_of_two_dtypes_promote_as_torch(backend):
    """``concat``, ``stack`` and ``where`` of tensors of two or three dtypes (int32 with float32, uint8 with int64,
    bool with int32, float64 with float32, and where's 0-dim float64 beside an int32 vector): ``torch.cat``'s,
    ``torch.stack``'s and ``torch.where``'s dtype and values (TensorFlow refused them), eagerly and inside
    ``ud.function``; a condition that is not booleans is a ``DtypeMismatchError`` (JAX and Keras took non-zero
    as true)."""
    values = np.array([[3, -2, 5], [0, 7, -7]])
    groups = [("int32", "float32"), ("uint8", "int64"), ("bool", "int32"), ("float64", "float32"),
              ("int8", "uint8", "float16")]
    condition = values > 0

    def torch_of(dtype):
        return torch.tensor(np.abs(values) if dtype == "uint8" else values).to(getattr(torch, dtype))

    expected = []
    for group in groups:
        expected += [torch.cat([torch_of(d) for d in group], 1), torch.stack([torch_of(d) for d in group], 0)]
        expected.append(torch.where(torch.tensor(condition), torch_of(group[0]), torch_of(group[1])))
    expected.append(torch.where(torch.tensor(condition), torch_of("int32"), torch.tensor(2.5, dtype=torch.float64)))

    def run_all(x, positive, flags):
        def of(dtype):
            return ud.ops.cast(positive if dtype == "uint8" else x, dtype)

        results = []
        for group in groups:
            results += [ud.ops.concat([of(d) for d in group], 1), ud.ops.stack([of(d) for d in group], 0)]
            results.append(ud.ops.where(flags, of(group[0]), of(group[1])))
        results.append(ud.ops.where(flags, of("int32"), ud.ops.cast(ud.ops.sum(x) * 0, "float64") + 2.5))
        return results

    for function in (run_all, ud.function(run_all)):
        got_all = function(ud.tensor(values), ud.tensor(np.abs(values)), ud.tensor(condition))
        for got, want in zip(got_all, expected, strict=True):
            got, want = ud.to_numpy(got), want.numpy()
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (backend, got.dtype, want.dtype)
            np.testing.assert_array_equal(got, want)
    with pytest.raises(ud.DtypeMismatchError, match=r"where: condition must be booleans, got int64; compare it "):
        ud.ops.where(ud.tensor(values), ud.tensor(values), ud.tensor(-values))


def test_where_of_python_numbers_types_them_as_torch(backend):
    """``where`` with a Python number beside a tensor (either side; a float beside integers, an int beside
    booleans or floats, float16 and uint8 tensors) or two numbers: ``torch.where``'s dtype and values (JAX gave
    float64 for a float beside int32 and for two floats, TensorFlow refused a float beside integers and, in a
    graph, an int beside floats, Keras gave int32 for two ints), eagerly and inside ``ud.function``; a Python or
    NumPy boolean condition is taken as a tensor of them (torch's backend raised a ``TypeError``)."""
    values = np.array([3, 0, 5])
    condition = np.array([True, False, True])
    cases = [("int32", 2.5), ("int32", 2), ("float32", 2), ("bool", 0), ("bool", True), ("float64", 0.5),
             ("float16", 7), ("uint8", 2), (None, (1.0, 0.0)), (None, (1, 0)), (None, (True, 2.5))]
    expected = []
    for dtype, number in cases:
        if dtype is None:
            expected.append(torch.where(torch.tensor(condition), *number))
            continue
        x = torch.tensor(values).to(getattr(torch, dtype))
        expected += [torch.where(torch.tensor(condition), x, number), torch.where(torch.tensor(condition), number, x)]

    def run_all(x, flags):
        results = []
        for dtype, number in cases:
            if dtype is None:
                results.append(ud.ops.where(flags, *number))
                continue
            results += [ud.ops.where(flags, ud.ops.cast(x, dtype), number),
                        ud.ops.where(flags, number, ud.ops.cast(x, dtype))]
        return results

    for function in (run_all, ud.function(run_all)):
        for got, want in zip(function(ud.tensor(values), ud.tensor(condition)), expected, strict=True):
            got, want = ud.to_numpy(got), want.numpy()
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (backend, got.dtype, want.dtype)
            np.testing.assert_array_equal(got, want)
    for flags in (condition, True):
        got = ud.to_numpy(ud.ops.where(flags, ud.tensor(values), ud.tensor(-values)))
        np.testing.assert_array_equal(got, np.where(flags, values, -values))


def test_maximum_and_minimum_of_python_numbers_type_them_as_torch(backend):
    """``maximum``/``minimum`` with a Python or NumPy number beside a tensor (either side: a float beside integers
    or booleans, an int beside booleans, floats or integers, a bool beside booleans, 0.1 beside float64) or two
    numbers: the dtype ``torch.result_type`` gives them and torch's values (JAX gave float64 for a float beside
    int32, TensorFlow refused a float beside integers and any booleans, Keras gave int32 for an int beside
    booleans, torch's backend made 0.1 float32 before float64, TensorFlow refused True beside int8); booleans of
    both sides too, and a NumPy array beside a number (torch's backend raised); an integer outside an integer
    tensor's range, or int64's, is one ``ValueError`` (the frameworks wrapped it around, or gave inf), eagerly
    and inside ``ud.function``."""
    values = np.array([3, 0, 5])
    cases = [("int32", 2.5), ("int32", 2), ("float32", 2), ("bool", 0), ("bool", True), ("bool", 0.5),
             ("float64", 0.1), ("float16", 7), ("uint8", np.int64(2)), ("int64", np.float32(1.5)),
             ("bool", np.bool_(False)), ("int8", True), ("uint8", np.bool_(True)), (None, (1.5, 0)), (None, (1, 0)),
             (None, (True, False))]

    def oracle(name, a, b):
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            a = torch.tensor(a)
        dtype = torch.result_type(a, b)
        return getattr(torch, name)(*[torch.as_tensor(v, dtype=dtype) for v in (a, b)]).numpy()

    expected = []
    for name in ("maximum", "minimum"):
        for dtype, number in cases:
            if dtype is None:
                expected.append(oracle(name, *number))
                continue
            x = torch.tensor(values).to(getattr(torch, dtype))
            number = number.item() if isinstance(number, np.generic) else number
            expected += [oracle(name, x, number), oracle(name, number, x)]
        expected.append(getattr(torch, name)(torch.tensor(values > 1), torch.tensor(values < 4)).numpy())

    def run_all(x):
        results = []
        for op in (ud.ops.maximum, ud.ops.minimum):
            for dtype, number in cases:
                if dtype is None:
                    results.append(op(*number))
                    continue
                results += [op(ud.ops.cast(x, dtype), number), op(number, ud.ops.cast(x, dtype))]
            results.append(op(x > 1, x < 4))
        return results

    for function in (run_all, ud.function(run_all)):
        for got, want in zip(function(ud.tensor(values)), expected, strict=True):
            got = ud.to_numpy(got)
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (backend, got.dtype, want.dtype)
            np.testing.assert_array_equal(got, want)
    for op in (ud.ops.maximum, ud.ops.minimum):
        got = ud.to_numpy(op(values, 0.5))
        want = oracle(op.__name__, torch.tensor(values), 0.5)
        assert got.dtype == want.dtype, (backend, got.dtype)
        np.testing.assert_array_equal(got, want)
    for op, (dtype, number, holder) in itertools.product(
            (ud.ops.maximum, ud.ops.minimum, ud.ops.where),
            [("int8", 1000, "the int8 of the tensor"), ("uint8", -1, "the uint8 of the tensor"),
             ("bool", 2 ** 63, "the int64 of the tensor"), ("float32", 2 ** 200, "int64")]):
        x = ud.ops.cast(ud.tensor(values), dtype)
        arguments = (ud.tensor(values > 1), x, number) if op is ud.ops.where else (x, number)
        for function in (op, ud.function(op)):
            with pytest.raises(ValueError, match=f"the number {number} does not fit {holder}"):
                function(*arguments)


def test_maximum_of_shapes_that_do_not_broadcast_is_one_error(backend):
    """(4, 3) against (4, 2) (and (2, 3) against (4, 3)): ``ShapeMismatchError`` naming both shapes (the frameworks
    raised four different errors of their own), eagerly and inside ``ud.function`` where the sizes are known while
    it traces (a TensorFlow graph's unknown sizes: ``tests/test_bad_input_parity.py``, ``MISFITTING_JOINS``)."""
    for name in ("maximum", "minimum"):
        ours = getattr(ud.ops, name)
        for first, second in [((4, 3), (4, 2)), ((2, 3), (4, 3))]:
            message = (f"{name} needs shapes that broadcast (aligned from the last axis, each pair of sizes equal "
                       f"or one of them 1); a has shape {first}, b has shape {second}")
            with pytest.raises(ud.errors.ShapeMismatchError) as raised:
                ours(ud.tensor(np.ones(first, np.float32)), ud.tensor(np.zeros(second, np.float32)))
            assert str(raised.value) == message
            traced = ud.function(lambda x, ours=ours, first=first, second=second:
                                 ours(ud.ops.zeros(first) + x, ud.ops.zeros(second)))
            with pytest.raises(ud.errors.ShapeMismatchError) as raised:
                ud.to_numpy(traced(ud.tensor(np.float32(1.0))))
            assert str(raised.value) == message


# where of three shapes: (condition, a, b) that broadcast (a 0 beside 1 too), then ones that do not
WHERE_SHAPES = [((2, 1, 4), (1, 3, 4), (2, 3, 1)), ((0, 3, 1), (1, 3, 4), (1, 1, 4)), ((2, 3, 4), (2, 5, 4), (2, 3, 4)),
                ((0, 3, 4), (3, 3, 4), (1, 1, 1))]
#: the backends whose ``ud.function`` is a TensorFlow graph traced for any size (Keras's on TensorFlow)
TENSORFLOW_GRAPHS = [name for name in ("tensorflow", "keras") if name in ud.available_backends()
                     and (name == "tensorflow" or os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow")]


def test_where_of_three_shapes_broadcasts_as_torch_in_every_mode(backend):
    """``where`` of a condition and two tensors of three shapes: ``torch.where``'s values where they broadcast
    (a size of 0 beside 1 gives 0), eagerly and inside ``ud.function`` (a TensorFlow graph traced for any size,
    whose check compares the three shape vectors at once); where they do not, eager's ``ShapeMismatchError`` naming
    the three shapes, as torch refuses them, in both modes."""
    rng = np.random.default_rng(8)
    traced = ud.function(lambda c, x, y: ud.ops.where(c > 0, x, y))
    for shapes in WHERE_SHAPES:
        arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
        tensors = [ud.tensor(a) for a in arrays]
        try:
            want = torch.where(torch.tensor(arrays[0]) > 0, torch.tensor(arrays[1]), torch.tensor(arrays[2])).numpy()
        except RuntimeError:
            with pytest.raises(ud.errors.ShapeMismatchError) as eager:
                ud.ops.where(tensors[0] > 0, *tensors[1:])
            assert str(eager.value).endswith(f"condition has shape {shapes[0]}, a has shape {shapes[1]}, "
                                             f"b has shape {shapes[2]}"), str(eager.value)
            with pytest.raises(ud.errors.ShapeMismatchError) as graph:
                ud.to_numpy(traced(*tensors))
            assert str(graph.value) == str(eager.value)
            continue
        for mode, got in [("eager", ud.ops.where(tensors[0] > 0, *tensors[1:])), ("ud.function", traced(*tensors))]:
            np.testing.assert_array_equal(ud.to_numpy(got), want, err_msg=f"{backend} {mode} {shapes}")


@pytest.mark.parametrize("name", TENSORFLOW_GRAPHS)
def test_where_of_three_unknown_shapes_checks_them_in_one_comparison(name):
    """A TensorFlow graph traced for any size checks that ``where``'s three shapes broadcast as one comparison of
    their stacked shape vectors (one ``Pack``, two ``Equal``, one ``LogicalOr``, one ``All``), where a comparison
    per pair built 9 ``Equal``, 6 ``LogicalOr``, 2 ``LogicalAnd`` and 3 ``All`` ops (40 ops in all for rank 3, now
    29): a twentieth of the loss table's graph was such checks."""
    import tensorflow as tf

    with ud.use_backend(name):
        graph = tf.function(lambda c, x, y: ud.ops.where(c > 0, x, y)).get_concrete_function(
            *[tf.TensorSpec([None] * 3)] * 3).graph
    types = collections.Counter(operation.type for operation in graph.get_operations())
    assert (types["Equal"], types["LogicalOr"], types["LogicalAnd"], types["All"]) == (2, 1, 0, 1), types
    assert types["Assert"] == 1 and sum(types.values()) <= 29, types


# ---- sums and max pooling of integers of every width ------------------------------------------------------------
NARROW = np.random.default_rng(5)
SUMMED = {"bool": NARROW.standard_normal((3, 4, 5)) > 0, "uint8": NARROW.integers(0, 256, (3, 4, 5)),
          "int8": NARROW.integers(-128, 128, (3, 4, 5)), "int16": NARROW.integers(-30000, 30000, (3, 4, 5)),
          "int32": NARROW.integers(-2 ** 31, 2 ** 31, (3, 4, 5)),
          "int64": NARROW.integers(-2 ** 40, 2 ** 40, (3, 4, 5))}
AXES = [(None, False), (None, True), (1, False), ((0, 2), True)]


def test_sums_of_booleans_and_integers_are_int64_as_torch(backend):
    """``torch.sum``'s dtype (int64) and values for booleans and integers of each width, over all axes (with and
    without ``keepdims``), one axis and two, eagerly and inside ``ud.function``. (TensorFlow summed int32 in
    int32 and uint8 in uint8, wrapping around, and refused booleans; JAX summed uint8 in uint64; the torch backend
    dropped ``keepdims`` over all axes.)"""
    expected = [torch.sum(torch.tensor(values).to(getattr(torch, dtype)), dim=axis, keepdim=keepdims).numpy()
                for dtype, values in SUMMED.items() for axis, keepdims in AXES]

    def run_all(*tensors):
        return [ud.ops.sum(ud.ops.cast(tensor, dtype), axis, keepdims)
                for dtype, tensor in zip(SUMMED, tensors) for axis, keepdims in AXES]

    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        results = function(*[ud.tensor(values) for values in SUMMED.values()])
        for (dtype, axis, keepdims), got, want in zip([(d, a, k) for d in SUMMED for a, k in AXES], results, expected,
                                                      strict=True):
            got = ud.to_numpy(got)
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (backend, mode, dtype, axis, keepdims)
            np.testing.assert_array_equal(got, want, err_msg=f"{backend} {mode} {dtype} {axis} {keepdims}")


def test_a_mean_over_every_axis_keeps_them_as_torch(backend):
    """``mean(x, None, keepdims=True)``: torch's (1, 1, 1) of the floats (the torch backend gave a 0-d mean),
    and of booleans and integers the same shape in the float dtype in force (``torch.mean`` refuses them),
    eagerly and inside ``ud.function``."""
    floats = R.standard_normal((3, 4, 5)).astype(np.float32)
    expected = torch.mean(torch.tensor(floats), dim=None, keepdim=True).numpy()

    def run_all(x, flags):
        return ud.ops.mean(x, None, True), ud.ops.mean(ud.ops.cast(flags, "bool"), None, keepdims=True)

    for function in (run_all, ud.function(run_all)):
        got, fraction = (ud.to_numpy(t) for t in function(ud.tensor(floats), ud.tensor(SUMMED["bool"])))
        assert (got.shape, fraction.shape, fraction.dtype) == ((1, 1, 1), (1, 1, 1), np.float32), backend
        assert max_relative_difference(got, expected) < 2e-6
        assert abs(fraction.item() - SUMMED["bool"].mean()) < 1e-6


def test_max_pooling_keeps_each_integer_dtype_as_torch(backend):
    """``max_pool2d`` of uint8, int8, int16 and int32 (padded, with ``ceil_mode``, and with its indices):
    ``torch.nn.functional.max_pool2d``'s values in the input's dtype (JAX raised its own ``TypeError`` for each
    width but int64; the pooling with indices gave int64 on the torch and JAX backends)."""
    widths = ["uint8", "int8", "int16", "int32"]
    values = [SUMMED[dtype][:2, None] if dtype != "int32" else SUMMED["int16"][:2, None] * 7 for dtype in widths]
    expected = []
    for dtype, v in zip(widths, values):
        x = torch.tensor(v).to(getattr(torch, dtype))
        expected += [F.max_pool2d(x, 2, 1, 1).numpy(), F.max_pool2d(x, 3, 2, 1, ceil_mode=True).numpy(),
                     *[t.numpy() for t in F.max_pool2d(x, 2, 1, return_indices=True)]]

    def run_all(*tensors):
        results = []
        for dtype, tensor in zip(widths, tensors):
            x = ud.ops.cast(tensor, dtype)
            results += [ud.ops.max_pool2d(x, 2, 1, 1), ud.ops.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                        *ud.ops.max_pool2d(x, 2, 1, return_indices=True)]
        return results

    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        for index, (got, want) in enumerate(zip(function(*[ud.tensor(v) for v in values]), expected, strict=True)):
            got = ud.to_numpy(got)
            assert (got.dtype, got.shape) == (want.dtype, want.shape), (backend, mode, widths[index // 4], index % 4)
            np.testing.assert_array_equal(got, want, err_msg=f"{backend} {mode} {widths[index // 4]} {index % 4}")


# ---- softmax of rows holding inf or NaN; linear in half precision ----------------------------------------------
NONFINITE_ROWS = np.array([[np.inf, 1.0, 2.0], [-np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [np.inf, np.inf, 1.0],
                           [1.0, 2.0, np.nan], [-np.inf, -np.inf, 0.0], [1.0, 2.0, 3.0]])


def test_softmax_of_a_row_holding_inf_or_nan_is_nan_as_torch(backend):
    """``torch.softmax``'s value and gradient over rows holding ``inf``, ``-inf`` or NaN, in float16 and float32,
    eagerly and inside ``ud.function``: NaN over the whole row where the row holds ``inf`` or NaN (TensorFlow's
    kernel gave ``[inf, 1, 2]`` ``[nan, 0, 0]``), the finite rows to float rounding; in float32 along the last
    axis and along the first (the columns of the transposed input)."""
    upstream = R.standard_normal(NONFINITE_ROWS.shape)
    cases = [("float16", -1), ("float32", -1), ("float32", 0)]
    expected = []
    for dtype, dim in cases:
        x = torch.tensor(NONFINITE_ROWS if dim == -1 else NONFINITE_ROWS.T, dtype=getattr(torch, dtype),
                         requires_grad=True)
        value = torch.softmax(x, dim)
        (value * torch.tensor(upstream if dim == -1 else upstream.T, dtype=value.dtype)).sum().backward()
        expected += [t.float().numpy() for t in (value.detach(), x.grad)]

    def run_all(rows, r):
        results = []
        for dtype, dim in cases:
            def objective(x, dtype=dtype, dim=dim):
                weights = r if dim == -1 else ud.ops.transpose(r, 0, 1)
                value = ud.ops.softmax(ud.ops.cast(x, dtype), dim)
                return ud.ops.sum(ud.ops.cast(value * ud.ops.cast(weights, dtype), "float32"))

            x = rows if dim == -1 else ud.ops.transpose(rows, 0, 1)  # float32: exact in float16
            grad = ud.value_and_grad(objective)(x)[1]
            results += [ud.ops.cast(ud.ops.softmax(ud.ops.cast(x, dtype), dim), "float32"), grad]
        return tuple(results)

    inputs = [ud.tensor(NONFINITE_ROWS.astype(np.float32)), ud.tensor(upstream.astype(np.float32))]
    names = [f"{dtype} dim={dim}: {what}" for dtype, dim in cases for what in ("value", "gradient")]
    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        for name, got, want in zip(names, function(*inputs), expected):
            tolerance = 2e-3 if name.startswith("float16") else 2e-6
            np.testing.assert_allclose(ud.to_numpy(got), want, rtol=tolerance, atol=tolerance,
                                       err_msg=f"{backend} {mode} {name}")  # NaN where torch has NaN, only there


def test_softmax_without_a_dim_takes_torchs_implicit_axis(backend):
    """``ud.ops.softmax(x, None)`` and ``log_softmax(x, None)`` take ``torch.nn.functional``'s implicit axis (0 for
    rank 1 or 3, 1 for rank 2 or 4) with its warning, eagerly and inside ``ud.function``: TensorFlow took the last
    axis, JAX and Keras-on-JAX every axis at once, torch's backend raised a ``TypeError``."""
    arrays = [R.standard_normal(shape).astype(np.float32) for shape in ((5,), (2, 5), (2, 3, 4), (2, 3, 2, 2))]
    expected = [function(torch.from_numpy(a), dim=None).numpy() for a in arrays
                for function in (torch.nn.functional.softmax, torch.nn.functional.log_softmax)]

    def run_all(*tensors):
        return tuple(function(t, None) for t in tensors for function in (ud.ops.softmax, ud.ops.log_softmax))

    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        with pytest.warns(UserWarning, match="implicit dimension choice"):
            got = function(*[ud.tensor(a) for a in arrays])
        for index, (value, want) in enumerate(zip(got, expected, strict=True)):
            np.testing.assert_allclose(ud.to_numpy(value), want, rtol=1e-6, atol=1e-7, err_msg=f"{mode} {index}")


def test_half_precision_linear_rounds_once_as_torch(backend):
    """``F.linear`` in float16 and bfloat16: products summed in float32, the bias added, rounded once; the
    gradients of the input, weight and bias likewise (the batch summed in float32), bit for bit, eagerly and inside
    ``ud.function``. The inputs are multiples of 1/32, the bias of 2^-12 and the upstream gradient of 2^-10, so that
    every float32 sum is exact and the one rounding is the only one: TensorFlow's half MatMul then BiasAdd rounded
    twice, and summed the bias gradient in half precision."""
    grid = np.random.default_rng(5)
    x, weight = grid.integers(-64, 65, (16, 16)) / 32, grid.integers(-64, 65, (12, 16)) / 32
    bias, upstream = grid.integers(-4096, 4097, 12) / 4096, grid.integers(-2048, 2049, (16, 12)) / 1024
    expected = []
    for dtype in ("float16", "bfloat16"):
        tensors = [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in (x, weight, bias)]
        value = F.linear(*tensors)
        (value * torch.tensor(upstream, dtype=value.dtype)).sum().backward()
        expected += [t.float().numpy() for t in (value.detach(), *(t.grad for t in tensors))]

    def run_all(x, weight, bias, r):
        results = []
        for dtype in ("float16", "bfloat16"):
            def objective(*arguments, dtype=dtype):
                value = ud.ops.linear(*(ud.ops.cast(a, dtype) for a in arguments))
                return ud.ops.sum(ud.ops.cast(value * ud.ops.cast(r, dtype), "float32"))

            value = ud.ops.linear(*(ud.ops.cast(a, dtype) for a in (x, weight, bias)))
            grads = ud.value_and_grad(objective, (0, 1, 2))(x, weight, bias)[1]
            results += [ud.ops.cast(value, "float32"), *grads]
        return tuple(results)

    inputs = [ud.tensor(a.astype(np.float32)) for a in (x, weight, bias, upstream)]
    names = [f"{dtype}: {what}" for dtype in ("float16", "bfloat16") for what in ("value", "input gradient",
                                                                                   "weight gradient", "bias gradient")]
    for mode, function in [("eager", run_all), ("ud.function", ud.function(run_all))]:
        for name, got, want in zip(names, function(*inputs), expected):
            np.testing.assert_array_equal(ud.to_numpy(got), want, err_msg=f"{backend} {mode} {name}")


# (a, b) shapes whose batch axes broadcast, an axis of 1 among them; a matrix or a vector beside a batch
BROADCAST_MATMULS = [((2, 1, 4, 4), (4, 8)), ((2, 1, 4, 4), (1, 1, 4, 8)), ((2, 1, 8, 4), (4, 8)),
                     ((8, 4), (2, 1, 4, 8)), ((1, 3, 4), (2, 1, 4, 5)), ((4,), (2, 1, 4, 3)), ((2, 1, 3, 4), (4,))]


def test_bfloat16_products_of_broadcast_batches_are_torchs(backend):
    """``matmul`` in bfloat16 of batches that broadcast (an axis of 1 among them, as interpolating one channel's
    planes, or attention with one head, multiply): torch's products, eagerly and inside ``ud.function``, with
    inputs of a few bits whose sums are exact (TensorFlow's CPU kernel gave values of 1e30 and NaN there)."""
    grid = np.random.default_rng(6)
    pairs = [(grid.integers(-8, 9, a) / 8, grid.integers(-8, 9, b) / 8) for a, b in BROADCAST_MATMULS]
    expected = [torch.matmul(torch.tensor(a, dtype=torch.bfloat16), torch.tensor(b, dtype=torch.bfloat16)).float()
                for a, b in pairs]

    def products(*arrays):
        return [ud.ops.cast(ud.ops.matmul(ud.ops.cast(a, "bfloat16"), ud.ops.cast(b, "bfloat16")), "float32")
                for a, b in zip(arrays[::2], arrays[1::2])]

    inputs = [ud.tensor(array.astype(np.float32)) for pair in pairs for array in pair]
    for mode, function in [("eager", products), ("ud.function", ud.function(products))]:
        for shapes, got, want in zip(BROADCAST_MATMULS, function(*inputs), expected):
            np.testing.assert_array_equal(ud.to_numpy(got), want.numpy(), err_msg=f"{backend} {mode} {shapes}")


#: a batch beside one matrix, which PyTorch's matmul folds into one product, and batches that broadcast, which it
#: expands
GRADIENT_MATMULS = [((2, 3, 4, 5), (5, 6)), ((8, 4), (2, 1, 4, 8)), ((2, 1, 4, 5), (3, 5, 6))]


def test_bfloat16_gradients_of_broadcast_products_are_torchs(backend):
    """The bfloat16 gradients of ``matmul`` of a batch and one matrix, and of batches that broadcast: torch's, bit
    for bit, eagerly and inside ``ud.function``. A matrix's gradient is one product over the folded batch, rounded
    once (TensorFlow's and Keras-on-TensorFlow's batched product rounded each batch's to bfloat16 before the sum);
    a broadcast operand's the sum in float32 of each batch's rounded product (JAX and Keras-on-JAX contracted an
    axis of 1 in one product, or summed in bfloat16): each was one bfloat16 step off. Normal inputs, whose sums
    bfloat16 rounds."""
    rng = np.random.default_rng(7)
    cases = [(rng.standard_normal(a), rng.standard_normal(b),
              rng.standard_normal(np.broadcast_shapes(a[:-2], b[:-2]) + (a[-2], b[-1]))) for a, b in GRADIENT_MATMULS]
    expected = []
    for a, b, r in cases:
        a, b = (torch.tensor(t, dtype=torch.bfloat16, requires_grad=True) for t in (a, b))
        (torch.matmul(a, b).float() * torch.tensor(r, dtype=torch.float32)).sum().backward()
        expected += [a.grad.float().numpy(), b.grad.float().numpy()]

    def gradients(*arrays):
        def objective(*operands):
            pairs = zip(operands[::2], operands[1::2], arrays[2::3])
            return sum(ud.ops.sum(ud.ops.cast(ud.ops.matmul(a, b), "float32") * r) for a, b, r in pairs)

        operands = [ud.ops.cast(t, "bfloat16") for i, t in enumerate(arrays) if i % 3 != 2]
        return [ud.ops.cast(g, "float32") for g in ud.grad(objective, tuple(range(len(operands))))(*operands)]

    inputs = [ud.tensor(array.astype(np.float32)) for case in cases for array in case]
    for mode, function in [("eager", gradients), ("ud.function", ud.function(gradients))]:
        for got, want in zip(function(*inputs), expected):
            if TORCH_AVX2_KERNELS:  # (torch's AVX2 bfloat16 products sum in another order: up to 2 bfloat16 steps of
                # an element, 0.03 where the largest is 6.6, on an AMD EPYC; torch_oracle): 4 steps of the largest
                np.testing.assert_allclose(ud.to_numpy(got), want, rtol=0, atol=4 * 2.0 ** -8 * np.abs(want).max(),
                                           err_msg=f"{backend} {mode}")
                continue
            np.testing.assert_array_equal(ud.to_numpy(got), want, err_msg=f"{backend} {mode}")


# ---- a parameter passed to an op as it is, as torch's ops take a Parameter ------------------------------------------
WEIGHT = np.where(R.random((4, 4)) < 0.25, 0.0, 2 * R.standard_normal((4, 4)))  # zeros: abs's gradient at 0
BIAS = R.standard_normal(4)
KERNEL = R.standard_normal((3, 2, 3, 3))


def _torch_scan(w, b):
    """``ud.ops.scan(lambda c, x: (c * 0.5 + x, c), b, w)``'s outputs: the carry before each step."""
    outputs = []
    for x in w:
        outputs.append(b)
        b = b * 0.5 + x
    return torch.stack(outputs)


PARAMETER_OPS = {  # name: (unidl op, torch op, its parameters: "w" a Linear's weight, "b" its bias, "k" a kernel)
    "abs": (ud.ops.abs, torch.abs, "w"),
    "where": (lambda w: ud.ops.where(w > 0, w, -w), lambda w: torch.where(w > 0, w, -w), "w"),
    "zeros_like": (ud.ops.zeros_like, torch.zeros_like, "w"),
    "leaky_relu": (ud.ops.leaky_relu, F.leaky_relu, "w"),
    "elu": (ud.ops.elu, F.elu, "w"),
    "softplus": (ud.ops.softplus, F.softplus, "w"),
    "hardtanh": (ud.ops.hardtanh, F.hardtanh, "w"),
    "relu6": (ud.ops.relu6, F.relu6, "w"),
    "clip": (lambda w: ud.ops.clip(w, -0.5, 1.0), lambda w: torch.clamp(w, -0.5, 1.0), "w"),
    "argmax": (lambda w: ud.ops.argmax(w, 1), lambda w: torch.argmax(w, 1), "w"),
    "prelu": (ud.ops.prelu, F.prelu, "wb"),
    "dropout-eval": (lambda w: ud.ops.dropout(w, 0.5, False), lambda w: F.dropout(w, 0.5, False), "w"),
    "stack": (lambda b: ud.ops.stack([b, b]), lambda b: torch.stack([b, b]), "b"),
    "scan": (lambda w, b: ud.ops.scan(lambda c, x: (c * 0.5 + x, c), b, w)[1], _torch_scan, "wb"),
    "max_pool2d": (lambda k: ud.ops.max_pool2d(k, 2, 1), lambda k: F.max_pool2d(k, 2, 1), "k"),
    "avg_pool2d": (lambda k: ud.ops.avg_pool2d(k, 2, 1), lambda k: F.avg_pool2d(k, 2, 1), "k"),
}


def test_ops_take_a_parameter_as_torch_ops_take_one(backend):
    """Each op given a layer's parameter itself (a ``torch.nn.Parameter``, ``tf.Variable``, Keras variable, JAX
    parameter) gives torch's value for the same values, eagerly and inside ``ud.function``, and inside a
    ``value_and_grad`` objective over the layer's parameters torch's gradient (of ``sum(op(...) * r) + sum(p)``,
    p its first parameter, so that ops without a gradient have one too). Keras on JAX raised JAX's ValueError in 14
    of the 16 (every op built on ``keras.ops``' ``where``, ``zeros_like`` or ``scan``, avg and max pooling, dropout:
    none takes a Keras variable), Keras on TensorFlow in ``stack`` and max pooling, and the jax backend's ``scan``
    with a parameter as its starting carry."""
    linear, conv = ud.nn.Linear(4, 4), ud.nn.Conv2d(2, 3, 3)
    linear.load_state_dict({"weight": ud.tensor(WEIGHT.astype(np.float32)), "bias": ud.tensor(BIAS.astype(np.float32))})
    conv.load_state_dict({"weight": ud.tensor(KERNEL.astype(np.float32)), "bias": ud.tensor(np.zeros(3, np.float32))})
    ours = {"w": linear.weight, "b": linear.bias, "k": conv.weight}
    owners = {"w": (linear, 0), "b": (linear, 1), "k": (conv, 0)}  # the layer and the index in its parameters()
    values = {"w": WEIGHT, "b": BIAS, "k": KERNEL}
    failures = []

    def every_op():
        return [op(*(ours[p] for p in takes)) for op, _, takes in PARAMETER_OPS.values()]

    try:  # (one graph for the table; where it fails, each op's own graph below names the ops that do)
        graphed = dict(zip(PARAMETER_OPS, ud.function(every_op)(), strict=True))
    except Exception:
        graphed = {}
    for name, (op, torch_op, takes) in PARAMETER_OPS.items():
        parameters = [torch.nn.Parameter(torch.tensor(values[p], dtype=torch.float32)) for p in takes]
        expected = torch_op(*parameters)
        r = np.random.default_rng(7).standard_normal(tuple(expected.shape)).astype(np.float32)
        ((expected.to(torch.float32) * torch.tensor(r)).sum() + parameters[0].sum()).backward()
        layer = owners[takes[0]][0]

        def objective(op=op, takes=takes, r=r):
            value = ud.ops.cast(op(*(ours[p] for p in takes)), "float32")
            return ud.ops.sum(value * ud.tensor(r)) + ud.ops.sum(ours[takes[0]])

        try:
            got = {"eager": op(*(ours[p] for p in takes)),
                   "ud.function": graphed[name] if graphed else
                   ud.function(lambda op=op, takes=takes: op(*(ours[p] for p in takes)))()}
            gradients = ud.value_and_grad(objective, layer.parameters())()[1]
        except Exception as error:  # every op's failure in one report
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:200]}")
            continue
        for mode, value in got.items():
            if max_relative_difference(ud.to_numpy(value), expected.detach().numpy()) > 1e-6:
                failures.append(f"{name} {mode}: {ud.to_numpy(value)} != torch's {expected.detach().numpy()}")
        for p, parameter in zip(takes, parameters):
            gradient = ud.to_numpy(gradients[owners[p][1]])
            if max_relative_difference(gradient, parameter.grad.numpy()) > 1e-6:
                failures.append(f"{name} gradient of {p}: {gradient} != torch's {parameter.grad.numpy()}")
    assert not failures, f"{backend}:\n" + "\n".join(failures)


def test_torchs_forms_given_wrongly_are_clear_errors(backend):
    """What PyTorch refuses in its functional forms, unidl refuses in words naming the fix: a dtype among
    ``zeros``/``ones``' sizes (the old ``zeros(shape, dtype)`` order) a ``TypeError`` naming ``dtype=``; a string in
    ``cross_entropy``'s third place, the class weight's (the old ``cross_entropy(x, y, reduction)``), a ``TypeError``
    naming ``reduction=``, and PyTorch's deprecated ``size_average``/``reduce`` a ``ValueError``; key heads that do
    not divide the query's under ``enable_gqa`` a ``ShapeMismatchError`` (inside ``ud.function`` too, where
    TensorFlow's graph knows the sizes only when it runs); a flattened ``take`` index past x's entries an
    ``IndexOutOfRangeError`` naming x's number of entries, in graphs too; a 2-D ``index_select`` index a
    ``ShapeMismatchError``."""
    with pytest.raises(TypeError, match=r"zeros takes the dtype as a keyword.*dtype='int64'"):
        ud.ops.zeros((2, 3), "int64")
    with pytest.raises(TypeError, match=r"ones takes the dtype as a keyword.*dtype='float64'"):
        ud.ops.ones(2, 3, "float64")
    with pytest.raises(TypeError, match=r"takes ints or one sequence of them"):
        ud.ops.zeros(2, (3,))
    logits, labels = ROWS.astype(np.float32), np.array([0, 1, 5, 2])
    with pytest.raises(TypeError, match=r"third argument is the class weight.*reduction='sum'"):
        ud.ops.cross_entropy(logits, labels, "sum")
    with pytest.raises(ValueError, match="does not take PyTorch's deprecated size_average and reduce"):
        ud.ops.cross_entropy(logits, labels, size_average=False)
    query, key = (np.ones(shape, np.float32) for shape in ((1, 6, 2, 3), (1, 4, 2, 3)))
    for run in (ud.ops.scaled_dot_product_attention, ud.function(ud.ops.scaled_dot_product_attention)):
        with pytest.raises(ud.ShapeMismatchError, match="the key's 4 heads must divide the query's 6"):
            run(query, key, key, enable_gqa=True)
    for run in (ud.ops.take, ud.function(ud.ops.take)):
        with pytest.raises(ud.IndexOutOfRangeError, match=r"take indices must lie in \[0, 24\)"):
            run(ud.tensor(ROWS), ud.tensor(np.array([[3], [24]])))
    with pytest.raises(ud.ShapeMismatchError, match="index_select index must be 1-D"):
        ud.ops.index_select(ud.tensor(ROWS), 0, np.array([[1, 0]]))
