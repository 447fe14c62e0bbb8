"""``ud.function``, ``ud.custom_gradient`` and the train step for the keras backend, through the framework Keras runs on.

Keras 3 has no portable compiled-function or custom-gradient API that covers
torch, so these reuse the tensorflow backend's ``GraphFunction`` and
``tf.custom_gradient`` on Keras-TensorFlow, and the torch backend's eager
function and ``torch.autograd.Function`` on Keras-torch.
"""

from __future__ import annotations

import keras


def _unsupported(what: str):
    return NotImplementedError(f"unidl's keras backend provides {what} on Keras's tensorflow and torch backends; "
                               f"KERAS_BACKEND={keras.backend.backend()!r} is not supported")


def function(fn, jit_compile: bool, name: str, device: str, to_tensor):
    """``fn`` as a tf.function graph (Keras-TensorFlow) or eager/``torch.compile`` (Keras-torch)."""
    framework = keras.backend.backend()
    if framework == "tensorflow":
        from unidl.backends.tensorflow.backend import tf_device_name
        from unidl.backends.tensorflow.function import GraphFunction

        return GraphFunction(fn, jit_compile=jit_compile, device=tf_device_name(device), name=name)
    if framework == "torch":
        from unidl.backends.torch.function import EagerFunction

        return EagerFunction(fn, jit_compile, to_tensor, name)
    raise _unsupported("ud.function")


def train_step_graph(native, device: str, per_batch: bool):
    """Keras's own ``Model.train_step`` of a compiled ``keras.Model`` (forward, Keras's loss, gradients,
    the compiled optimizer, Keras's loss and metric trackers) as one graph on Keras-TensorFlow: a
    ``GraphFunction``, traced once per input rank and dtype. None on Keras's other frameworks.

    ``per_batch``: ``step(x, y)`` resets the trackers first and returns this batch's loss, as
    ``train_on_batch`` does; otherwise it returns Keras's logs (running means since the last
    ``reset_metrics()``), as ``Model.fit`` reports them. Either way without ``train_on_batch``'s and
    ``fit``'s per-call Python (a generator wrapped for a nested-argument ``tf.function``, an eager
    metric reset, callbacks, the logs converted back): about 0.4 ms a step on a 2-core CPU for
    ``train_on_batch``, 2 ms for ``fit``, against 1 ms for the two-layer net's whole graph.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    from unidl.backends.tensorflow.backend import tf_device_name
    from unidl.backends.tensorflow.function import GraphFunction

    def train_step(x, y):
        if per_batch:
            native.reset_metrics()
        logs = native.train_step((x, y, None))
        return logs["loss"] if per_batch else logs

    return GraphFunction(train_step, device=tf_device_name(device), name=f"train_step of {native.name}")


def custom_gradient(forward_fn):
    """``tf.custom_gradient`` or a ``torch.autograd.Function``, as Keras is configured."""
    framework = keras.backend.backend()
    if framework == "tensorflow":
        from unidl.backends.tensorflow.function import custom_gradient as tf_custom_gradient

        return tf_custom_gradient(forward_fn)
    if framework == "torch":
        from unidl.backends.torch.function import custom_gradient as torch_custom_gradient

        return torch_custom_gradient(forward_fn)
    raise _unsupported("ud.custom_gradient")


def device_of(tensor) -> str:
    """Canonical device of a Keras variable or tensor, read from the framework's own tensor."""
    value = tensor.value if isinstance(tensor, keras.Variable) else tensor
    device = value.device
    if keras.backend.backend() == "torch":
        return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"
    name = str(device).upper()
    if "GPU" in name:
        return f"cuda:{name.rsplit(':', 1)[-1]}"
    return "cpu"
