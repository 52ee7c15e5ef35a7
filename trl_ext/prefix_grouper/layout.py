"""How a group of completions sharing one prompt is packed into one row, defined once.

A GRPO batch holds each prompt ``G`` times, each copy followed by its own completion. Packed, a group is one row

    [ prefix: prompt[:-1] (P tokens) | suffix 0 | suffix 1 | ... | suffix G-1 ],  suffix g = [prompt[-1], c_g[:-1]]

of ``P + G*S`` tokens (``S`` = the completion width ``C``). The prompt is encoded once; only its last token is
repeated per suffix, so that every suffix position predicts exactly one completion token (suffix position j predicts
``c_g[j]``) and a standard per-position LM head scores them. Position ids are the stock ones: the prefix keeps
``0 .. P-1`` and every suffix restarts at ``P``, exactly where each unpacked row would have its last prompt token.
Attention (``attention.py``): prefix tokens attend causally within the prefix; suffix tokens attend to the whole
prefix and causally within their own suffix, never to another suffix. Padding (left in prompts, right in
completions) is never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class PrefixLayout:
    """Packed rows ``[prefix (prefix_len) | num_suffixes x suffix (suffix_len)]``.

    ``key_valid``: bool ``[rows, total]``, False at padding (never attended to)."""

    prefix_len: int
    num_suffixes: int
    suffix_len: int
    key_valid: torch.Tensor
    cache: dict = field(default_factory=dict, repr=False)  # per-call derived tensors (e.g. a FlexAttention mask)

    @property
    def total(self) -> int:
        return self.prefix_len + self.num_suffixes * self.suffix_len

    def __post_init__(self) -> None:
        if self.prefix_len < 0 or self.num_suffixes < 1 or self.suffix_len < 1:
            raise ValueError(f"bad layout: prefix {self.prefix_len}, {self.num_suffixes} suffixes of "
                             f"{self.suffix_len}")
        if self.key_valid.dim() != 2 or self.key_valid.shape[1] != self.total:
            raise ValueError(f"key_valid is {tuple(self.key_valid.shape)}; the layout needs [rows, {self.total}]")


@dataclass
class PackedGroups:
    """Model inputs for packed groups, and where each completion token's log-prob comes out.

    ``input_ids`` / ``position_ids``: ``[groups, total]``; ``shift_labels``: ``[groups, total]``, the token each
    position predicts (-100 where none); ``rows``: for unpacked row ``i`` of the batch, its group; ``slot``: its
    suffix index within the group."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    shift_labels: torch.Tensor
    layout: PrefixLayout
    group_of_row: torch.Tensor
    slot_of_row: torch.Tensor

    def per_row(self, per_position: torch.Tensor) -> torch.Tensor:
        """``[groups, total]`` per-position values -> ``[rows, C]`` per completion token, in batch row order."""
        lay = self.layout
        suffixes = per_position[:, lay.prefix_len:].reshape(-1, lay.num_suffixes, lay.suffix_len)
        return suffixes[self.group_of_row, self.slot_of_row]


def find_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` row ranges of consecutive rows with the same prompt (ids and mask): GRPO's groups."""
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(1) & (prompt_mask[1:] == prompt_mask[:-1]).all(1)
    starts = [0, *(i + 1 for i in torch.nonzero(~same).flatten().tolist())]
    ends = [*starts[1:], prompt_ids.shape[0]]
    return list(zip(starts, ends, strict=True))


def pack_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, groups: list[tuple[int, int]]) -> PackedGroups:
    """Pack ``groups`` (row ranges of equal size ``G``, see ``find_groups``) of a GRPO batch.

    Args:
        prompt_ids, prompt_mask: ``[rows, P0]`` left-padded prompts (the last column is a real token).
        completion_ids, completion_mask: ``[rows, C]`` right-padded completions.
    """
    sizes = {end - start for start, end in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups packed together must be the same size; got sizes {sorted(sizes)}")
    if not bool(prompt_mask[:, -1].all()):
        raise ValueError("prefix grouping needs left-padded prompts (every prompt's last position a real token)")
    g = sizes.pop()
    c = completion_ids.shape[1]
    first = torch.tensor([start for start, _ in groups], device=prompt_ids.device)
    rows = torch.cat([torch.arange(s, e, device=prompt_ids.device) for s, e in groups])
    prefix_ids, prefix_mask = prompt_ids[first, :-1], prompt_mask[first, :-1].bool()
    p = prefix_ids.shape[1]
    last = prompt_ids[rows, -1:].view(len(groups), g, 1)
    comp = completion_ids[rows].view(len(groups), g, c)
    cmask = completion_mask[rows].view(len(groups), g, c).bool()
    suffix_ids = torch.cat([last, comp[:, :, :-1]], dim=2)
    # the last prompt token is real; a completion token is a key only while the completion is (mask 1)
    suffix_valid = torch.cat([torch.ones_like(cmask[:, :, :1]), cmask[:, :, :-1]], dim=2)
    labels = comp.masked_fill(~cmask, -100)
    n = len(groups)
    positions = torch.cat([torch.arange(p, device=prompt_ids.device).expand(n, p),
                           (p + torch.arange(c, device=prompt_ids.device)).repeat(g).expand(n, g * c)], dim=1)
    layout = PrefixLayout(p, g, c, torch.cat([prefix_mask, suffix_valid.reshape(n, g * c)], dim=1))
    return PackedGroups(
        input_ids=torch.cat([prefix_ids, suffix_ids.reshape(n, g * c)], dim=1),
        position_ids=positions,
        shift_labels=torch.cat([torch.full_like(prefix_ids, -100), labels.reshape(n, g * c)], dim=1),
        layout=layout,
        group_of_row=torch.arange(n, device=prompt_ids.device).repeat_interleave(g),
        slot_of_row=torch.arange(g, device=prompt_ids.device).repeat(n),
    )
