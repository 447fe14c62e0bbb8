"""What a non-strict ``load_state_dict`` (or ``load_weights``) reports: the keys it could not match."""

from __future__ import annotations

from typing import NamedTuple


class IncompatibleKeys(NamedTuple):
    """``missing_keys`` (the module's entries the state dict lacked) and ``unexpected_keys`` (its entries the
    module has not), in that order, as ``torch.nn.Module.load_state_dict`` returns them: ``missing, unexpected =
    model.load_state_dict(state, strict=False)`` unpacks them (a dict unpacked into its two key names), and
    ``result.missing_keys`` reads them. ``result["missing"]`` and ``result["unexpected"]`` read them too, as the
    dict unidl returned before."""

    missing_keys: list
    unexpected_keys: list

    def __getitem__(self, key):
        if key == "missing":
            return self.missing_keys
        if key == "unexpected":
            return self.unexpected_keys
        return tuple.__getitem__(self, key)

    def __repr__(self) -> str:
        """torch's: ``<All keys matched successfully>``, or ``_IncompatibleKeys(missing_keys=[...], ...)``."""
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return f"_IncompatibleKeys(missing_keys={self.missing_keys!r}, unexpected_keys={self.unexpected_keys!r})"
