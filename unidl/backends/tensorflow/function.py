"""``GraphFunction``: a Python function compiled into ``tf.function`` graphs, one per input rank and dtype.

Every input dimension is left unknown in the signature, so a new batch size or
sequence length reuses the graph; only a new rank or dtype traces again, with
a ``RetraceWarning``. ``trace_count`` counts real traces, for tests and users.
AutoGraph converts Python control flow on tensors; what it cannot convert raises
``GraphConstructError`` naming the construct. ``custom_gradient`` is ``tf.custom_gradient``.
"""

from __future__ import annotations

import os
import warnings
import weakref

import numpy as np
import tensorflow as tf

from tensorflow.python.autograph.core import ag_ctx, converter
from tensorflow.python.autograph.core import config as autograph_config
from tensorflow.python.autograph.impl import api as autograph_api
from tensorflow.python.framework.func_graph import FuncGraph

from unidl import config, devices
from unidl.nn.module import training_modes
from unidl.tracing import ModesReached, python_randomness_guard
from unidl.backends.tensorflow import autograph_lambdas, fusion, xla_checks
from unidl.backends.tensorflow.ops import marked_check
from unidl.backends.tensorflow.layout import (export_graphs, tracing_export_graph, tracing_for_shapes,
                                              tracing_for_xla, tracing_kept_graph, tracing_xla_graph)
from unidl.errors import (GraphConstructError, RetraceWarning,  # noqa: F401  (RetraceWarning re-exported)
                          ShapeMismatchError, marked_error_from)
from unidl.optim.param_groups import ConstantOptions

# AutoGraph converts user code only: unidl's own layers, ops and backends hold no control flow on tensor
# values, and transpiling them on every first trace cost seconds (385 converted calls for the CNN). A user's
# function (``user_code``) and a user's module's ``forward`` (``forward_caller``) are converted explicitly;
# whatever they call is converted recursively, as AutoGraph does, except unidl's own code.
if not any(getattr(rule, "_prefix", None) == "unidl" for rule in autograph_config.CONVERSION_RULES):
    autograph_config.CONVERSION_RULES = (autograph_config.DoNotConvert("unidl"),) + tuple(autograph_config.CONVERSION_RULES)
autograph_lambdas.install()  # each file AutoGraph reads lambdas from parsed once, not once per lambda


def is_library_code(function) -> bool:
    """True for unidl's own functions and methods (never converted by AutoGraph)."""
    module = getattr(function, "__module__", None) or getattr(type(function), "__module__", "")
    return module == "unidl" or module.startswith("unidl.")


_CONVERSION_OPTIONS = converter.ConversionOptions(recursive=True, user_requested=True)


def _as_autograph_runs(function):
    """``function``, unidl's code that calls the user's converted code (``user_code``, ``forward_caller``), for
    ``tf.function(autograph=False)``, run as ``tf.function``'s AutoGraph runs the function it is given: with
    AutoGraph's status enabled, and an error raised inside given AutoGraph's account of where in the user's code it
    was raised (the error ``_raised_by_unidl`` looks behind). AutoGraph converted the function itself although it
    holds no control flow, its first conversion in a process 25 ms of a first training step."""

    def run(*args):
        try:
            with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.ENABLED, options=_CONVERSION_OPTIONS):
                return function(*args)
        except Exception as error:
            autograph_api._attach_error_metadata(error, run)  # (what AutoGraph's converted_call adds)
            if hasattr(error, "ag_error_metadata"):  # (not for an error AutoGraph passes through)
                raise error.ag_error_metadata.to_exception(error)  # (what tf.function's AutoGraph handler raises)
            raise

    run.__name__ = function.__name__  # the graphs' names ("__inference_<lambda>_12") as they were
    run.ag_source_map = {}  # no lines of its own to map back to the user's code
    return run


def _converted(function):
    """``tf.autograph.to_graph(function)``, or ``function`` itself where AutoGraph cannot read its source (code
    typed at a prompt or built by ``exec``): as AutoGraph's own ``converted_call`` falls back to running it."""
    try:
        return tf.autograph.to_graph(function)
    except Exception:  # AutoGraph's ConversionError and whatever its parser raises
        return function


def user_code(function):
    """``function`` as AutoGraph converts it for a graph, where it is a user's (unidl's own code as it is)."""
    if is_library_code(function) or not callable(function):
        return function
    return _converted(function) if hasattr(function, "__code__") or hasattr(function, "__func__") else function


def forward_caller(module_class):
    """The TensorFlow backend's ``Backend.forward_caller``: a user's forward runs converted by AutoGraph
    while a graph is traced (eagerly it runs as it is); unidl's layers run as they are."""
    if is_library_code(module_class.forward):
        return None
    converted = {}

    def call(module, args, kwargs):
        if tf.executing_eagerly():
            return module.forward(*args, **kwargs)
        forward = type(module).forward
        if forward not in converted:
            converted.clear()
            converted[forward] = _converted(forward)
        return converted[forward](module, *args, **kwargs)

    return call


_FLOAT_DTYPES = {"float32": tf.float32, "float64": tf.float64}


def to_graph_input(value):
    """NumPy or tensor -> tf tensor: floats in unidl's dtype, integers as int64, tensors as they are."""
    if isinstance(value, (tf.Tensor, tf.Variable)):
        if value.dtype.is_floating and value.dtype != _FLOAT_DTYPES[config.get_dtype()]:
            return tf.cast(value, _FLOAT_DTYPES[config.get_dtype()])
        return value
    array = np.asarray(value)
    kind = array.dtype.kind
    if kind == "f":
        dtype = _FLOAT_DTYPES[config.get_dtype()]
    elif kind in "iu":
        dtype = tf.int64
    else:
        return tf.convert_to_tensor(array)
    if array.dtype == dtype.as_numpy_dtype:
        return tf.constant(array)  # skips the conversion registry: about half the cost, per batch and per step
    return tf.convert_to_tensor(array, dtype)


def with_summary(step, summary, flagged: bool = False):
    """``step`` (which returns ``(loss, outputs)``, or ``((loss, outputs), finite)`` where ``flagged``) returning
    ``summary(outputs, y)`` in place of the outputs (``Backend.summary_in_step``: ``fit``'s training metrics in the
    step's graph, where computed apart they were a second graph call a batch). Wraps the step after the replicas'
    results are combined (``data_parallel``), so that the summary is the whole batch's, as ``fit`` computed it from
    the step's outputs; ``step`` itself where ``summary`` is no function (``with_outputs`` True or False)."""
    if not callable(summary):
        return step

    def summarised(x, y, *inputs):
        result = step(x, y, *inputs)
        (loss, outputs), finite = result if flagged else (result, None)
        pair = (loss, summary(outputs, y))
        return (pair, finite) if flagged else pair

    summarised.__name__ = getattr(step, "__name__", "train_step")
    return summarised


class PerModeGraphs:
    """One ``GraphFunction`` per train/eval modes of ``model``'s modules, each of them (``training_modes``: a
    ``model.bn.eval()`` while the model trains counts), of the modules outside the model its traces reached (a
    loss module: ``ModesReached``), and per ``extra_key()`` (e.g. which parameters are frozen): a graph bakes in
    the Python-level mode flags (dropout on or off, batch or running statistics, the parameters it updates), so
    switching any module's mode must not reuse it."""

    def __init__(self, model, fn, device, extra_key=None, name=None):
        self._model, self._device, self._extra_key = model, device, extra_key
        self._name = name or getattr(fn, "__name__", None)
        self._reached = ModesReached(model.modules)
        self._fn = self._reached.traced(fn)
        self.graphs: dict = {}
        self._dropped_traces = 0  # traces of graphs filed under a key that has since grown

    def _key(self) -> tuple:
        return (training_modes(self._model), self._extra_key() if self._extra_key else None, self._reached.key())

    def __call__(self, *args):
        key = self._key()
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = GraphFunction(self._fn, device=self._device, name=self._name, cast_floats=True)
        result = graph(*args)
        if len(self._reached.modules) != len(key[2]):  # its trace reached modules outside the model: key on them
            self._dropped_traces += sum(other.trace_count for other in self.graphs.values() if other is not graph)
            self.graphs = {self._key(): graph}
        return result

    @property
    def trace_count(self) -> int:
        return self._dropped_traces + sum(graph.trace_count for graph in self.graphs.values())

    @property
    def concrete_functions(self) -> list:
        """Every graph traced so far, each a ``tf.types.experimental.ConcreteFunction`` (for inspection)."""
        return [concrete for graph in self.graphs.values() for concrete in graph.concrete_functions]


_CONSTRUCTS = (
    ("as a Python `bool`", "bool() of a symbolic tensor (a condition AutoGraph could not convert, or an explicit bool())"),
    ("Iterating over a symbolic", "iterating over a symbolic tensor with a Python `for`"),
    ("int() argument", "int() of a symbolic tensor"),
    ("float() argument", "float() of a symbolic tensor"),
    ("cannot be interpreted as an integer", "a symbolic tensor used as a Python int (range(), list index)"),
    ("has no attribute 'numpy'", ".numpy() of a symbolic tensor"),
)


def _unsupported_construct(error) -> str | None:
    """Which Python construct on a symbolic tensor caused ``error``, or None for an unrelated error."""
    message = str(error)
    for marker, construct in _CONSTRUCTS:
        if marker in message and ("SymbolicTensor" in message or "symbolic" in message):
            return construct
    if isinstance(error, tf.errors.OperatorNotAllowedInGraphError):
        return "an operation on a symbolic tensor that needs its value"
    return None


def _unknown_rank(name, error) -> ShapeMismatchError:
    """The error for an op that needs the rank of a tensor whose rank the graph does not know (TensorFlow's
    ``ValueError`` "... with unknown rank", from inside TensorFlow or the op)."""
    return ShapeMismatchError(
        f"a tensor of unknown rank inside {name!r} on tensorflow: its graph is traced for any size of its inputs' "
        f"axes, so squeeze() without dim, whose result's rank depends on which sizes are 1 when it runs, gives a "
        f"tensor whose rank the graph does not know, and an op here needs it (reductions, softmax and elementwise ops "
        f"do not). Give squeeze the axes to remove (ud.ops.squeeze(x, dim=-1)). ({str(error).strip()[-300:]})")


_PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _raised_by_unidl(error):
    """The error unidl's own code raised on purpose while a function was traced (a bad input's check, with the
    message it gives eagerly), which AutoGraph re-raises in its own wrapping; None for any other error."""
    original = error.__context__ if hasattr(error.__context__, "ag_error_metadata") else None
    if original is None or original.__traceback__ is None:
        return None
    frame = original.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return original if os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(_PACKAGE + os.sep) else None


def custom_gradient(forward_fn):
    """``f(*xs) -> y`` differentiated by the ``backward`` that ``forward_fn`` returns (``tf.custom_gradient``)."""

    @tf.custom_gradient
    def with_custom_gradient(*inputs):
        y, backward = forward_fn(*inputs)

        def gradient(dy):
            grads = backward(dy)
            return tuple(grads) if isinstance(grads, (tuple, list)) else grads

        return y, gradient

    return with_custom_gradient


def _exact_shapes(key) -> bool:
    """Whether a ``GraphFunction`` key holds exact shapes (an empty input's graph) rather than ranks."""
    return any(isinstance(entry, tuple) for entry, _ in key[0])


def _described(key) -> str:
    """A ``GraphFunction`` key for a warning: its tensors' (rank, dtype) and its static arguments' values."""
    tensors = [(rank, dtype.name) for rank, dtype in key[0]]
    # (a float keyed by its bits, an unhashable value by its id)
    statics = {index: float.fromhex(rest[-1]) if kind is float else rest[-1] for index, kind, *rest in key[1]}
    return f"tensors {tensors}" + (f", Python values by position {statics}" if statics else "")


def _is_static(value) -> bool:
    """Whether a ``GraphFunction`` argument is baked into its graph as a Python value rather than fed as a tensor:
    anything but a tensor, a variable, a NumPy array or scalar and a list, tuple or dict (a list of numbers goes in
    as one tensor; a structure of tensors leaf by leaf, ``_flattened``, its Python numbers baked in as these are),
    as ``jax.jit`` under unidl's JAX backend takes it: a Python number, bool, None, string or callable. (They went
    in as tensors: an int as int64, so that ``x * n`` of a float tensor raised and ``reshape(x, (n, -1))`` could not
    know its size, None could not be converted, and 0.1 became float32 before meeting a float64 tensor.)"""
    return not (tf.is_tensor(value) or isinstance(value, (np.ndarray, np.generic, list, tuple, dict)))


def _leaves_of_structure(value):
    """The leaves of an argument that a graph takes leaf by leaf, or None: a dict, or a tuple or list (a NamedTuple
    too) holding a tensor or variable at any depth. (A list of numbers or arrays is one tensor, as before.)"""
    if not isinstance(value, (tuple, list, dict)):
        return None
    leaves = tf.nest.flatten(value)
    if isinstance(value, dict) or any(tf.is_tensor(leaf) or isinstance(leaf, tf.Variable) for leaf in leaves):
        return leaves
    return None


def _flattened(args) -> tuple:
    """``(args, packing)``: each argument that is a structure of tensors (``_leaves_of_structure``) replaced by its
    leaves, each a graph input (or a baked-in Python value) of its own, and how to pack them back in the trace
    (``_packed``); ``packing`` None where there is none. TensorFlow converted such an argument to one tensor: a
    tuple of same-shaped tensors came in stacked (a NamedTuple without its fields), others and dicts failed,
    where torch's and JAX's compiled functions take them as they are."""
    if not any(isinstance(a, (tuple, list, dict)) for a in args):  # (a step's (x, y): no walk)
        return args, None
    leaves, packing = [], []
    for value in args:
        flat = _leaves_of_structure(value)
        if flat is None:
            leaves.append(value)
            packing.append(None)
        else:
            leaves.extend(flat)  # (the structure kept with 0 for its leaves: a graph holds no caller's tensors)
            packing.append((tf.nest.pack_sequence_as(value, [0] * len(flat)), len(flat)))
    return (leaves, tuple(packing)) if any(packing) else (args, None)


def _packed(args, packing) -> list:
    """``args`` of a trace with the leaves of each structure packed back into it (``_flattened``)."""
    if packing is None:
        return args
    packed, start = [], 0
    for entry in packing:
        if entry is None:
            packed.append(args[start])
            start += 1
        else:
            structure, count = entry
            packed.append(tf.nest.pack_sequence_as(structure, args[start:start + count]))
            start += count
    return packed


def _structure_key(value):
    """A structure's shape for a graph's key: its containers' types and dict keys, its leaves as None."""
    if isinstance(value, dict):
        return dict, tuple((key, _structure_key(value[key])) for key in sorted(value))
    if isinstance(value, (tuple, list)):
        return type(value), tuple(_structure_key(item) for item in value)
    return None


def _static_key(value) -> tuple:
    """A static argument as its graphs are keyed: its type and value (1, 1.0 and True apart; a float by its bits:
    -0.0 apart from 0.0, every NaN one value), or its identity where it has no hash."""
    if isinstance(value, float):
        return (type(value), value.hex())
    try:
        hash(value)
    except TypeError:
        return (type(value), "id", id(value))
    return (type(value), value)


# the names in TensorFlow's gradient registry that a live traced graph registered (``gradients_registered_for_life``)
_CLAIMED_GRADIENTS: set = set()


class gradients_registered_for_life:  # noqa: N801  (a context manager, like contextlib's)
    """The gradient functions TensorFlow registers while a graph is traced, kept only as long as the graph.

    A ``tf.custom_gradient`` run while a graph is traced (``ud.custom_gradient``, the tie-splitting gradient of
    ``ud.ops.maximum``, Keras's own) registers its gradient function in TensorFlow's global gradient registry
    under a new name (``CustomGradient-<n>``), for ``tf.gradients`` of that graph, and nothing ever removes it:
    the function's closure holds the graph's tensors, so every such traced graph stayed alive with its nested
    graphs for the rest of the process (a program tracing new graphs, such as ``fit`` with a new loss each call,
    grew without bound). The names registered while the block traces (less those a graph traced inside it claimed
    for itself) are removed when the traced function (``last_as_long_as``) is freed, when nothing can
    differentiate through it any more."""

    def __enter__(self):
        from tensorflow.python.framework import ops as tf_ops

        self._registry = tf_ops._gradient_registry._registry  # (TensorFlow's: no public way to unregister)
        self._before = set(self._registry)
        return self

    def __exit__(self, *exc_info):
        self.names = set(self._registry) - self._before - _CLAIMED_GRADIENTS
        if exc_info[0] is not None:  # no graph to keep them for
            _unregister(self._registry, self.names)

    def last_as_long_as(self, traced) -> None:
        if self.names:
            _CLAIMED_GRADIENTS.update(self.names)
            weakref.finalize(traced, _unregister, self._registry, self.names)


def _unregister(registry, names) -> None:
    for name in names:
        registry.pop(name, None)
        _CLAIMED_GRADIENTS.discard(name)


def _kept_by_the_graphs_tracing(concrete) -> None:
    """Keep ``concrete``, a graph called while another graph is traced, alive as long as the graph that calls it
    and each graph around that one (a cond's branch inside a train step's): the calling graph holds the called
    graph's definition by name alone, not the Python object whose life the called graph's gradient registrations
    last (``gradients_registered_for_life``), so an inner ``ud.function`` freed while an outer graph still called
    it (made inline in a forward and dropped after its call, or ``del``-ed) took them along, and the outer graph's
    gradient failed with TensorFlow's ``LookupError: No gradient defined for operation 'IdentityN'``. Kept by the
    graphs that call it, a function dropped with them still frees its graphs."""
    graph = tf.compat.v1.get_default_graph()
    while isinstance(graph, FuncGraph):
        called = getattr(graph, "_unidl_called_graphs", None)
        if called is None:
            called = graph._unidl_called_graphs = {}  # (a FuncGraph takes attributes, though it has no __dict__)
        called[id(concrete)] = concrete
        graph = graph.outer_graph


class GraphFunction:
    """``fn`` as a static graph: traced once per (rank, dtype) signature, then run without Python; traced again,
    once, after an optimizer whose rule they ran first changes an option (``ConstantOptions``: they hold it as a
    constant)."""

    def __init__(self, fn, jit_compile: bool = False, device: str | None = None, name: str | None = None,
                 cast_floats: bool = False, static_python_values: bool = False):
        self._fn, self._given_fn = user_code(fn), fn
        # a Python number, bool, None or string argument baked in (ud.function), or a number as a graph input (a
        # train step's step inputs: one graph for every value, docs/dynamic-forward.md)
        self._static_python_values = static_python_values
        self._cast_floats = cast_floats  # float tensors to the dtype in force (a step's batches), or as they are
        self._jit_compile = bool(jit_compile)
        self._device = device
        self._graphs: dict = {}
        self._checks: dict = {}  # a key's XLA graph's value checks (xla_checks.Check), whose flags it returns
        self._written: dict = {}  # a key's XLA graph's variables written through unidl (xla_checks.note_written)
        self._plain = None  # the function as a plain graph, where XLA refused sizes a check would refuse
        self._options = ConstantOptions()  # the optimizers whose options the graphs hold as constants
        self.trace_count = 0
        self.__name__ = name or getattr(fn, "__name__", "graph_function")

    @property
    def concrete_functions(self) -> list:
        """Every graph traced so far, one a (rank, dtype) signature (for inspection: ``.graph``)."""
        return list(self._graphs.values())

    def _traced(self, key, statics, packing, *tensors):
        """``fn`` of a graph's inputs; under XLA with its value checks' flags and values as one more output
        (``xla_checks``), their descriptions kept by ``key`` for ``_checked``."""
        args = list(tensors)
        for index, value in statics:  # the static arguments back in their places
            args.insert(index, value)
        args = _packed(args, packing)  # and the structures' leaves back in their structures
        if not tracing_export_graph():  # an export's own graphs (see __call__) are no retrace of the function
            self.trace_count += 1
        if not self._jit_compile or tracing_export_graph():  # (an exported signature gains no outputs)
            return self._run(args)  # (and the kept XLA graph of ``key`` keeps its checks: an export is no retrace)
        self._checks.pop(key, None)
        self._written[key] = []
        with xla_checks.collecting(self._written[key]) as checks:
            result = self._run(args)
        if not checks:
            return result
        report, self._checks[key] = xla_checks.packed(checks)
        return result, report

    def _run(self, args):
        with tracing_for_xla(self._jit_compile), python_randomness_guard(self.__name__, self._fn), \
                self._options.recording(), xla_checks.tracing_unidl_graph():
            if self._device is None:
                result = self._fn(*args)
            else:
                with tf.device(self._device):
                    result = self._fn(*args)
            xla_checks.in_program_order()  # (the graph's writes after its last check wait for its assertions)
            return result

    def _graph_for(self, key, statics, packing=None, keep: bool = True):
        exact = _exact_shapes(key)  # the graph of an empty input's exact shapes (no warning: a one-off)
        if keep and not exact and any(not _exact_shapes(other) for other in self._graphs):
            warnings.warn(
                f"{self.__name__} traced again for inputs of a new rank or dtype, or a new Python value: "
                f"{_described(key)} (already traced for {'; '.join(map(_described, self._graphs))}); a new batch "
                f"size or length never retraces" + ("; a Python number is baked into its graph: pass ud.tensor(value) "
                                                    "to feed it as an input" if key[1] else ""),
                RetraceWarning, stacklevel=3)
        signature = [tf.TensorSpec(rank if exact else [None] * rank, dtype) for rank, dtype in key[0]]
        fusion.check_fused_relu()  # (once: ReLU fused with a matmul keeps NaN, or the fusion is off)
        # the body held weakly: a traced graph keeps the function it was traced from (AutoGraph's converted copy
        # before), and held strongly it kept this function, its graphs and their custom gradients alive for good
        owner = weakref.ref(self)
        compiled = tf.function(_as_autograph_runs(lambda *tensors: owner()._traced(key, statics, packing, *tensors)),
                               input_signature=signature, jit_compile=self._jit_compile, reduce_retracing=True,
                               autograph=False)
        devices.compiled_placed(self.__name__, f"traced for ({'shape' if exact else 'rank'}, dtype) "
                                               f"{[(r, d.name) for r, d in key[0]]}",
                                self._device or "the default device", "tensorflow graph")
        try:
            try:
                with gradients_registered_for_life() as registered:
                    graph = compiled.get_concrete_function()
                registered.last_as_long_as(graph)
            except Exception as error:
                raised = _raised_by_unidl(error)
                if raised is None:
                    raise
                raise raised from None
        except (tf.errors.OperatorNotAllowedInGraphError, TypeError, AttributeError) as error:
            construct = _unsupported_construct(error)
            if construct is None:
                raise
            raise GraphConstructError(
                f"{construct} inside ud.function {self.__name__!r} on tensorflow: the function is traced into "
                f"a static graph where tensors have no values yet. Write the `if`/`for`/`while` on the tensor "
                f"directly in the function body so that AutoGraph converts it to graph control flow, or use "
                f"ud.ops.where; read values (.numpy()) outside the function. ({error})") from error
        except Exception as error:  # an in-graph check of values known while tracing failed
            marked = marked_error_from(error, escaped=True)
            if marked is None:
                if "with unknown rank" in str(error):
                    raise _unknown_rank(self.__name__, error) from error
                if "only supports singleton tf.Variables" in str(error):  # (tf.function's ValueError)
                    raise GraphConstructError(
                        f"a module built (its variables created) inside ud.function {self.__name__!r} on tensorflow: "
                        f"a TensorFlow graph cannot create variables at each call. Build the module once outside "
                        f"the function and call it inside (a loss's weight given as a tensor, ud.tensor(weight), "
                        f"needs no variable: the loss holds it as a tensor of the graph)") from None
                raise
            raise marked from None
        if keep:
            self._graphs[key] = graph
        return graph

    def _fed(self, value):
        """An argument as the graph takes it: a step's batch, a NumPy array or list as ``to_graph_input`` converts
        it, else a TensorFlow tensor or variable as it is and another tensor (a Keras variable) as its value."""
        if self._cast_floats or not tf.is_tensor(value):
            return to_graph_input(value)
        return value if isinstance(value, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(value)

    def __call__(self, *args):
        # ud.function's tensors go in with their own dtype, float64 and float16 too, as torch's and JAX's compiled
        # functions take them (they were cast to the dtype in force); NumPy arrays as ud.tensor converts them
        if not self._jit_compile and xla_checks.recording() and tracing_xla_graph():
            # called while an XLA graph is traced: a graph of its own would hold its checks as Asserts, which XLA
            # drops; its body traced into that graph makes them that graph's outputs
            with tracing_for_xla(True), python_randomness_guard(self.__name__, self._fn), self._options.recording():
                return self._fn(*args)
        statics = ()
        args, packing = _flattened(args)
        if self._static_python_values:
            static = [_is_static(a) for a in args]
            if any(static):
                statics = tuple((i, a) for i, (a, baked) in enumerate(zip(args, static)) if baked)
                args = [a for a, baked in zip(args, static) if not baked]
        tensors = [self._fed(a) for a in args]
        shapes = [t.shape for t in tensors]
        static_key = tuple((i, *_static_key(a)) for i, a in statics)
        structures = None if packing is None else tuple(None if e is None else _structure_key(e[0]) for e in packing)
        key = (tuple((shape.rank, t.dtype) for shape, t in zip(shapes, tensors)), static_key, structures)
        if any(shape.num_elements() == 0 for shape in shapes):
            # an empty input (a batch of 0 samples) gets a graph of its exact shapes: TensorFlow's kernels fail on an
            # empty batch in a graph traced for any size (a convolution returns its input's shape, the gradient of
            # max pooling aborts the process), while the ops see a known 0 while tracing and give PyTorch's results
            key = (tuple((tuple(shape), t.dtype) for shape, t in zip(shapes, tensors)), static_key, structures)
        if self._options.stale():  # an optimizer bound an option the graphs hold as a constant
            self._graphs.clear()
        exporting = tracing_export_graph()
        if exporting:
            # called while an export traces its graph (tracing_for_export): a graph of its own, kept by the
            # export alone (one a signature however often the export calls it), since a graph traced in training
            # names unidl's gradient rules (which the SavedModel cannot hold) and one traced for export lacks them
            # (a later training step would lose them)
            # keyed by this function's id and kept with it for as long as the export: an inline ud.function dropped
            # after its call freed its id for the next one, which was given the first one's graph (a SavedModel
            # silently computing something else than the forward)
            graphs = export_graphs()
            kept = graphs.get((id(self), key))
            if kept is None:
                kept = graphs[(id(self), key)] = (self, self._graph_for(key, statics, packing, keep=False))
            graph = kept[1]
        else:
            graph = self._graphs.get(key)
            if graph is None:
                with tracing_kept_graph():  # (called inside a shape check: the graph it keeps has the value rules)
                    try:
                        graph = self._graph_for(key, statics, packing)
                    except ShapeMismatchError:  # (raised while tracing for any sizes: a rank, a size known then)
                        # (sizes known: an eager call, or one in the exact trace of a function calling this one)
                        if not _exact_shapes(key) and all(t.shape.is_fully_defined() for t in tensors):
                            exact = tuple((tuple(t.shape), t.dtype) for t in tensors)
                            self._raise_exact_shape_error((exact, static_key, structures), statics, packing)
                        raise
        checks = self._checks.get(key) if self._checks and not exporting else None
        if self._written.get(key) and not exporting:  # (called in an XLA graph: its writes stand only where that
            xla_checks.note_written(self._written[key])  # graph's checks before the call held, as eagerly)
        if not tf.executing_eagerly():
            _kept_by_the_graphs_tracing(graph)
        try:
            result = graph(*tensors)
        except tf.errors.InvalidArgumentError as error:  # an in-graph check (ops.check_index, ops.check_shape) failed
            marked = marked_error_from(error, escaped=True)
            if marked is None:
                if checks and tf.executing_eagerly():
                    exact = tuple((tuple(t.shape), t.dtype) for t in tensors)
                    self._raise_shape_check(checks, (exact, static_key, structures), statics, packing)
                raise
            raise marked from None
        return result if checks is None else _checked(result, checks)

    def _raise_shape_check(self, checks, exact_key, statics, packing) -> None:
        """Raise the ``ShapeMismatchError`` of a size check of an XLA graph that XLA failed to compile for sizes
        that do not fit (its shape inference refuses them before anything runs, before the check's flag is
        computed): the function traced again for the call's exact shapes in a graph that never runs (a shape
        check's, ``tracing_for_shapes``), where every size is known and its checks raise while tracing, in order,
        as eagerly; nothing if that trace raises no size error (another failure of XLA's stands). Nothing runs a
        second time, so no state is written twice. Only on XLA's failure."""
        if any(check.error_class is ShapeMismatchError for check in checks):
            self._raise_exact_shape_error(exact_key, statics, packing)

    def _raise_exact_shape_error(self, exact_key, statics, packing) -> None:
        """Raise the ``ShapeMismatchError`` that the function traced for the call's exact shapes (``exact_key``)
        raises while tracing, in a graph that never runs: the eager error, naming the input's sizes, where the trace
        for any sizes raised one naming ``(None, None, None)`` (a rank refused while tracing) or XLA failed to
        compile (``_raise_shape_check``). Nothing if that trace raises no size error (the caller's error stands).
        The function's Python runs once more for that trace (a side effect of the user's, such as appending to a
        list, happens twice on this error), as at any retrace; no graph of it runs and none is kept."""
        if self._plain is None:
            self._plain = GraphFunction(self._given_fn, device=self._device, name=self.__name__,
                                        cast_floats=self._cast_floats,
                                        static_python_values=self._static_python_values)
        try:
            with tracing_for_shapes():
                self._plain._graph_for(exact_key, statics, packing, keep=False)
        except ShapeMismatchError as error:
            raise error from None
        except Exception:  # (not a size error: the caller's error stands, XLA's own or the first trace's)
            return


def _checked(outputs, checks):
    """The user's result of an XLA graph's ``outputs`` (result, checks' report), after its value checks: called
    eagerly, the first failed one raised as the eager error; called while another graph is traced, handed to that
    graph (recorded where it is collected for XLA too, else an ``Assert`` each, as ``ops.check_values`` makes)."""
    result, report = outputs
    if tf.executing_eagerly():
        xla_checks.raise_failed(report, checks)
        return result
    handed = xla_checks.handed_on(report, checks)
    if xla_checks.recording():
        xla_checks.record_all(handed)
        return result
    asserts = [marked_check(condition, check.error_class, check.message, check_values, tf.int64)
               for condition, check, check_values in handed]
    with tf.control_dependencies(asserts):  # (the result depends on its checks, as a check_index's indices)
        return tf.nest.map_structure(lambda value: tf.identity(value) if isinstance(value, tf.Tensor) else value,
                                     result)
