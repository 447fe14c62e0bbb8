"""Gradient accumulation of a layer that the forward uses at some micro-steps of a window only, under mixed
precision: PyTorch's rule (``.grad`` sums the window, so ``step()`` updates a parameter used at any micro-step,
its momentum and Adam's step count included, and skips one used at none), against a plain torch loop with
``torch.autocast`` and, for float16, ``torch.amp.GradScaler``. float32's windows: tests/test_dynamic_forward.py."""

import numpy as np
import torch

import unidl as ud
from tests.test_dynamic_forward import DynamicNet, X, Y, _TorchDynamicNet
from unidl.testing import max_relative_difference

# windows of 2 micro-steps: the middle layer used at the first micro-step only, at the last only, at none
USES = [True, False, False, True, False, False]
_OPTIMIZERS = {"sgd": ("SGD", dict(lr=0.05, momentum=0.9), "momentum_buffer"),
               "adam": ("Adam", dict(lr=0.01), "exp_avg")}
_AUTOCAST = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
#: float16's first loss scale: no overflow of these gradients on any backend (at GradScaler's 2 ** 16 the first
#: window's summed gradient of the last layer is near float16's largest, where the frameworks' roundings differ)
INIT_SCALE = 2.0 ** 10
#: the largest relative difference from torch's loop: float32's, and the compute precisions' rounding (the middle
#: layer's update lost, or made where torch's is skipped, is 30 to 100 percent of its change)
BOUNDS = {"32": 1e-5, "bf16-mixed": 3e-2, "16-mixed": 3e-3}


class BatchDepthNet(DynamicNet):
    """DynamicNet whose depth, where no step input gives it, is the batch's: the middle layer once for a batch of
    8 rows, else not at all (a shape, known where a step is traced: Keras-on-JAX traces a step input's value, which
    a Python loop cannot read; TensorFlow's graph relaxes the shape, so there the depth is a step input)."""

    def forward(self, x, depth=None):
        return super().forward(x, int(x.shape[0] == 8) if depth is None else depth)


def partial_use_differences(precision, kind, depth_input=True):
    """``{name: max relative difference}`` between ``BatchDepthNet`` trained on the backend in use by
    ``train_step(accumulate=2, precision=precision)`` over ``USES`` (batches of 8 rows; of 4 where the depth is
    the batch's and the middle layer unused) and plain PyTorch (``(loss / 2).backward()`` per micro-step under
    ``torch.autocast``, float16's loss scaled by ``torch.amp.GradScaler``; ``step()`` and
    ``zero_grad(set_to_none=True)`` at every second): each parameter's change from its start; each optimizer slot
    (``"slot:<parameter>"``: SGD's momentum buffer, Adam's first moment); ``"has_gradient"``, 0 where the window's
    flags in the middle of each window (its checkpointed state) say which ``.grad`` torch has, else 1; and with
    Adam ``"param_steps"``, 0 where the per-parameter step counts are torch's ``state[p]["step"]``, else 1.
    ``depth_input``: the depth a step input, else the batch's size."""
    name, options, slot = _OPTIMIZERS[kind]
    ud.manual_seed(0)
    model = BatchDepthNet()
    start = {key: np.array(ud.to_numpy(value)) for key, value in model.state_dict().items()}
    net = _TorchDynamicNet(start)
    expected_optimizer = getattr(torch.optim, name)(net.parameters(), **options)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, enabled=precision == "16-mixed")
    optimizer = getattr(ud.optim, name)(model.parameters(), **options)
    setting = ud.Precision(precision, init_scale=INIT_SCALE) if precision == "16-mixed" else precision
    step = ud.train_step(model, ud.nn.MSELoss(), optimizer, accumulate=2, precision=setting)
    flags = []
    for index, use in enumerate(USES):
        x, y = (X[:8], Y[:8]) if use else (X[8:], Y[8:]) if depth_input else (X[8:12], Y[8:12])
        step(x, y, *([int(use)] if depth_input else []))
        with torch.autocast("cpu", dtype=_AUTOCAST[precision], enabled=precision != "32"):
            outputs = net(torch.tensor(x), int(use))
        scaler.scale(torch.nn.functional.mse_loss(outputs.float(), torch.tensor(y)) / 2).backward()
        if index % 2 == 0:  # mid-window
            flags.append(optimizer.state_dict()["accumulation"]["has_gradient"] ==
                         [p.grad is not None for p in net.parameters()])
        else:
            scaler.step(expected_optimizer)
            scaler.update()
            expected_optimizer.zero_grad(set_to_none=True)
    expected, state = net.state_dict(), optimizer.state_dict()
    differences = {"has_gradient": int(not all(flags))}
    for (key, value), parameter, slots in zip(model.state_dict().items(), net.parameters(), state["slots"]):
        differences[key] = max_relative_difference(np.asarray(ud.to_numpy(value)) - start[key],
                                                   expected[key].numpy() - start[key])
        differences[f"slot:{key}"] = max_relative_difference(slots[slot],
                                                             expected_optimizer.state[parameter][slot].numpy())
    if kind == "adam":
        differences["param_steps"] = int(state["param_steps"] != [int(expected_optimizer.state[p]["step"])
                                                                  for p in net.parameters()])
    return differences


def test_a_layer_used_at_some_micro_steps_of_a_float16_window_updates_as_torch(backend):
    """A layer used at a window's first micro-step only, at its last only, and at none, in a compiled float16
    step (its loss-scaled window): updated with its momentum in the first two windows and left alone in the
    third, as torch's GradScaler loop; the depth a step input (a graph input on TensorFlow). Keras-on-JAX, in bf16
    and float16: tests/backends/test_keras_jax.py, the depth read from the batch's size."""
    differences = partial_use_differences("16-mixed", "sgd")
    assert all(difference < BOUNDS["16-mixed"] for difference in differences.values()), differences
