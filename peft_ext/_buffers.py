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


def derived(cache: dict, name: str, tensor: torch.Tensor, compute):
    """``compute(tensor)``, kept in ``cache[name]`` until ``tensor`` is replaced (``.to()`` gives a new tensor) or
    written in place (``fill_``, and ``load_state_dict``'s ``copy_``, bump its version counter). For values read
    every forward pass: recomputing costs launches, and reading a GPU tensor back costs a device sync per layer."""
    hit = cache.get(name)
    if hit is None or hit[0] is not tensor or hit[1] != tensor._version:
        hit = (tensor, tensor._version, compute(tensor))
        cache[name] = hit
    return hit[2]
