"""Token-to-token contribution vectors ``T_i(x_j)`` of one Mamba layer (eqs 16-25): the plain reference path.

For a query row ``i`` and a source token ``j`` (eq 21, with tap ``k`` of position ``s = j + (K-1-k)`` reading j)::

    v_{i←j} = Σ_k (M_{i,s} + δ_{i,s} D) ⊙ f(ψ_s^{(k)})            (eq 21)
    T_i(x_j) = W_o (g_i ⊙ v_{i←j})                                (eq 22 Mamba-1, g_i = SiLU(z_i);
                                                                   eq 25 Mamba-2, g_i = γ_i)
    Σ_j T_i(x_j) = mixer(h)_i - b_o    when f is exact            (eq 23)

Everything is computed in blocks of query rows so that at most ``[B, rows, N, max(D, d·R)]`` is alive at once;
:func:`contributions_ref` with the default block covers all rows of one layer.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .activations import DEFAULT_ACTIVATION, check_activation, conv_taps, tap_gains, tap_shares
from .attention import attention_contributions_ref
from .shared import shared_input_parts, shared_rows_per_block
from .ssm import d_inner_of, hidden_attention
from .traces import (
    AttentionTrace,
    LayerTrace,
    Mamba1SSM,
    ParallelTrace,
    SharedBlockTrace,
    SublayerTrace,
    TokenwiseTrace,
)

__all__ = [
    "tap_contributions",
    "layer_tap_gains",
    "token_values_ref",
    "contributions_ref",
    "tokenwise_contributions",
    "shared_block_contributions",
    "sublayer_shares",
    "sublayer_contributions",
    "sublayer_block_rows",
    "iter_row_blocks",
    "default_block_rows",
]

#: elements of the largest temporary a row block may allocate (2**25 float32 = 128 MiB)
DEFAULT_BLOCK_ELEMENTS = 2**25


def default_block_rows(trace: LayerTrace, budget: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """Rows per block so that the largest temporary (``[B, rows, N, max(D, d·R)]``) stays under ``budget`` elements."""
    bsz, n, d_model = trace.residual.shape
    width = d_inner_of(trace.ssm) * (trace.ssm.A.shape[-1] if isinstance(trace.ssm, Mamba1SSM) else 1)
    per_row = bsz * n * max(width, d_model, 1)
    return max(1, min(n, budget // per_row))


def iter_row_blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` pairs covering ``range(n)`` in blocks of ``block_rows`` (≥ 1: a negative step would cover
    nothing, and every map stay zero)."""
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    for start in range(0, n, block_rows):
        yield start, min(n, start + block_rows)


def tap_contributions(trace: LayerTrace, activation: str) -> Tensor:
    """``f(ψ_s^{(k)})`` for every tap and position, zero at padded positions, ``[K, B, N, d]`` (eq 19).

    Example:
        >>> shares = tap_contributions(trace, "silu_gate")  # doctest: +SKIP
        >>> torch.allclose(shares.sum(0), phi)               # exact for SiLU models  # doctest: +SKIP
    """
    check_activation(activation, trace.activation)
    taps = conv_taps(trace.conv_input, trace.conv_weight, trace.conv_bias)
    shares = tap_shares(taps, trace.pre_activation, activation, trace.activation)
    if trace.mask is not None:
        shares = shares * trace.mask[None, :, :, None].to(shares.dtype)
    return shares


def layer_tap_gains(trace: LayerTrace, activation: str) -> Tensor:
    """The gains ``r`` of :func:`~latim_captum.activations.tap_gains` for every tap and position (zero at padded
    positions), ``[K, B, N, d]``: ``tap_contributions(trace, activation) == r ⊙ conv_taps(...)``."""
    check_activation(activation, trace.activation)
    taps = conv_taps(trace.conv_input, trace.conv_weight, trace.conv_bias)
    gains = tap_gains(taps, trace.pre_activation, activation, trace.activation)
    if trace.mask is not None:
        gains = gains * trace.mask[None, :, :, None].to(gains.dtype)
    return gains


def token_values_ref(trace: LayerTrace, shares: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
    """``v_{i←j}`` of eq 21 for query rows ``[start, stop)``, ``[B, rows, N, d]``.

    Args:
        trace: the layer.
        shares: :func:`tap_contributions` of the layer.
        start, stop: query rows.
    """
    n = trace.residual.shape[1]
    stop = n if stop is None else stop
    mixing = hidden_attention(trace.ssm, start, stop)  # [B, r, N, d]
    rows = torch.arange(start, stop, device=mixing.device)
    mixing[:, rows - start, rows] += trace.skip  # the D skip acts on φ_i: the diagonal of M
    kernel = shares.shape[0]
    values = torch.zeros_like(mixing)
    for k in range(kernel):
        shift = kernel - 1 - k
        if shift >= n:
            continue
        # tap k of position s = j + shift reads token j
        values[:, :, : n - shift] += mixing[:, :, shift:] * shares[k][:, None, shift:]
    return values


def contributions_ref(
    trace: LayerTrace,
    activation: str = DEFAULT_ACTIVATION,
    start: int = 0,
    stop: int | None = None,
    *,
    shares: Tensor | None = None,
) -> Tensor:
    """Contribution vectors ``T_i(x_j) = W_o (g_i ⊙ v_{i←j})`` for query rows ``[start, stop)``, ``[B, rows, N, D]``.

    Rows are query positions i, columns source tokens j; entries with ``j > i`` are exactly zero. The out-projection
    bias and the residual are not included (see :attr:`LayerTrace.offset` and :attr:`LayerTrace.residual`).

    Example:
        >>> t = contributions_ref(trace, "silu_gate")                      # doctest: +SKIP
        >>> torch.allclose(t.sum(2) + trace.offset, trace.mixer_output)   # eq 23  # doctest: +SKIP
    """
    if shares is None:
        shares = tap_contributions(trace, activation)
    stop = trace.residual.shape[1] if stop is None else stop
    values = token_values_ref(trace, shares, start, stop)
    gated = values * trace.out_gate[:, start:stop, None, :]
    return gated @ trace.out_weight.T


# -- every sublayer of the residual stream -------------------------------------------------------------------------
# The one dispatch point on the sublayer type: a fast path that handles LayerTrace itself falls back to these for
# attention and token-wise sublayers.


def tokenwise_contributions(trace: TokenwiseTrace, start: int = 0, stop: int | None = None) -> Tensor:
    """``T_i(x_j) = δ_ij F(LN(x_i))`` for query rows ``[start, stop)``, ``[B, rows, N, D]``: an MLP mixes no tokens."""
    bsz, n, d_model = trace.residual.shape
    stop = n if stop is None else stop
    out = trace.residual.new_zeros(bsz, stop - start, n, d_model)
    rows = torch.arange(start, stop, device=out.device)
    out[:, rows - start, rows] = trace.mixer_output[:, start:stop]
    if trace.mask is not None:
        out = out * trace.mask[:, start:stop, None, None].to(out.dtype)
    return out


def shared_block_contributions(
    trace: SharedBlockTrace,
    activation: str = DEFAULT_ACTIVATION,
    start: int = 0,
    stop: int | None = None,
    *,
    gains: Tensor | None = None,
    budget: int = DEFAULT_BLOCK_ELEMENTS,
) -> Tensor:
    """``[T_i(x_k) | T_i(e_k)]`` of a Zamba2 hybrid layer for query rows ``[start, stop)``, ``[B, rows, 2N, D]``.

    With the Mamba's gates fixed (Δ, B, C, ``γ`` and the activation strategy's tap gains ``r``, see
    :func:`layer_tap_gains`), its output at i is linear in its conv inputs ``P_j``::

        v_{i←P_j} = K_ij ⊙ P_j,    K_ij = Σ_k (M_{i,s} + δ_{i,s} D) ⊙ r_s^{(k)} ⊙ w_k     (s = j + K-1-k)

    so each source's share of every conv input (:func:`~latim_captum.shared.shared_input_parts`) is carried through
    it column by column: ``v_{i←src_k} = Σ_j K_ij ⊙ P^src_jk`` (no ``[N, N, N]`` temporary: a batched matmul over
    j per channel), plus the conv bias ``Σ_s (M_{i,s} + δ_{i,s} D) ⊙ r_s^{(K-1)} ⊙ b_c`` on the stream column of s
    (the current token, footnote 3), then ``T_i = W_o (γ_i ⊙ v_i)``. The parts' sum is the plain LaTIM
    decomposition of the Mamba, so with ``silu_gate`` (SiLU models) or ``identity`` (linear ones) the columns
    reconstruct the layer's output exactly: ``Σ_k T_i(x_k) + T_i(e_k) + b_o = mixer_output_i``.

    Args:
        trace: the hybrid layer.
        activation: the activation strategy.
        start, stop: query rows.
        gains: :func:`layer_tap_gains` of ``trace.mamba`` (reused across row blocks), or None.
        budget: elements a block of :func:`~latim_captum.shared.shared_input_parts` may allocate.
    """
    mamba = trace.mamba
    n = trace.residual.shape[1]
    stop = n if stop is None else stop
    if gains is None:
        gains = layer_tap_gains(mamba, activation)
    kernel = token_values_ref(mamba, gains * mamba.conv_weight.T[:, None, None, :], start, stop)  # K_ij
    stream = torch.zeros_like(kernel)
    embedding = torch.zeros_like(kernel)
    for j0, j1 in iter_row_blocks(stop, shared_rows_per_block(trace, budget)):  # K_ij = 0 for j > i
        stream_parts, embedding_parts = shared_input_parts(trace, j0, j1)
        stream += torch.einsum("bijc,bjkc->bikc", kernel[:, :, j0:j1], stream_parts)
        embedding += torch.einsum("bijc,bjkc->bikc", kernel[:, :, j0:j1], embedding_parts)
    if mamba.conv_bias is not None:
        bias_shares = torch.zeros_like(gains)
        bias_shares[-1] = gains[-1] * mamba.conv_bias
        stream += token_values_ref(mamba, bias_shares, start, stop)
    gate = mamba.out_gate[:, start:stop, None, :]
    return torch.cat([stream * gate, embedding * gate], dim=2) @ mamba.out_weight.T


def sublayer_shares(trace: SublayerTrace, activation: str) -> Tensor | None:
    """What a sublayer reuses across row blocks: :func:`tap_contributions` for a Mamba layer, the tap gains of
    :func:`layer_tap_gains` for a Zamba2 hybrid layer, None for other sublayers."""
    if isinstance(trace, SharedBlockTrace):
        return layer_tap_gains(trace.mamba, activation)
    return tap_contributions(trace, activation) if isinstance(trace, LayerTrace) else None


def sublayer_contributions(
    trace: SublayerTrace,
    activation: str = DEFAULT_ACTIVATION,
    start: int = 0,
    stop: int | None = None,
    *,
    shares: Tensor | None = None,
) -> Tensor:
    """``T_i(x_j)`` of any sublayer for query rows ``[start, stop)``, ``[B, rows, N, D]``.

    Mamba layers go through :func:`contributions_ref` with ``activation``; attention through
    :func:`~latim_captum.attention.attention_contributions_ref` (exact given the softmax weights); MLP/MoE through
    :func:`tokenwise_contributions`; parallel mixers (:class:`~latim_captum.traces.ParallelTrace`) as the sum of
    their parts' contributions; a Zamba2 hybrid layer (:class:`~latim_captum.traces.SharedBlockTrace`) through
    :func:`shared_block_contributions`, with ``2N`` columns (``T_i(x_k)``, then ``T_i(e_k)``). In every case
    ``Σ_j T_i(x_j) + trace.offset`` (over every column) reconstructs ``trace.mixer_output`` when the decomposition is
    exact.

    Example:
        >>> t = sublayer_contributions(tr.layers[1], "silu_gate")              # doctest: +SKIP
    """
    if isinstance(trace, LayerTrace):
        return contributions_ref(trace, activation, start, stop, shares=shares)
    if isinstance(trace, AttentionTrace):
        return attention_contributions_ref(trace, start, stop)
    if isinstance(trace, TokenwiseTrace):
        return tokenwise_contributions(trace, start, stop)
    if isinstance(trace, ParallelTrace):
        return sum(sublayer_contributions(part, activation, start, stop) for part in trace.parts)
    if isinstance(trace, SharedBlockTrace):
        return shared_block_contributions(trace, activation, start, stop, gains=shares)
    raise TypeError(f"unknown sublayer trace {type(trace).__name__}")


def sublayer_block_rows(trace: SublayerTrace, budget: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """:func:`default_block_rows` for any sublayer (attention also holds ``[B, H, rows, N]`` weights)."""
    if isinstance(trace, LayerTrace):
        return default_block_rows(trace, budget)
    if isinstance(trace, ParallelTrace):
        return min(sublayer_block_rows(part, budget) for part in trace.parts)
    if isinstance(trace, SharedBlockTrace):
        # the kernel K, two source values and the [rows, 2N, D] vectors (the parts have their own budget)
        bsz, n, d_model = trace.residual.shape
        per_row = bsz * n * (3 * d_inner_of(trace.mamba.ssm) + 2 * d_model)
        return max(1, min(n, budget // per_row))
    bsz, n, d_model = trace.residual.shape
    heads = trace.weights.shape[1] if isinstance(trace, AttentionTrace) else 1
    return max(1, min(n, budget // (bsz * n * max(d_model, heads, 1))))
