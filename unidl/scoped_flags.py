"""Flags that are on for a ``with`` block, in this context only (``contextvars``): another thread, or a task of
its own, sees them off. unidl uses them for rules that hold while a caller is in a certain step (a resume, an
export, a shape probe), where a module-level global would leak into concurrent work and a flag argument would
have to travel through every call in between."""

import contextlib
import contextvars


class ScopedFlag:
    """A flag off by default and on inside ``with flag.raised():`` (nested blocks allowed; each puts back what it
    found, also when the block raises)."""

    def __init__(self, name: str):
        self._var = contextvars.ContextVar(name, default=False)

    def __bool__(self) -> bool:
        return self._var.get()

    @contextlib.contextmanager
    def raised(self):
        """The flag on for the block, then as it was."""
        token = self._var.set(True)
        try:
            yield
        finally:
            self._var.reset(token)
