"""Which position each example is queried at: its last real token by default, never a padding token.

Hugging Face tokenizers pad on the right by default, so with an attention mask the last column of a shorter row is
padding. A causal model's prediction for such a row is made at its last *real* token, and that is where every front
end queries it when no position is given; an explicit position that lands on padding is an error (its scores would
be meaningless, and a convergence delta computed there still looks fine).

Example:
    >>> mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])          # right padding
    >>> query_positions(None, mask, 2, 4).tolist()
    [3, 1]
    >>> query_positions(-1, mask, 2, 4)                              # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: position -1 points at padding in example 1 (its last real token is at 1); leave position unset ...
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["last_real_positions", "query_positions", "check_not_padding"]


def last_real_positions(mask: Tensor | None, batch: int, seq_len: int) -> Tensor:
    """``[B]``: the index of each example's last real token (``seq_len - 1`` without a mask), on the mask's device."""
    if mask is None:
        return torch.full((batch,), seq_len - 1, dtype=torch.long)
    idx = torch.arange(seq_len, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).amax(-1).long()


def check_not_padding(positions: Tensor, mask: Tensor | None, given: int | None = None) -> None:
    """``ValueError`` naming the first example whose query position ``positions[b]`` is a padding token."""
    if mask is None:
        return
    on_pad = mask.gather(1, positions.to(mask.device)[:, None])[:, 0] == 0
    if bool(on_pad.any()):
        b = int(on_pad.nonzero()[0, 0])
        last = int(last_real_positions(mask[b : b + 1], 1, mask.shape[1])[0])
        shown = int(positions[b]) if given is None else given
        raise ValueError(
            f"position {shown} points at padding in example {b} (its last real token is at {last}); leave position "
            "unset to query each example's last real token"
        )


def query_positions(position: int | None, mask: Tensor | None, batch: int, seq_len: int) -> Tensor:
    """The query position of every example, ``[B]`` (long, on the CPU).

    Args:
        position: an int (negative counts from the end of the padded sequence), or None for each example's last
            real token according to ``mask``.
        mask: ``[B, N]`` attention mask (1 = token, 0 = padding) or None.
        batch, seq_len: the input's ``B`` and ``N``.

    Raises:
        TypeError: ``position`` is not an int or None.
        ValueError: ``position`` is out of range, or it points at a padding token of some example.
    """
    if position is None:
        return last_real_positions(mask, batch, seq_len).cpu()
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be an int or None, got {position!r}")
    if not -seq_len <= position < seq_len:
        raise ValueError(f"position {position} is out of range for a sequence of length {seq_len}")
    positions = torch.full((batch,), position % seq_len, dtype=torch.long)
    check_not_padding(positions, mask, given=position)
    return positions
