"""The torch backend's own behaviour beyond the shared contract (tests/backends/test_contract.py)."""

import traceback

import pytest

import unidl as ud

torch = pytest.importorskip("torch")


def test_manual_seed_seeds_torchs_generator_and_formats_no_stack_without_an_accelerator(monkeypatch):
    """``ud.manual_seed`` gives torch's CPU generator the seed, as ``torch.manual_seed`` does; where torch sees no
    accelerator it formats no stack: ``torch.manual_seed`` queued the seed for the CUDA, XPU and MTIA runtimes that
    never start there, each with the caller's stack formatted (about a millisecond a call at a test's depth, in
    the fixture that seeds every test)."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    formatted = []
    real_format_stack = traceback.format_stack
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: formatted.append(1) or real_format_stack(*a, **k))
    with ud.use_backend("torch"):
        ud.manual_seed(3)
        assert torch.initial_seed() == 3
        assert torch.equal(torch.rand(4), expected)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.current_accelerator() is None:
        assert formatted == []


def test_manual_seed_asks_no_driver_whether_an_accelerator_is_available(monkeypatch):
    """``ud.manual_seed`` decides whether to seed torch's accelerators from the build alone, as ``torch.manual_seed``
    queues their seeds without a driver call: ``torch.accelerator.is_available()`` starts CUDA's runtime on a CUDA
    build (a fork after the seed could then not use CUDA, and ``CUDA_VISIBLE_DEVICES`` set after it would be
    ignored)."""
    asked = []
    for module, name in [(torch.accelerator, "is_available"), (torch.cuda, "is_available"),
                         (torch.cuda, "device_count")]:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: asked.append(_name) or _real(*a, **k))
    with ud.use_backend("torch"):
        ud.manual_seed(5)
    assert asked == [] and torch.initial_seed() == 5
