"""``Backend.looping_composite``, the compiled program of a composite that loops (the CTC recursion), on TensorFlow:
how often its body is traced over calls of several shapes, and one program per backend in force (TensorFlow's own
ops, or Keras's on TensorFlow). A body's Python runs once per trace, so a probe that records its calls counts them."""

import numpy as np

import unidl as ud
from unidl import config


def _doubling_probe(calls):
    def doubled(x):
        calls.append(config.get_backend())
        return x * 2

    return doubled


def test_tensorflow_traces_a_looping_composite_twice_for_any_number_of_shapes():
    """The first call's shapes, then every size at once: ``reduce_retracing`` relaxed one axis at a time, a trace
    for each axis that changed (seconds each for the CTC recursion)."""
    calls = []
    probe = _doubling_probe(calls)
    with ud.use_backend("tensorflow"):
        for shape in [(2, 3), (3, 3), (3, 4), (4, 5), (2, 3)]:
            x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
            doubled = config.backend().looping_composite(probe, ("x",))(ud.tensor(x))
            np.testing.assert_array_equal(ud.to_numpy(doubled), 2 * x)
    assert len(calls) == 2


def test_tensorflow_and_keras_on_tensorflow_compile_a_looping_composite_apart():
    """One program was kept per composite, device and dtype: the backend called second ran the first one's trace,
    built with the other backend's ops."""
    calls = []
    probe = _doubling_probe(calls)
    for name in ("tensorflow", "keras", "tensorflow", "keras"):
        with ud.use_backend(name):
            doubled = config.backend().looping_composite(probe, ("x",))(ud.tensor(np.ones(3, np.float32)))
            np.testing.assert_array_equal(ud.to_numpy(doubled), np.full(3, 2.0))
    assert calls == ["tensorflow", "keras"]
