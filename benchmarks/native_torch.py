"""unidl's train step on torch against the same network and SGD step written with ``torch.nn``."""

from __future__ import annotations

from benchmarks.harness import (LR, MOMENTUM, TWO_LAYER, Row, Settings, batch_arrays, train_step_rows,
                                unidl_model)


def torch_native_model(model: str, state: dict):
    """The same network written with ``torch.nn``, holding the unidl model's weights."""
    import torch
    from torch import nn

    if model == "cnn":
        native = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                               nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
                               nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    else:
        native = nn.Sequential(nn.Linear(TWO_LAYER["D_in"], TWO_LAYER["H"]), nn.ReLU(),
                               nn.Linear(TWO_LAYER["H"], TWO_LAYER["D_out"]))
    with torch.no_grad():
        for parameter, value in zip(native.parameters(), state.values(), strict=True):
            parameter.copy_(torch.from_numpy(value))
    return native


def torch_sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def native_sgd_step(native, loss_fn, x, y, sync=lambda: None):
    """One training step of the ``torch.nn`` module ``native`` on ``(x, y)`` as a user writes it
    (``torch.optim.SGD`` with momentum, ``zero_grad``, ``backward``, ``step``): a zero-argument callable that
    returns the loss, detached, once ``sync()`` has waited for the device."""
    import torch

    optimizer = torch.optim.SGD(native.parameters(), lr=LR, momentum=MOMENTUM)

    def native_step():
        optimizer.zero_grad()
        loss = loss_fn(native(x), y)
        loss.backward()
        optimizer.step()
        sync()
        return loss.detach()

    return native_step


def torch_step_pair(step, native, loss_fn, x, y, device: str):
    """``(unidl_step, native_step, loss_diff)``: unidl's train ``step`` and the hand-written step of ``native``
    on the same batch, each a zero-argument callable that waits for the device; ``loss_diff``, how far their
    first losses (from the same weights) are apart."""
    sync = torch_sync(device)

    def unidl_step():
        loss = step(x, y)
        sync()
        return loss

    native_step = native_sgd_step(native, loss_fn, x, y, sync)
    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))


def torch_steps(model: str, device: str):
    """``(unidl_step, native_step, loss_diff)`` of ``model`` (see ``torch_step_pair``). Call under
    ``ud.use_backend("torch")``: the steps run in the caller's backend context, as a user's loop would, with no
    per-step context switch."""
    import torch
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    step = ud.train_step(module, loss_fn, optimizer)
    torch_device = torch.device(device)
    native = torch_native_model(model, module.state_dict()).to(torch_device)
    native_loss = torch.nn.CrossEntropyLoss() if model == "cnn" else torch.nn.MSELoss()
    x, y = (torch.from_numpy(a).to(torch_device) for a in batch_arrays(model))
    return torch_step_pair(step, native, native_loss, x, y, device)


def bench_torch(settings: Settings, device: str) -> list[Row]:
    return train_step_rows("torch", "torch.nn + torch.optim.SGD", torch_steps, settings, device)
