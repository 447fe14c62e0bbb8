"""Run one layer or op on a backend from shared NumPy inputs; return output and gradients as NumPy."""

import numpy as np

import unidl as ud
from tests.parity.torch_oracle import probed_sum


def run(backend, build, inputs, weights_from=None, train=True, seed=0):
    """Output of ``build()(*inputs)`` and the gradients of sum(output * r) w.r.t. the float inputs and
    the parameters, with r a fixed random array. ``build`` may return a Module or a plain function."""
    with ud.use_backend(backend):
        ud.manual_seed(seed)
        layer = build()
        params = []
        if isinstance(layer, ud.nn.Module):
            if weights_from is not None:
                layer.load_state_dict(weights_from)
            layer.train(train)
            params = layer.parameters()
        tensors = [ud.tensor(a) for a in inputs]
        output = layer(*tensors)
        r = ud.tensor(np.random.default_rng(99).standard_normal(tuple(output.shape)))
        float_args = tuple(i for i, a in enumerate(inputs) if np.asarray(a).dtype.kind == "f")

        def objective(*args):
            return probed_sum(layer(*args), r)

        grads = {}
        if float_args:
            _, input_grads = ud.value_and_grad(objective, float_args)(*tensors)
            grads.update({f"input{i}": ud.to_numpy(g) for i, g in zip(float_args, input_grads)})
        if params:
            _, param_grads = ud.value_and_grad(lambda: objective(*tensors), params)()
            names = [n for n, _ in layer.named_parameters()]
            grads.update({n: ud.to_numpy(g) for n, g in zip(names, param_grads)})
        state = layer.state_dict() if isinstance(layer, ud.nn.Module) else {}
        return ud.to_numpy(output), grads, state
