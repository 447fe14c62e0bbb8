"""Keras's variables as values: gradients and compiled functions on a host that keeps state functional.

On Keras-on-JAX a Keras variable holds an immutable array, so the host's transformations (``jax.grad``,
``jax.jit``) cannot see it change. Here its value goes in as an argument and is read through a
``keras.StatelessScope`` (what Keras's own JAX trainer does), and the values Keras assigns inside the
scope (batch norm statistics, the dropout seed) come out and are written to the variables after the
call. The host differentiates and compiles (``value_and_grad_of_values``, ``jit_of_values``).
"""

from __future__ import annotations

import contextlib

import keras
from keras.src.backend.common.stateless_scope import in_stateless_scope  # (not re-exported by Keras)
from keras.src.backend.common.variables import initialize_all_variables  # (nor this)

from unidl.errors import GraphConstructError
from unidl.optim.param_groups import ConstantOptions
from unidl.tracing import python_randomness_preserved, warn_running_eagerly


class _RecordingScope(keras.StatelessScope):
    """A ``StatelessScope`` that remembers the variables read and assigned inside it; a variable it does not
    map is read from the scope around it (a gradient inside a compiled function sees the traced value).

    It is entered inside the host's trace, so it leaves the variables created in it uninitialized (Keras would
    initialize them as it exits, inside the trace: their values would be leaked tracers); ``_initialize_created``
    gives them their values once the trace is over. Such a variable is the backend's dropout generator, made at
    its first use (``ud.ops.dropout`` without a generator, as torch's global generator is there from the start)."""

    def __init__(self, variables, values):
        super().__init__(state_mapping=list(zip(variables, values)), initialize_variables=False)
        self.read: dict = {}
        self.assigned: dict = {}

    def get_current_value(self, variable):
        self.read[id(variable)] = variable
        value = super().get_current_value(variable)
        if value is None and getattr(self, "original_scope", None) is not None:
            value = self.original_scope.get_current_value(variable)
        return value

    def add_update(self, update):
        self.assigned[id(update[0])] = update[0]
        super().add_update(update)


@contextlib.contextmanager
def recording_scope():
    """A ``_RecordingScope`` mapping no variable: the Keras variables read and assigned inside it are noted, and an
    assignment is not made (an abstract pass's would write a tracer); the variables created inside it get their
    values as it exits."""
    try:
        with _RecordingScope([], []) as scope:
            yield scope
    finally:
        _initialize_created()


def _initialize_created() -> None:
    """Give the Keras variables created in a ``_RecordingScope`` their initial values, now, outside the host's trace
    (as Keras does when its outermost ``StatelessScope`` exits); inside another scope, that one's exit does."""
    if not in_stateless_scope():
        initialize_all_variables()


def _created_in_trace(variable) -> bool:
    """Whether ``variable`` was created inside the trace in progress: Keras leaves a variable created in a
    ``StatelessScope`` without a value until ``_initialize_created`` gives it one."""
    return getattr(variable, "_value", True) is None


def _values_of_variables(result):
    """``result`` with each Keras variable in it replaced by its value in the scope in force: a compiled function
    returns arrays, as torch's returns a parameter as the tensor it is (the host's transformations take no
    variable), and the variable is read in the scope, so that the trace threads it."""
    return keras.tree.map_structure(lambda leaf: leaf.value if isinstance(leaf, keras.Variable) else leaf, result)


def value_and_grad(host, f, args, argnums, variables):
    """``(f(*args), grads)`` with respect to ``args[i]`` for each ``i`` of ``argnums`` (tensors; zeros for one ``f``
    does not use, as the host gives them), then to the Keras ``variables`` (None for one ``f`` does not use), from
    one transformation of the host: one forward and one backward pass. The Keras variables ``f`` assigns (a
    BatchNorm's running statistics) keep their new values afterwards, as they would eagerly: assigned inside the
    host's transformation, they leaked its tracers (inside ``ud.function`` on Keras-on-JAX, an
    ``UnexpectedTracerError``)."""
    count = len(argnums)

    def call(values):
        substituted = list(args)
        for index, value in zip(argnums, values[:count]):
            substituted[index] = value
        return f(*substituted)

    # (the variables not differentiated: f reads them from the scope around, or their own values)
    value, grads = _differentiated(host, [args[i] for i in argnums] + [v.value for v in variables],
                                   lambda values: (variables, values[count:]), call)
    return value, ([keras.ops.zeros_like(args[i]) if grad is None else grad for i, grad in zip(argnums, grads)]
                   + list(grads[count:]))


def _differentiated(host, targets, mapped, call):
    """``(call(values), grads)`` with respect to ``targets`` (the host's ``value_and_grad_of_values``), ``call`` run
    inside a ``_RecordingScope`` of ``mapped(values)`` (variables and the values they read); the Keras variables it
    assigns get their new values after the transformation, which they would otherwise leak."""
    assigned = []

    def pure(*values):
        with _RecordingScope(*mapped(values)) as scope:
            value = call(values)
        assigned[:] = list(scope.assigned.values())
        return value, [keras.StatelessScope.get_current_value(scope, v) for v in assigned]

    try:
        (value, updates), grads = host.value_and_grad_of_values(pure, targets)
    finally:
        _initialize_created()  # (before the assignments below: a variable created in ``f`` may be among them)
    for variable, new in zip(assigned, updates):
        variable.assign(new)
    return value, grads


class _UnmappedVariables(Exception):
    """Raised out of a trace that read or assigned Keras variables the compiled function does not take as values
    (they would be baked in as constants: stale weights); ``StatelessFunction`` adds them and compiles again."""

    def __init__(self, variables):
        super().__init__(f"{len(variables)} Keras variables outside the compiled function's values")
        self.variables = variables


class StatelessFunction:
    """``ud.function`` on a functional host: ``fn`` compiled by the host over the values of the Keras variables
    it reads or assigns, which one abstract trace on the first call finds; those it assigns are written back
    after each call. A later trace (new shapes) that reaches variables the first did not is compiled again over
    them all, so that no variable is ever baked in as a constant. Python control flow on a tensor's value cannot be traced: such a function runs eagerly,
    with one warning (the jax backend's rule for ``ud.function``). Array arguments are traced values; the others
    (Python numbers, bools, None, strings, functions) are baked in, each new value tracing again (the host's
    ``jit_of_values``), as on every backend."""

    def __init__(self, host, fn, name: str):
        self._host, self._fn, self.__name__ = host, fn, name
        self._compiled, self._variables, self._eager = None, None, False
        self._earlier_traces = 0  # traces of the functions compiled before new variables were found
        self._options = ConstantOptions()  # the optimizers whose options the trace holds as constants

    @property
    def trace_count(self):
        return None if self._eager or self._compiled is None else self._earlier_traces + self._compiled.trace_count

    def _find_variables(self, args) -> list:
        scopes = []

        def probe(*call_args):
            with _RecordingScope([], []) as scope:
                _values_of_variables(self._fn(*call_args))
            scopes.append(scope)

        try:
            with python_randomness_preserved():  # (a probe, not a call: it draws nothing the call would)
                self._host.eval_shape(probe, *args)
        finally:
            _initialize_created()
        return list({**scopes[0].read, **scopes[0].assigned}.values())

    def _pure(self, values, *args):
        with _RecordingScope(self._variables, values) as scope, self._options.recording():
            result = _values_of_variables(self._fn(*args))
        known = {id(variable) for variable in self._variables}
        # (a variable created in this trace, a module built inside the function, has no value until the trace is
        # over: its initial value is a constant of the trace, as a module built at each call is in torch)
        missed = [variable for key, variable in {**scope.read, **scope.assigned}.items()
                  if key not in known and not _created_in_trace(variable)]
        if missed:
            raise _UnmappedVariables(missed)
        updates = {index: keras.StatelessScope.get_current_value(scope, variable)
                   for index, variable in enumerate(self._variables) if id(variable) in scope.assigned}
        return result, updates

    def _run_compiled(self, args):
        """The compiled call, ``((result, updates), check)`` (``check()`` raises for a value check that failed:
        after the updates are written, as the jax backend's compiled functions keep them); a trace that reaches new
        variables compiles again over them too (once per call: a function that reaches new ones at every trace,
        such as one creating variables, is an error)."""
        if self._options.stale():  # an optimizer bound an option the trace holds as a constant
            if self._compiled is not None:
                self._earlier_traces += self._compiled.trace_count
                self._compiled = None
        for attempt in range(2):
            if self._compiled is None:
                self._variables = self._variables or self._find_variables(args)
                self._compiled = self._host.jit_of_values(self._pure, self.__name__, self._fn)
            compiled, traces = self._compiled, self._compiled.trace_count
            try:
                return compiled.call_unchecked([v.value for v in self._variables], *args)
            except _UnmappedVariables as miss:
                if attempt:
                    raise GraphConstructError(
                        f"ud.function {self.__name__!r} on Keras-on-{self._host.name} reaches new Keras variables "
                        f"each time it is traced ({[v.path for v in miss.variables]}); create layers and variables "
                        f"outside the function and call them inside it") from None
                self._earlier_traces += self._compiled.trace_count
                self._variables = list({id(v): v for v in [*self._variables, *miss.variables]}.values())
                self._compiled = None
            finally:
                if compiled.trace_count != traces:  # traced: the variables it created get their values now
                    _initialize_created()

    def __call__(self, *args):
        if not self._eager:
            try:
                (result, updates), check = self._run_compiled(args)
                for index, value in updates.items():
                    self._variables[index].assign(value)
                check()  # (a label out of range: unidl's error, the writes of the call kept as on every backend)
                return result
            except self._host.tracer_value_errors as error:
                self._eager = True
                warn_running_eagerly(self.__name__, f"Keras-on-{self._host.name}", "the host", error)
        return self._fn(*args)
