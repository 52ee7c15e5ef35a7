"""Per-adapter tensors that are saved with an adapter but are not trained."""

from __future__ import annotations

import torch
from torch import nn


class AdapterBuffers(nn.Module):
    """Per-adapter buffers saved with the adapter (``dsee_indices.<adapter>`` in the state dict)."""

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value, persistent=True)

    def __delitem__(self, name: str) -> None:
        del self._buffers[name]

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def __iter__(self):
        return iter(self._buffers)

    def __len__(self) -> int:
        return len(self._buffers)

    def keys(self):
        return self._buffers.keys()

    def items(self):
        return self._buffers.items()

    def values(self):
        return self._buffers.values()

    def pop(self, name: str, default=None):
        return self._buffers.pop(name, default)
