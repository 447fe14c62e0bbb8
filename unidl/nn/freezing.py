"""Freezing with PyTorch's names, the one rule on every backend: ``param.requires_grad_(False)`` (a method each
backend adds to its framework's variable class, as torch's ``Parameter`` has it) or ``param.requires_grad = False``,
and ``module.requires_grad_(False)``. The frameworks' own ``trainable`` flag, which unidl does not read, is refused
on parameters and modules alike (it froze on Keras only, and was ignored or failed elsewhere)."""

from __future__ import annotations

from unidl import arguments
from unidl.errors import UnsupportedFlagError


def _set_flag(parameter, requires_grad: bool) -> None:
    parameter.requires_grad = requires_grad


def requires_grad_method(set_requires_grad=_set_flag):
    """PyTorch's ``Parameter.requires_grad_`` for a framework's variable class, freezing through the backend's
    ``set_requires_grad`` (the flag ``requires_grad`` by default, which ``param.requires_grad = flag`` sets)."""

    def requires_grad_(self, requires_grad: bool = True):
        """Freeze (False) or unfreeze this parameter, as PyTorch's ``Parameter.requires_grad_``: the same flag as
        ``param.requires_grad = requires_grad``, honoured by every loop and optimizer. Returns the parameter.

        Args:
            requires_grad: True or False, as torch's.
        """
        set_requires_grad(self, arguments.boolean(f"{type(self).__name__}.requires_grad_", "requires_grad",
                                                  requires_grad))
        return self

    return requires_grad_


def trainable_refused(what: str, freeze: str = "param.requires_grad_(False)") -> UnsupportedFlagError:
    """The error for ``trainable`` set on ``what`` (a parameter or a module), naming the call that freezes."""
    return UnsupportedFlagError(
        f"{what}: unidl does not read the 'trainable' flag (Keras's and TensorFlow's), so setting it would freeze "
        f"on one backend and be ignored on others; freeze with PyTorch's name, honoured on every backend: "
        f"{freeze} (and requires_grad_(True) to unfreeze)")


def is_trainable(parameter) -> bool:
    """False for a frozen parameter (``requires_grad`` False, PyTorch's name, on every backend). Every training loop
    reads it at each step, so a ``trainable`` flag set to False by hand on a parameter that still requires
    gradients (which torch's ``Parameter`` and Keras's ``Variable`` accept silently) is refused here."""
    if not getattr(parameter, "requires_grad", True):
        return False
    if not getattr(parameter, "trainable", True):
        raise trainable_refused(f"a parameter of shape {tuple(parameter.shape)} ({type(parameter).__name__}) "
                                f"has trainable=False")
    return True
