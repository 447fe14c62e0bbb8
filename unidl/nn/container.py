"""``Sequential``: modules applied one after another."""

from __future__ import annotations

from unidl.nn.module import Module


class Sequential(Module):
    """Chain of modules; ``Sequential(a, b, c)(x) == c(b(a(x)))``. Children are named '0', '1', ..."""

    def __init__(self, *layers: Module):
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential item {index} must be a unidl.nn.Module, got {type(layer).__name__}")
            setattr(self, str(index), layer)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
