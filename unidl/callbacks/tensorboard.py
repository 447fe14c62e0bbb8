"""``TensorBoard``: event files that TensorBoard reads, laid out as Keras lays them out.

Scalars go to ``log_dir/train`` and ``log_dir/validation`` under Keras's tag names ('epoch_loss',
'epoch_accuracy', 'epoch_learning_rate', 'batch_loss'), so runs from every backend, and from Keras
itself, overlay in one TensorBoard. Written with the ``tensorboard`` package's record writer and protos;
the model graph (``write_graph``) is the backend's (``Backend.model_graph``).
"""

from __future__ import annotations

import os
import time

import numpy as np

from unidl.callbacks.callback import Callback, unsupported
from unidl.distributed import process_group
from unidl.tracing import forward_binding_error, python_randomness_preserved


def _import_tensorboard():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as error:
        raise ImportError("ud.callbacks.TensorBoard needs the tensorboard package, which is not installed: "
                          "pip install 'unidl[tensorboard]' (or pip install tensorboard)") from error
    return RecordWriter, event_pb2, summary_pb2


class EventFile:
    """One ``events.out.tfevents.*`` file, written with the tensorboard package's record writer on a plain file:
    its ``EventFileWriter`` goes through ``tf.io.gfile`` and so imports TensorFlow wherever it is installed,
    which a torch or JAX run must not pay for (nor print TensorFlow's log lines)."""

    _count = 0  # files opened by this process: a name of its own for each, as TensorFlow's writer does

    def __init__(self, directory: str):
        import socket

        RecordWriter, event_pb2, _ = _import_tensorboard()
        os.makedirs(directory, exist_ok=True)
        EventFile._count += 1
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{EventFile._count}"
        self.path = os.path.join(directory, name)
        self._records = RecordWriter(open(self.path, "wb"))
        self.add_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class TensorBoard(Callback):
    """Log a ``fit`` run for TensorBoard (``tensorboard --logdir LOG_DIR``), as ``keras.callbacks.TensorBoard``.

    Every epoch, its logs are written at step ``epoch`` (from 0) as ``epoch_<name>``: the training values to
    ``log_dir/train`` ('epoch_loss', 'epoch_accuracy', and the learning rate as 'epoch_learning_rate'), the
    validation values ('val_loss', ...) to ``log_dir/validation`` under the same tags without 'val_', and
    there also as ``evaluation_<name>_vs_iterations`` at the global step.

    Arguments in ``keras.callbacks.TensorBoard``'s order; Keras's ``write_images``, ``write_steps_per_second``,
    ``profile_batch``, ``embeddings_freq`` and ``embeddings_metadata`` are accepted at their defaults only (another
    value is a ``ValueError`` naming it).

    Args:
        log_dir: the run's directory (created); one directory per run, as TensorBoard expects.
        histogram_freq: every this many epochs (0: never), a histogram of each parameter, tagged by its
            ``named_parameters()`` name with '/' between modules ('linear1/weight'), in ``log_dir/train``.
        update_freq: ``"epoch"`` (scalars once per epoch), ``"batch"`` (also after every batch), or an
            integer N (also after every N batches): the running means of the epoch so far as ``batch_<name>``
            at the global step (batches trained since the start of the run).
        write_graph: write the model graph for TensorBoard's Graphs tab, at the start of training, in
            ``log_dir/train``: the eval-mode forward on one training sample as the framework traces it (on
            torch, the TorchScript trace's ATen ops with each parameter under its ``state_dict()`` name; on
            jax, the primitives of the forward's jaxpr (``jax.make_jaxpr``), parameters named the same way;
            on tensorflow, and keras on TensorFlow, the ``tf.function`` graph, as Keras writes it; keras on
            torch or JAX as on torch or jax, the Keras variables' values traced through a
            ``keras.StatelessScope``). Where a backend gives no graph (``Backend.model_graph`` returns None),
            ``fit`` stops with a ``ValueError`` before the first step rather than leave it out. Off by
            default (Keras's default is on): the trace is one more pass over the forward at the start.
            ``fit`` traces ``model(x)``; a forward that needs more inputs (``forward(x, extra)``, trained by
            ``ud.train_step``'s ``step(x, y, extra)``) stops it with a ``GraphConstructError`` naming them,
            and its graph, with one input node each, is ``write_model_graph(model, x, extra)``'s.
    """

    def __init__(self, log_dir="logs", histogram_freq: int = 0, write_graph: bool = False, write_images: bool = False,
                 write_steps_per_second: bool = False, update_freq="epoch", profile_batch=0, embeddings_freq: int = 0,
                 embeddings_metadata=None):
        keras_only = {"write_images": False, "write_steps_per_second": False, "profile_batch": 0,
                      "embeddings_freq": 0, "embeddings_metadata": None}
        unsupported("TensorBoard", {"write_images": write_images, "write_steps_per_second": write_steps_per_second,
                                    "profile_batch": profile_batch, "embeddings_freq": embeddings_freq,
                                    "embeddings_metadata": embeddings_metadata}, keras_only,
                    "it writes scalars, weight histograms and the model graph")
        if not isinstance(histogram_freq, int) or isinstance(histogram_freq, bool) or histogram_freq < 0:
            raise ValueError(f"TensorBoard histogram_freq must be an integer >= 0 (0: no histograms), "
                             f"got {histogram_freq!r}")
        if update_freq == "batch":
            update_freq = 1
        if update_freq != "epoch" and (not isinstance(update_freq, int) or isinstance(update_freq, bool)
                                       or update_freq < 1):
            raise ValueError(f"TensorBoard update_freq must be 'epoch', 'batch' or an integer >= 1, "
                             f"got {update_freq!r}")
        _import_tensorboard()  # fail now, not after the first epoch
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq, self.update_freq = histogram_freq, update_freq
        self.write_graph = bool(write_graph)
        self._writers = {}
        self._batches = 0

    # ---- writing ---------------------------------------------------------------

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = EventFile(os.path.join(self.log_dir, name))
        return self._writers[name]

    def _write(self, writer_name: str, step: int, values) -> None:
        """One event holding ``values``: (tag, float) scalars and (tag, HistogramProto) histograms. In a
        data-parallel job only rank 0 writes (the values are already reduced across ranks)."""
        if not process_group.is_writer():
            return
        _, event_pb2, summary_pb2 = _import_tensorboard()
        summary = summary_pb2.Summary()
        for tag, value in values:
            if isinstance(value, summary_pb2.HistogramProto):
                summary.value.add(tag=tag, histo=value)
            else:
                summary.value.add(tag=tag, simple_value=float(value))
        if summary.value:
            self._writer(writer_name).add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                                summary=summary))

    @staticmethod
    def _histogram(values: np.ndarray):
        """``values`` as TensorBoard's HistogramProto (30 equal buckets over their range)."""
        _, _, summary_pb2 = _import_tensorboard()
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            values = np.zeros(1)
        counts, edges = np.histogram(values, bins=30)
        return summary_pb2.HistogramProto(min=float(values.min()), max=float(values.max()), num=float(values.size),
                                          sum=float(values.sum()), sum_squares=float(np.dot(values, values)),
                                          bucket_limit=[float(e) for e in edges[1:]],
                                          bucket=[float(c) for c in counts])

    @staticmethod
    def _scalars(logs) -> list:
        return [(key, value) for key, value in (logs or {}).items()
                if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)]

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    # ---- hooks ---------------------------------------------------------------

    def _global_step(self) -> int:
        trainer = self.trainer
        return int(trainer.global_step) if trainer is not None else self._batches

    def _write_model_graph(self) -> None:
        """The backend's graph of the model's eval-mode forward on one training sample's ``x``."""
        from unidl.metrics.probe import first_sample

        x, _ = first_sample(self.trainer.loader)
        self._write_graph_of(self.trainer.model, (x,), "fit traces model(x) on each batch's x alone")

    def write_model_graph(self, model, *inputs) -> None:
        """Write the graph of ``model``'s eval-mode forward on ``inputs`` (NumPy arrays or tensors, the forward's
        positional inputs: ``model(x, extra)``) to ``log_dir/train``, one input node each ('input', 'input_1',
        ...), as ``write_graph=True`` writes ``model(x)``'s in ``fit``: for a forward with more inputs than
        ``fit`` gives, trained by ``ud.train_step``'s ``step(x, y, extra)``. Only ``inputs``' shapes and dtypes
        are used (one sample is enough); the model's state is left as it was."""
        from unidl.tensors import to_numpy

        inputs = tuple(np.asarray(to_numpy(value)) for value in inputs)
        self._write_graph_of(model, inputs, "as given to write_model_graph")
        self._flush()

    def _write_graph_of(self, model, inputs: tuple, source: str) -> None:
        """The backend's graph of ``model``'s eval-mode forward on the NumPy ``inputs`` (from ``source``), or a
        ``GraphConstructError`` where the forward does not take them, or a ValueError where the backend gives
        no graph: never a graph of a forward other than the one asked for."""
        _, event_pb2, _ = _import_tensorboard()
        _check_forward_takes(model, inputs, source)
        was_training = model.training
        model.eval()  # nothing in the trace updates state (batch-norm statistics) or draws dropout masks
        try:
            with python_randomness_preserved():  # (nor from Python's random: a dynamic net's steps draw as without it)
                graph = model._backend.model_graph(model, inputs[0] if len(inputs) == 1 else inputs)
        finally:
            model.train(was_training)
        if graph is None:
            raise ValueError(f"TensorBoard(write_graph=True): the {model._backend.name} backend gives no model "
                             f"graph here (TensorBoard's Graphs tab reads a TensorFlow GraphDef, which this backend "
                             f"does not trace for {type(model).__name__}); pass write_graph=False")
        if process_group.is_writer():
            self._writer("train").add_event(event_pb2.Event(wall_time=time.time(), graph_def=graph))

    def on_train_begin(self, logs=None):
        if self.write_graph and self.trainer is not None:
            self._write_model_graph()
        if process_group.is_writer():
            os.makedirs(self.log_dir, exist_ok=True)
        self._batches = 0

    def on_batch_end(self, batch, logs=None):
        self._batches += 1
        if self.update_freq == "epoch" or self._global_step() % self.update_freq:
            return
        self._write("train", self._global_step(), [(f"batch_{key}", value) for key, value in self._scalars(logs)])

    def on_epoch_end(self, epoch, logs=None):
        scalars = self._scalars(logs)
        train = [(f"epoch_{'learning_rate' if key == 'lr' else key}", value)
                 for key, value in scalars if not key.startswith("val_")]
        if self.histogram_freq and epoch % self.histogram_freq == 0 and self.trainer is not None:
            model = self.trainer.model
            state = model.state_dict()
            train += [(name.replace(".", "/"), self._histogram(state[name]))
                      for name, _ in model.named_parameters() if name in state]
        self._write("train", epoch, train)
        validation = [(key[len("val_"):], value) for key, value in scalars if key.startswith("val_")]
        self._write("validation", epoch, [(f"epoch_{key}", value) for key, value in validation])
        self._write("validation", self._global_step(),
                    [(f"evaluation_{key}_vs_iterations", value) for key, value in validation])
        self._flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _check_forward_takes(model, inputs: tuple, source: str) -> None:
    """A ``GraphConstructError`` naming the forward's parameters where it cannot be called on ``inputs``, before
    any framework traces it (each would fail its own way, deep in its tracer), the same on every backend."""
    from unidl.errors import GraphConstructError

    mismatch = forward_binding_error(model, inputs)
    if mismatch is not None:
        raise GraphConstructError(
            f"TensorBoard model graph: {mismatch[0]} cannot be called on {len(inputs)} input"
            f"{'s' if len(inputs) != 1 else ''} ({source}): {mismatch[1]}. Give the forward's extra inputs defaults, "
            f"or write its graph on all of them with TensorBoard.write_model_graph(model, x, extra, ...) (or pass "
            f"write_graph=False)") from None
