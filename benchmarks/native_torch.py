"""unidl's train step on torch against the same network and SGD step written with ``torch.nn``."""

from __future__ import annotations

from benchmarks.harness import (LR, MODELS, MOMENTUM, PARITY_TARGET, TWO_LAYER, Row, Settings, alternate,
                                batch_arrays, ms, unidl_model)


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


def torch_steps(model: str, device: str):
    """``(unidl_step, native_step, loss_diff)``: zero-argument callables, one training step each.
    Call under ``ud.use_backend("torch")``: the steps run in the caller's backend context, as a user's
    loop would, with no per-step context switch."""
    import torch
    import unidl as ud

    module, loss_fn, optimizer = unidl_model(model)
    step = ud.train_step(module, loss_fn, optimizer)
    torch_device = torch.device(device)
    native = torch_native_model(model, module.state_dict()).to(torch_device)
    native_optimizer = torch.optim.SGD(native.parameters(), lr=LR, momentum=MOMENTUM)
    native_loss = torch.nn.CrossEntropyLoss() if model == "cnn" else torch.nn.MSELoss()
    x, y = (torch.from_numpy(a).to(torch_device) for a in batch_arrays(model))
    sync = torch_sync(device)

    def unidl_step():
        loss = step(x, y)
        sync()
        return loss

    def native_step():
        native_optimizer.zero_grad()
        loss = native_loss(native(x), y)
        loss.backward()
        native_optimizer.step()
        sync()
        return loss.detach()

    return unidl_step, native_step, abs(float(unidl_step()) - float(native_step()))


def bench_torch(settings: Settings, device: str) -> list[Row]:
    import unidl as ud

    rows = []
    for model in MODELS:
        with ud.use_backend("torch"), ud.use_device(device):
            unidl_step, native_step, diff = torch_steps(model, device)
            a, b = timing = alternate(unidl_step, native_step, settings.steps, settings.warmup, settings.blocks)
        rows.append(Row("train step, torch", model, "ud.train_step", "torch.nn + torch.optim.SGD",
                        ms(a), ms(b), f"<= {PARITY_TARGET}", loss_diff=diff, spread=timing.spread))
    return rows
