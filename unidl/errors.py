"""Every error unidl raises on purpose, in one place.

Each message names what was given and what would have been valid, so that a
user can fix the call without reading unidl's source.
"""

import codecs
import re


class UnidlError(Exception):
    """Base class of the errors that unidl raises itself."""


class ConfigurationError(UnidlError, ValueError):
    """A setting that holds a value unidl cannot use: an environment variable (``UNIDL_NUM_THREADS=abc``), or a
    command's option that fits nothing on this machine; the message names the setting and what would be valid."""


class UnknownBackendError(UnidlError, ValueError):
    """A backend name that unidl does not know."""


class BackendNotInstalledError(UnidlError, ImportError):
    """A known backend whose framework is not installed."""


class BackendMismatchError(UnidlError, RuntimeError):
    """An object created under one backend used under another."""


class DeviceUnavailableError(UnidlError, RuntimeError):
    """A device that the backend cannot see, or a malformed device name."""


class ShapeMismatchError(UnidlError, ValueError):
    """An input whose shape does not fit the layer or loss it is given to; raised eagerly and from inside
    compiled graphs where a size is known only when the graph runs (the same message either way)."""

    #: the marker an in-graph check puts in the framework's error, which ``marked_error_from`` recognises
    marker = "[unidl.ShapeMismatchError] "


class AxisOutOfRangeError(ShapeMismatchError, IndexError):
    """An axis (``dim``, ``axis``) outside the tensor's axes, from -rank to rank - 1: PyTorch's "Dimension out of
    range" ``IndexError``, a ``ShapeMismatchError`` too (``Flatten``'s); the other frameworks wrapped some silently
    (``% rank``) and raised errors of their own for the rest."""


class LossShapeError(ShapeMismatchError, RuntimeError):
    """Operands of a loss whose ranks or sizes do not fit where PyTorch raises ``RuntimeError``
    (``linear_cross_entropy``'s input, weights and bias; ``triplet_margin_with_distance_loss``'s ranks): a
    ``ShapeMismatchError`` too, as unidl's other shape errors, so that either ``except`` catches it."""


class InvalidOptionError(UnidlError, ValueError, RuntimeError):
    """A loss's option PyTorch refuses with ``RuntimeError`` (``LinearCrossEntropyLoss``'s ``label_smoothing``
    outside [0, 1], an ``ignore_index`` beside class probabilities): a ``ValueError`` too, as unidl's other argument
    errors."""


class UnsupportedOptionError(UnidlError, NotImplementedError):
    """An option of PyTorch's that unidl cannot honour on every backend (``LinearCrossEntropyLoss``'s chunking
    ``options``): refused on every backend, naming the option and what to give instead, never silently ignored."""


class PaddingLengthError(UnidlError, ValueError, RuntimeError):
    """A pad of a length PyTorch refuses: odd (its amounts are (before, after) pairs), or, for modes other than
    'constant', not 2, 4 or 6; PyTorch's ``RuntimeError`` (``NotImplementedError`` for the second), a
    ``ValueError`` too, as unidl's other argument errors."""


class PoolPaddingError(UnidlError, ValueError, RuntimeError):
    """A pooling padding over half the kernel, which PyTorch refuses with ``RuntimeError`` when the pool runs (a
    window could then hold padding alone): raised by the layers' constructors and the ``ud.ops`` pools alike, on
    every backend and mode; a ``ValueError`` too, as unidl's other argument errors. (A negative padding is the
    ``ValueError`` of every size argument, ``unidl.arguments.int_or_ints``, naming the op and the argument.)"""


class ModelPlacementError(UnidlError, RuntimeError):
    """A built module asked to move to another device or dtype (``module.to("cuda")``, ``module.double()``):
    unidl places and types a model's variables when it builds them, on every backend."""


class DtypeMismatchError(UnidlError, TypeError):
    """An input whose dtype does not fit the layer or loss it is given to (integers to a float layer, float
    class labels), or a value that is not numbers at all (``ud.tensor('abc')``)."""


class IndexOutOfRangeError(UnidlError, IndexError, ValueError):
    """An integer index outside its valid range: an ``Embedding``'s token id, a class label, a ``take``/``gather``
    index; raised eagerly and from inside compiled graphs (the message names what was indexed and the range)."""

    #: the marker an in-graph check puts in the framework's error, which ``marked_error_from`` recognises
    marker = "[unidl.IndexOutOfRangeError] "


class ValueOutOfRangeError(UnidlError, ValueError):
    """A value outside the range an op takes (``BCELoss``'s probabilities outside [0, 1]); raised eagerly and from
    inside compiled graphs (the message names what was checked, the range and how many values lie outside)."""

    #: the marker an in-graph check puts in the framework's error, which ``marked_error_from`` recognises
    marker = "[unidl.ValueOutOfRangeError] "


#: where an in-graph check's message ends inside the framework's error text (what follows is the framework's)
MARKER_END = " [unidl.end]"
_MARKED = (IndexOutOfRangeError, ShapeMismatchError, ValueOutOfRangeError)  # (and DistributedError, below)


#: the values an assertion printed after a marked template's end: "...[unidl.end]] [2] [5]"
_PRINTED_VALUES = re.compile(r"\]((?: \[-?\d+\])*)")


def marked_error_from(error, escaped: bool = False) -> "UnidlError | None":
    """The unidl error behind a framework's runtime error raised by an in-graph check (its message carries an
    error class's ``marker``, then the message, then ``MARKER_END`` or the end of the line), or None for any
    other error. A message that is a template, its ``{}`` followed after ``MARKER_END`` by the values the check
    printed (TensorFlow's ``Assert``: "... [unidl.end]] [2] [5]"), is filled with them. ``escaped``: the
    framework printed the message with C escapes (TensorFlow's ``Assert`` prints a quote as \\'), which are
    undone."""
    text = str(error)
    for error_class in _MARKED:
        start = text.find(error_class.marker)
        if start >= 0:
            message = text[start + len(error_class.marker):]
            end = message.find(MARKER_END)
            printed = _PRINTED_VALUES.match(message, end + len(MARKER_END)) if end >= 0 else None
            message = message[:end] if end >= 0 else message.splitlines()[0]
            for value in re.findall(r"-?\d+", printed.group(1)) if printed is not None else ():
                message = message.replace("{}", value, 1)
            if escaped and "\\" in message:
                message = codecs.escape_decode(message.encode("utf-8"))[0].decode("utf-8", "replace")
            return error_class(message.strip().removesuffix(" (`check` failed)"))
    return None


index_error_from = marked_error_from  # the name callers used when only index checks were marked


class StateDictError(UnidlError, KeyError, RuntimeError):
    """A state dict with missing keys, unexpected keys or wrongly shaped values: a ``KeyError``, and a
    ``RuntimeError`` as ``torch.nn.Module.load_state_dict`` raises (``except RuntimeError`` catches it too)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class BackendInterfaceError(UnidlError, NotImplementedError):
    """A backend that does not provide a function of the backend interface."""


class CorruptFileError(UnidlError, ValueError):
    """A weights or checkpoint file that is truncated, malformed or not what its header claims."""


class UnsafeFormatError(UnidlError, ValueError):
    """A file whose format can run code when read (a pickle), refused unless the caller opts in."""


class MissingKeyError(UnidlError, KeyError, AttributeError):
    """A key a ``ParameterDict`` does not hold: a ``KeyError``, as a dict's, and the ``AttributeError`` that
    torch.nn's ``ParameterDict`` raises (it looks the key up as an attribute), so that code catching either works."""


class UnknownModelError(UnidlError, LookupError):
    """A saved model whose class is not registered with ``unidl.register_model``."""


class NonFiniteLossError(UnidlError, FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the epoch and step."""


class NothingToTrainError(UnidlError, RuntimeError):
    """A training step with nothing trainable: every parameter of the model (and loss) is frozen (``requires_grad``
    False). PyTorch's ``backward()`` raises there; the other frameworks would run a step that
    changes nothing. A ``RuntimeError`` as PyTorch's."""


class UnsupportedFlagError(UnidlError, TypeError, AttributeError):
    """A framework's own flag that unidl does not read, set on a parameter or module (Keras's and TensorFlow's
    ``trainable``): refused on every backend, never ignored; the message names PyTorch's ``requires_grad_``, which
    unidl honours everywhere. An ``AttributeError`` too, as TensorFlow's variables refuse that assignment."""


class ExportFormatError(UnidlError, ValueError):
    """An export format that the model's backend cannot write; the message lists those it can."""


class ExportInputError(UnidlError, TypeError):
    """A model whose forward an exported program cannot be: one that needs more inputs than the one (``x``) a program
    takes (a ``TypeError`` as Python's for a call that lacks an argument), or writes its state in eval mode."""


class GraphConstructError(UnidlError, TypeError):
    """A forward or function that a graph cannot be built from: Python that a static graph cannot express inside
    ``ud.function`` or a compiled train step (e.g. ``bool()`` of a symbolic tensor), a forward that loops over a
    step input's value where the framework traces every input (Keras on JAX), or a model graph that cannot call
    the forward on the inputs it has (``TensorBoard(write_graph=True)``)."""


class RetraceWarning(UserWarning):
    """A compiled function met inputs of a new rank or dtype and was traced again."""


class ResumeMismatchError(UnidlError, ValueError):
    """A run resumed from a checkpoint with a different loss (class or settings), model or optimizer class than it
    was saved with."""


class LossScaleMismatchError(UnidlError, ValueError):
    """A float16 train step whose loss-scaling settings differ from those of the loss scale its optimizer already
    has (unidl keeps one loss scale per optimizer, as a torch loop keeps one ``GradScaler``)."""


class AccumulationMismatchError(UnidlError, ValueError):
    """A train step whose ``accumulate`` (or precision) differs from that of the accumulation window its optimizer
    has in progress (unidl keeps one window per optimizer, as torch accumulates in the parameters' ``.grad``)."""


class CheckpointStateError(StateDictError, ValueError):
    """Optimizer, loader, scheduler or callback state in a checkpoint that does not fit the object given."""


class DataLoaderError(UnidlError, RuntimeError):
    """A DataLoader worker that raised, died or overran the loader's ``timeout``; the message names the
    worker, the batch and sample, and carries the worker's own traceback."""


class DistributedError(UnidlError, RuntimeError):
    """A data-parallel run that cannot start or did not finish: a rank that raised or died (named), a port in
    use, a backend without a distributed engine, an unusable environment, a batch too small for the devices of
    one process (checked inside a compiled step where its size is known only when it runs)."""

    #: the marker an in-graph check puts in the framework's error, which ``marked_error_from`` recognises
    marker = "[unidl.DistributedError] "


_MARKED += (DistributedError,)


class DistributedNotInitializedError(DistributedError):
    """A ``unidl.distributed`` call that needs the process group before ``unidl.distributed.init()``."""
