"""Where the jax two-layer train step spends more than the hand-written ``jax.jit`` + ``optax`` one, in CPU time
(``python -m benchmarks.jax_step_ab``): blocks of steps alternated in one process between ``ud.train_step``, the
native step, and the native step with unidl's non-finite guard added by hand (the check of ``all_finite``, every
update selected by its flag, the flag read on the host as ``TrainStep`` reads it), so that the guard's cost and the
rest (Python, dispatch) are told apart, and the same guard with the update under one ``lax.cond`` on the flag; and
the arguments each compiled program is called with and keeps after ``jax.jit``'s pruning (``lower``). Two sides
split unidl's own step: the same step traced with the guard's check replaced by True (XLA then drops the check and
every select: what the guard costs inside unidl's program), and unidl's compiled program called bare (its arrays in,
its outputs written back, the flag read: no ``TrainStep``/``StatefulJit`` Python, what that Python costs).
Information for benchmarks/RESULTS.md; no target."""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.harness import batch_arrays, unidl_model  # noqa: E402
from benchmarks.native_jax import jax_native_step  # noqa: E402


def _guarded_native(module, as_cond: bool = False):
    """The native step with unidl's guard: ``(step, params, opt_state)``, ``step`` returning the flag too; the
    update selected against the old values by the flag, or with ``as_cond`` run under ``lax.cond`` on it."""
    import jax
    import jax.numpy as jnp
    import optax

    from benchmarks.harness import LR, MOMENTUM
    from unidl.backends.jax.optimizer import all_finite

    params = [jnp.asarray(v) for v in module.state_dict().values()]
    transform = optax.sgd(LR, momentum=MOMENTUM)

    def loss_of(p, x, y):
        return jnp.mean(jnp.square(jax.nn.relu(x @ p[0].T + p[1]) @ p[2].T + p[3] - y))

    def step(p, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_of)(p, x, y)
        finite = all_finite([loss, *grads])
        if as_cond:
            def updated(state):
                updates, new_state = transform.update(grads, state[1], state[0])
                return optax.apply_updates(state[0], updates), new_state

            return *jax.lax.cond(finite, updated, lambda state: state, (p, opt_state)), loss, finite
        updates, new_state = transform.update(grads, opt_state, p)
        kept = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                      (optax.apply_updates(p, updates), new_state), (p, opt_state))
        return *kept, loss, finite

    return jax.jit(step, donate_argnums=(0, 1)), params, transform.init(params)


def _unguarded_step(x, y):
    """A second ``ud.train_step`` of the two-layer net, traced (at its first call) with the guard's check
    ``all_finite`` replaced by a constant True: the step without the check and the selects."""
    import jax.numpy as jnp

    import unidl as ud
    from unidl.backends.jax import optimizer as jax_optimizer

    module, loss_fn, optimizer = unidl_model("two_layer")
    step = ud.train_step(module, loss_fn, optimizer)
    checked = jax_optimizer.all_finite
    jax_optimizer.all_finite = lambda values: jnp.asarray(True)
    try:
        step(x, y)
    finally:
        jax_optimizer.all_finite = checked
    return step


def _bare_program(step, optimizer, x, y):
    """unidl's compiled program of ``step`` called without its Python: the variables' arrays in, the written values
    stored back (``_write_back``), the guard's flag read as ``TrainStep`` reads it."""
    import numpy as np

    from unidl.backends.jax.function import _write_back

    step(x, y)  # (compiled at its first call)
    stateful = step._run._compiled
    (entry,) = stateful._compiled.values()
    variables, function, finite = stateful._variables(), entry[1], optimizer.native.finite

    def run():
        outputs = function([v._value for v in entry[3]], [v._value for v in entry[4]], (x, y))
        _write_back(outputs, variables)
        return bool(np.asarray(finite._value))

    return run


def _argument_counts(step, native, native_args) -> dict:
    """Arrays passed to each compiled program per step and those its executable keeps (unused ones pruned)."""
    import jax

    stateful = step._run._compiled  # (the ``StatefulJit`` of ``compile_step``)
    (entry,) = stateful._compiled.values()
    values = ([v._value for v in entry[3]], [v._value for v in entry[4]])
    counts = {}
    for name, function, args in (("unidl", entry[1], (*values, native_args[2:])), ("native", native, native_args)):
        compiled = function.lower(*args).compile()
        passed = len(jax.tree_util.tree_leaves(args))
        counts[name] = (passed, _entry_parameters(compiled.as_text()))
    return counts


def _entry_parameters(hlo: str) -> int:
    """The number of parameters of the entry computation of an HLO module's text."""
    entry = hlo[hlo.index("\nENTRY"):]
    return entry[:entry.index("\n}")].count(" parameter(")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=15, help="blocks per side (default 15)")
    parser.add_argument("--steps", type=int, default=200, help="steps per block (default 200)")
    options = parser.parse_args(argv)
    import jax
    import numpy as np

    import unidl as ud

    with ud.use_backend("jax"), ud.use_device("cpu"):
        module, loss_fn, optimizer = unidl_model("two_layer")
        step = ud.train_step(module, loss_fn, optimizer)
        x, y = (ud.tensor(a) for a in batch_arrays("two_layer"))
        native, params, opt_state = jax_native_step("two_layer", module.state_dict())
        box = {"native": [native, params, opt_state]}
        for name, as_cond in (("native + guard", False), ("native + guard as cond", True)):
            box[name] = list(_guarded_native(module, as_cond))

        def unidl_step():
            return jax.block_until_ready(step(x, y))

        def native_step():
            state = box["native"]
            state[1], state[2], loss = native(*state[1:], x, y)
            return jax.block_until_ready(loss)

        def guarded_step(name):
            state = box[name]
            state[1], state[2], loss, finite = state[0](*state[1:], x, y)
            if not bool(np.asarray(finite)):
                raise FloatingPointError("the guarded native step met a non-finite value")
            return jax.block_until_ready(loss)

        unguarded, bare = _unguarded_step(x, y), _bare_program(step, optimizer, x, y)
        sides = {"unidl": unidl_step, "unidl, guard traced out": lambda: jax.block_until_ready(unguarded(x, y)),
                 "unidl's program, bare": bare, "native": native_step,
                 **{name: functools.partial(guarded_step, name) for name in box if name != "native"}}
        for side in sides.values():
            for _ in range(20):
                side()
        counts = _argument_counts(step, native, (*box["native"][1:], x, y))
        times = {name: [] for name in sides}
        for _ in range(options.blocks):
            for name, side in sides.items():
                started = time.process_time()
                for _ in range(options.steps):
                    side()
                times[name].append((time.process_time() - started) / options.steps * 1e6)
    for name, (passed, kept) in counts.items():
        print(f"arguments of the {name} program: {passed} passed, {kept} kept by its executable")
    for name, values in times.items():
        quartiles = statistics.quantiles(values, n=4)
        print(f"{name:>22}: {statistics.median(values):7.1f} us CPU a step (quartiles {quartiles[0]:.1f}-"
              f"{quartiles[2]:.1f})")
    for name in [name for name in times if name != "native"]:
        ratios = [a / b for a, b in zip(times[name], times["native"])]
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{name}/native: {statistics.median(ratios):.3f} (block quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f})")
    for name, base in (("unidl", "native + guard"), ("unidl", "unidl, guard traced out"),
                       ("unidl", "unidl's program, bare")):
        ratios = [a / b for a, b in zip(times[name], times[base])]
        print(f"{name}/({base}): {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
