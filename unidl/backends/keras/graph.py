"""The model graph TensorBoard shows for a Keras model (``Backend.model_graph``), traced by the host framework.

On TensorFlow the host's ``tf.function`` reads Keras's variables as they are. Elsewhere (JAX, torch) the host's
writer traces the forward as a function of the variables' values, which go in through a ``keras.StatelessScope``
(as ``stateless.py`` does for gradients), so the trace assigns nothing and each parameter and buffer is one node
under its ``state_dict()`` name.
"""

from __future__ import annotations

import keras


def model_graph(host, module, x) -> bytes | None:
    """The serialized ``GraphDef`` of ``module``'s forward on inputs shaped as the NumPy batch ``x`` (or a tuple of
    them: the forward's positional inputs); None where the host framework gives none."""
    parameters, buffers = list(module.named_parameters()), list(module.named_buffers())
    variables = [variable for _, variable in parameters + buffers]
    state = [(name, True, variable.value) for name, variable in parameters]
    state += [(name, False, variable.value) for name, variable in buffers]

    def forward(values, *inputs):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return module(*inputs)

    graph = host.model_graph_of_values(forward, state, x)
    return graph if graph is not None else host.model_graph(module, x)
