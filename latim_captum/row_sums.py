"""What a sublayer's contributions add up to in each row, ``Σ_j T_i(x_j)``, ``[B, N, D]``: the decomposition's
reconstruction of the sublayer output, which the decomposition error (paper Table 5) compares with the real one.

For a Mamba layer the sum over sources never needs the ``[rows, N]`` vectors. Every (position ``s``, tap ``k``)
pair reads exactly one token ``j = s − (K−1−k)`` (none when ``j < 0``), so summing eq 21 over ``j`` regroups by
``s``::

    Σ_j v_{i←j} = Σ_s (M_{i,s} + δ_{i,s} D) ⊙ φ̃_s,       φ̃_s = Σ_{k : s ≥ K−1−k} f(ψ_s^{(k)})
    Σ_j T_i(x_j) = W_o (g_i ⊙ Σ_j v_{i←j})

the selective scan run on the activation strategy's reassembled input ``φ̃`` (``φ̃ = φ`` for an exact strategy):
``O(N·d·R)`` work against ``O(N²·d·R)`` for the materialised blocks. :func:`sublayer_row_sums_ref` sums those blocks
(:func:`~latim_captum.decompose.sublayer_contributions`) and is the oracle :func:`sublayer_row_sums` is tested
against; other sublayers (attention, MLP, a Zamba2 hybrid's shared block) take the blocks in both.

Example:
    >>> sums = sublayer_row_sums(trace.layers[0], "silu_gate")                         # doctest: +SKIP
    >>> torch.allclose(sums + trace.layers[0].offset, trace.layers[0].mixer_output)   # eq 23  # doctest: +SKIP
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from .decompose import iter_row_blocks, sublayer_block_rows, sublayer_contributions, sublayer_shares, tap_contributions
from .ssm import selective_scan
from .traces import LayerTrace, ParallelTrace, SublayerTrace

__all__ = ["reassembled_input", "layer_row_sums", "sublayer_row_sums", "sublayer_row_sums_ref"]


def reassembled_input(shares: Tensor) -> Tensor:
    """``φ̃_s = Σ_k f(ψ_s^{(k)})`` over the taps that read a token (``s ≥ K−1−k``), ``[B, N, d]``, from the tap
    shares ``[K, B, N, d]`` of :func:`~latim_captum.decompose.tap_contributions`. The taps left out are the ones
    :func:`~latim_captum.decompose.token_values_ref` drops (they read the conv's zero padding)."""
    kernel, n = shares.shape[0], shares.shape[2]
    phi = torch.zeros_like(shares[0])
    for k in range(kernel):
        shift = kernel - 1 - k
        if shift < n:
            phi[:, shift:] += shares[k][:, shift:]
    return phi


def layer_row_sums(trace: LayerTrace, activation: str, *, shares: Tensor | None = None) -> Tensor:
    """``Σ_j T_i(x_j) = W_o (g_i ⊙ (scan(φ̃)_i + D ⊙ φ̃_i))`` of a Mamba layer for every row, ``[B, N, D]``.

    Args:
        trace: the layer.
        activation: the activation strategy (checked against the model's activation).
        shares: :func:`~latim_captum.decompose.tap_contributions` of the layer, if already computed.
    """
    if shares is None:
        shares = tap_contributions(trace, activation)
    phi = reassembled_input(shares)
    values = selective_scan(trace.ssm, phi) + trace.skip * phi
    return (values * trace.out_gate) @ trace.out_weight.T


def sublayer_row_sums_ref(trace: SublayerTrace, activation: str) -> Tensor:
    """``Σ_j T_i(x_j)`` of any sublayer for every row, ``[B, N, D]``, as the sum of its materialised contribution
    vectors over every column, in the row blocks of :func:`~latim_captum.decompose.sublayer_block_rows`."""
    shares = sublayer_shares(trace, activation)
    n = trace.residual.shape[1]
    return torch.cat(
        [
            sublayer_contributions(trace, activation, start, stop, shares=shares).sum(2)
            for start, stop in iter_row_blocks(n, sublayer_block_rows(trace))
        ],
        dim=1,
    )


def sublayer_row_sums(trace: SublayerTrace, activation: str) -> Tensor:
    """``Σ_j T_i(x_j)`` of any sublayer for every row, ``[B, N, D]``: :func:`layer_row_sums` for a Mamba layer (also
    as a part of a parallel mixer), :func:`sublayer_row_sums_ref` for the others."""
    if isinstance(trace, LayerTrace):
        return layer_row_sums(trace, activation)
    if isinstance(trace, ParallelTrace):
        return sum(sublayer_row_sums(part, activation) for part in trace.parts)
    return sublayer_row_sums_ref(trace, activation)
