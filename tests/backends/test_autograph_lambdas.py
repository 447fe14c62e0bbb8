"""The TensorFlow backend reads a lambda's source for AutoGraph from one parse of its file
(``unidl/backends/tensorflow/autograph_lambdas.py``): the same node, source and errors as AutoGraph's own
``_parse_lambda``, which parsed the whole file again for every lambda it converted."""

import collections

import gast
import numpy as np
import pytest

import unidl as ud

pytest.importorskip("tensorflow")
from tensorflow.python.autograph.pyct import errors, parser  # noqa: E402

from unidl.backends.tensorflow import autograph_lambdas  # noqa: E402

ONE_LINE = lambda x: x + 1  # noqa: E731
SPREAD = (lambda x, y:
          x * y
          + 2)
PAIR = (lambda x: x - 1, lambda x, y: x - y)  # two on a line, told apart by their signatures
SAME = (lambda x: x * 2, lambda x: x * 3)  # two on a line with one signature: AutoGraph cannot tell them apart


def _nested():
    return lambda v: (v, v)


CASES = [ONE_LINE, SPREAD, PAIR[0], PAIR[1], _nested()]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_a_lambda_reads_as_autograph_reads_it(index):
    lam = CASES[index]
    node, source = autograph_lambdas.parse_lambda(lam)
    expected_node, expected_source = autograph_lambdas._autographs_parse_lambda(lam)
    assert source == expected_source
    assert parser.unparse(node, include_encoding_marker=False) == parser.unparse(expected_node,
                                                                                 include_encoding_marker=False)
    assert (node.lineno, node.col_offset) == (expected_node.lineno, expected_node.col_offset)


@pytest.mark.parametrize("decorated", [lambda x: x * 2.0 if ud.ops.sum(x) > 0 else x * 3.0])
def test_a_lambda_in_a_decorator_is_found_and_converted(decorated):
    """A lambda in a decorator (a parametrize table): AutoGraph's own search ends at the decorated ``def``'s line,
    before it, so AutoGraph parsed the file again, logged every lambda in it and ran this one unconverted (its
    conditional on a tensor then an error in a graph); unidl's reading finds it from the one parse."""
    node, source = autograph_lambdas.parse_lambda(decorated)
    assert source.strip().startswith("lambda x: x * 2.0 if") and isinstance(node, gast.Lambda)
    with ud.use_backend("tensorflow"):
        step = ud.function(decorated)
        for values in ([1.0, 2.0], [-1.0, -2.0]):
            factor = 2.0 if sum(values) > 0 else 3.0
            np.testing.assert_array_equal(ud.to_numpy(step(np.array(values, np.float32))),
                                          np.array(values, np.float32) * factor)


def test_lambdas_of_one_signature_on_one_line_are_autographs_error():
    with pytest.raises(errors.UnsupportedLanguageElementError) as ours:
        autograph_lambdas.parse_lambda(SAME[0])
    with pytest.raises(errors.UnsupportedLanguageElementError) as autographs:
        autograph_lambdas._autographs_parse_lambda(SAME[0])
    assert str(ours.value) == str(autographs.value)


def test_a_file_is_parsed_once_for_all_its_lambdas_and_each_gets_its_own_node(monkeypatch):
    parses = []
    original = parser.parse
    monkeypatch.setattr(parser, "parse", lambda *a, **k: parses.append(1) or original(*a, **k))
    monkeypatch.setattr(autograph_lambdas, "_FILES", collections.OrderedDict())
    first, _ = autograph_lambdas.parse_lambda(ONE_LINE)
    again, _ = autograph_lambdas.parse_lambda(ONE_LINE)
    autograph_lambdas.parse_lambda(SPREAD)
    assert len(parses) == 1
    assert first is not again  # AutoGraph edits the node it gets: a shared one would carry those edits on
    tops, lambdas = autograph_lambdas._lambdas_of(__file__, "f = lambda: 0\n")  # another text: parsed again
    assert len(parses) == 2 and tops == [1] and len(lambdas) == 1
    for cell in range(autograph_lambdas._KEPT_FILES + 1):  # the files read least recently are let go
        autograph_lambdas._lambdas_of(f"<cell {cell}>", "g = lambda: 1\n")
    assert len(autograph_lambdas._FILES) == autograph_lambdas._KEPT_FILES and "<cell 0>" not in autograph_lambdas._FILES


def test_a_lambda_holding_a_conditional_on_a_tensor_is_converted_inside_ud_function():
    """A conditional expression on a tensor's value becomes a graph conditional (AutoGraph read the lambda)."""
    with ud.use_backend("tensorflow"):
        step = ud.function(lambda x: x * 2.0 if ud.ops.sum(x) > 0 else x * 3.0)
        for values in ([1.0, 2.0], [-1.0, -2.0]):
            factor = 2.0 if sum(values) > 0 else 3.0
            np.testing.assert_array_equal(ud.to_numpy(step(np.array(values, np.float32))),
                                          np.array(values, np.float32) * factor)
