"""Token-to-token decomposition of transformer attention (the paper's section 2.2), shared by every adapter.

With the softmax weights ``A^h`` held fixed (Kobayashi et al. 2020; ALTI, Ferrando et al. 2022)::

    attn(LN(x))_i = Σ_h W_O^h Σ_j A^h_ij v^h_j + b_O,      v^h_j = W_V^h LN(x_j) + b_V^h
    T_i(x_j)      = Σ_h A^h_ij (W_O^h v^h_j)                                      (eq 4, residual excluded)
    Σ_j T_i(x_j)  = attn(LN(x))_i − b_O                                            (exact given A)

Grouped-query attention reads kv head ``h // (H / H_kv)``; rotary embeddings, causal masks, padding, sliding
windows and sinks only change ``A`` (queries and keys), never the values, so they need nothing here. A sink (an
extra logit column no token owns) leaves rows summing to less than 1, which the decomposition handles as is.

:func:`attention_weights` builds ``A`` from queries and keys for adapters; :func:`attention_contributions_ref` is the
decomposition itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .traces import AttentionTrace

__all__ = [
    "attention_weights",
    "head_values",
    "attention_contributions_ref",
    "attention_value_paths",
    "attention_output",
]


def attention_weights(
    query: Tensor,
    key: Tensor,
    scaling: float,
    mask: Tensor | None = None,
    *,
    sliding_window: int | None = None,
) -> Tensor:
    """Causal softmax weights ``A^h = softmax(q k^T · scaling)`` with padding and an optional sliding window.

    Args:
        query: ``[B, H, N, d_head]`` (rotary already applied).
        key: ``[B, H_kv, N, d_head]``; repeated over the query heads of its group.
        scaling: logit scale (``d_head^{-1/2}`` or a model's multiplier).
        mask: ``[B, N]`` padding mask (1 = token): padded keys get no weight and padded query rows are zero.
        sliding_window: a query attends to at most this many most recent tokens (itself included).

    Returns:
        ``A``, ``[B, H, N, N]``, lower-triangular; every non-padded row sums to 1.

    Example:
        >>> a = attention_weights(torch.randn(1, 2, 3, 4), torch.randn(1, 1, 3, 4), 0.5)
        >>> a.sum(-1)
        tensor([[[1., 1., 1.],
                 [1., 1., 1.]]])
    """
    heads, kv_heads, n = query.shape[1], key.shape[1], query.shape[2]
    key = key.repeat_interleave(heads // kv_heads, dim=1)
    scores = (query @ key.transpose(-1, -2)) * scaling
    pos = torch.arange(n, device=query.device)
    allowed = pos[None, :] <= pos[:, None]
    if sliding_window is not None:
        allowed = allowed & (pos[:, None] - pos[None, :] < sliding_window)
    allowed = allowed[None, None].expand(query.shape[0], 1, n, n)
    if mask is not None:
        keep = mask.bool()
        allowed = allowed & keep[:, None, None, :] & keep[:, None, :, None]
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(weights, nan=0.0)  # fully masked (padded) query rows


def head_values(values: Tensor, heads: int) -> Tensor:
    """``[B, H_kv, N, d_head]`` values repeated to ``[B, H, N, d_head]`` (head h reads kv head h // (H/H_kv))."""
    return values.repeat_interleave(heads // values.shape[1], dim=1)


def attention_output(trace: AttentionTrace) -> Tensor:
    """``Σ_h W_O^h A^h v^h + b_O``, ``[B, N, D]``: what the model's attention returns given ``A``."""
    bsz, heads, n, _ = trace.weights.shape
    mixed = trace.weights @ head_values(trace.values, heads)  # [B, H, N, d_head]
    out = mixed.transpose(1, 2).reshape(bsz, n, -1) @ trace.out_weight.T
    return out if trace.out_bias is None else out + trace.out_bias


def attention_contributions_ref(trace: AttentionTrace, start: int = 0, stop: int | None = None) -> Tensor:
    """``T_i(x_j) = Σ_h A^h_ij W_O^h v^h_j`` for query rows ``[start, stop)``, ``[B, rows, N, D]`` (eq 4).

    Each head's values are projected through its slice of ``W_O`` once (``[B, H, N, D]``), then weighted by the
    rows of ``A``; the residual and ``b_O`` are not included.

    Example:
        >>> t = attention_contributions_ref(trace)                                   # doctest: +SKIP
        >>> torch.allclose(t.sum(2) + trace.offset, trace.mixer_output)             # doctest: +SKIP
        True
    """
    n = trace.residual.shape[1]
    return attention_value_paths(trace.weights, trace.values, trace.out_weight, start, n if stop is None else stop)


def attention_value_paths(weights: Tensor, values: Tensor, out_weight: Tensor, start: int, stop: int) -> Tensor:
    """``Σ_h A^h_ij W_O^h v^h_j`` for query rows ``[start, stop)`` and every j, ``[B, rows, N, D]``.

    The plain-tensor core of :func:`attention_contributions_ref`, also used for attention inside a shared block
    (:mod:`latim_captum.shared`), where the values of each source are passed separately.

    Args:
        weights: ``A``, ``[B, H, N, N]``.
        values: ``[B, H_kv, N, d_head]``.
        out_weight: ``W_O``, ``[D, H * d_head]``.
        start, stop: query rows.
    """
    heads = weights.shape[1]
    values = head_values(values, heads)  # [B, H, N, d_head]
    d_head = values.shape[-1]
    w_o = out_weight.view(-1, heads, d_head)  # [D, H, d_head]
    projected = torch.einsum("bhjc,ehc->bhje", values, w_o)  # W_O^h v^h_j: [B, H, N, D]
    return torch.einsum("bhrj,bhje->brje", weights[:, :, start:stop], projected)
