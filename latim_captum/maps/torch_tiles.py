"""The tiles in PyTorch ops: gated values, the ``W_o`` GEMM and the reductions of one row block, tile by tile.

* Gated values in channel-major layout ``G[c, i, j] = g_{i,c} v_{i←j,c}`` (eq 21 times the output gate), so that
  the dominant term, ``T[:, i, j] = W_o G[:, i, j]`` (≈ 2·rows·cols·d·D FLOPs), is one ``[D, d] @ [d, rows·cols]``
  GEMM per tile (optionally in TF32 or bf16 with fp32 accumulation, reductions always in the compute dtype).
* Mamba-1: the conv taps are folded into the right factor of the anchored decay (:mod:`latim_captum.maps.tiles`)
  per source column (``W[j,c,r] = Σ_k B̃_{j+k',c,r} f(ψ^{(k)}_{j+k'})_c``), so a tile's gated values are one batched
  ``[rows, R] @ [R, cols]`` GEMM per channel; sources inside the anchor's rows use eq 15 on small sub-blocks.
* Mamba-2: the per-head mixing expanded to channels, times the tap shares.

Reductions per tile: ℓp norms, ALTI proximities ``‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1`` (normalised once a row block is
complete), and the logit measure ``Δ_ij = (W_oᵀ u_i) · G[:, i, j]`` (N²·d, no W_o GEMM).

Example:
    >>> fill_row_block(ctx, out, 0, 64, 0, ("l2",), block=64, wu=None, precision="highest")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from latim_captum.aggregate import lp_order

from .tiles import LayerContext, add_skip, add_taps, mamba1_direct, mamba2_mixing, normalise_alti

__all__ = ["gated_tile", "project", "fill_row_block"]


def gated_tile(ctx: LayerContext, r0: int, r1: int, c0: int, c1: int) -> Tensor:
    """``G[b, c, i, j] = g_{i,c} v_{i←j,c}`` (eq 21 times the gate) for rows ``[r0, r1)`` and columns ``[c0, c1)``."""
    layer = ctx.layer
    bsz, _, _ = layer.residual.shape
    d = ctx.gate.shape[1]
    kernel = ctx.shares.shape[0]
    values = ctx.gate.new_zeros(bsz, d, r1 - r0, c1 - c0)
    if ctx.mamba1:
        # anchors every few rows: the direct formula (elementwise, ∝ rows·sources·d·R) only covers each anchor's
        # own rows × rows; everything before an anchor goes through the factorised batched GEMM
        for a in range(r0, r1, ctx.anchor_rows):
            b = min(r1, a + ctx.anchor_rows)
            _mamba1_anchor_rows(ctx, values[:, :, a - r0 : b - r0], a, b, c0, c1)
    else:
        s_hi = min(c1 + kernel - 1, r1)  # sources j + k' that feed these columns; none beyond the last row
        if s_hi > c0:
            mixing = mamba2_mixing(ctx, r0, r1, c0, s_hi)
            add_skip(mixing, ctx.skip, r0, r1, c0, s_hi)
            add_taps(values, mixing, ctx.shares, c0, c1, c0)
    values *= ctx.gate[:, :, r0:r1, None]
    return values


def _mamba1_anchor_rows(ctx: LayerContext, values: Tensor, a: int, b: int, c0: int, c1: int) -> None:
    """Add Mamba-1's ungated ``v_{i←j}`` for rows ``[a, b)`` and columns ``[c0, c1)`` into ``values``, in place.

    Sources before ``a`` factorise around the anchor ``a`` (both factors ≤ 1); sources in ``[a, b)`` use eq 15.
    """
    ssm = ctx.layer.ssm
    bsz, d = values.shape[:2]
    s_hi = min(c1 + ctx.shares.shape[0] - 1, b)  # sources j + k' that feed these columns; none beyond the last row
    f_hi = min(s_hi, a)
    if f_hi > c0:
        dtype = ssm.delta.dtype
        back = (ctx.lam[:, a, None] - ctx.lam[:, c0:f_hi]).to(dtype)  # [B, s, d], ≥ 0
        right = torch.exp(back[..., None] * ssm.A) * ssm.B[:, c0:f_hi, None, :] * ssm.delta[:, c0:f_hi, :, None]
        folded = values.new_zeros(bsz, d, ssm.A.shape[-1], c1 - c0)
        add_taps(folded, right.permute(0, 2, 3, 1), ctx.shares, c0, c1, c0)
        ahead = (ctx.lam[:, a:b] - ctx.lam[:, a, None]).to(dtype)  # [B, r, d], ≥ 0
        left = torch.exp(ahead[..., None] * ssm.A) * ssm.C[:, a:b, None, :]  # [B, r, d, R]
        values += left.permute(0, 2, 1, 3) @ folded
    d0 = max(c0, a)
    if s_hi > d0:
        mixing = mamba1_direct(ctx, a, b, d0, s_hi)
        add_skip(mixing, ctx.skip, a, b, d0, s_hi)
        add_taps(values, mixing, ctx.shares, c0, c1, d0)


def project(gated: Tensor, out_weight: Tensor, precision: str) -> Tensor:
    """``T[b, :, i, j] = W_o G[b, :, i, j]`` as one GEMM, ``[B, D, r, c]`` (bf16 inputs accumulate in fp32)."""
    bsz, d, rows, cols = gated.shape
    flat = gated.reshape(bsz, d, rows * cols)
    if precision == "bf16":
        out = out_weight.to(torch.bfloat16) @ flat.to(torch.bfloat16)
    else:
        out = out_weight @ flat
    return out.view(bsz, -1, rows, cols)


def fill_row_block(
    ctx: LayerContext,
    out: dict[str, Tensor],
    r0: int,
    r1: int,
    start: int,
    measures: Sequence[str],
    *,
    block: int,
    wu: Tensor | None,
    precision: str,
    extra: Callable[[int, int, int, int], Tensor] | None = None,
    output: Tensor | None = None,
) -> None:
    """Write query rows ``[r0, r1)`` of every map in ``out`` (whose row 0 is query row ``start``), tile by tile of
    ``block`` columns; ``wu = W_oᵀ u_i`` of these rows for the logit measure.

    ``extra(r0, r1, c0, c1)`` adds the vectors of mixers that run beside this one on the same input (a parallel
    sublayer's attention), ``[B, D, r, c]``, before the ℓp and ALTI reductions (the logit stays this layer's own);
    ``output`` is then the whole sublayer's ``y`` (default: this layer's ``block_output``)."""
    layer = ctx.layer
    bsz, n, _ = layer.residual.shape
    dtype = layer.residual.dtype
    need_t = any(m == "alti" or lp_order(m) is not None for m in measures)
    o0, o1 = r0 - start, r1 - start  # rows of the output maps
    y = (layer.block_output if output is None else output)[:, r0:r1].transpose(1, 2)[..., None]  # [B, D, r, 1]
    if "alti" in measures:
        l1_rows = layer.residual.new_zeros(bsz, r1 - r0, n)
        y_abs = y.abs()
    for c0 in range(0, r1, block):
        c1 = min(r1, c0 + block)
        gated = gated_tile(ctx, r0, r1, c0, c1)
        if wu is not None:
            out["logit"][:, o0:o1, c0:c1] = torch.einsum("bcij,bic->bij", gated, wu)
        if not need_t:
            continue
        contrib = project(gated, layer.out_weight, precision)
        del gated
        if extra is not None:
            contrib = contrib.to(dtype) + extra(r0, r1, c0, c1)
        for m in measures:
            if lp_order(m) is not None:
                out[m][:, o0:o1, c0:c1] = torch.linalg.vector_norm(contrib, ord=lp_order(m), dim=1, dtype=dtype)
        if "alti" in measures:
            lo, hi = max(r0, c0), min(r1, c1)
            contrib = contrib.to(dtype)
            if lo < hi:  # T'_i(x_i) = T_i(x_i) + x_i: the residual is token i's own
                idx = torch.arange(lo, hi, device=contrib.device)
                contrib[:, :, idx - r0, idx - c0] += layer.residual[:, lo:hi].transpose(1, 2)
            l1_rows[:, :, c0:c1] = contrib.abs().sum(1)
            # Σ_d (|y| − |y − T'|): exactly 0 where T' = 0 (j > i, padding) whatever the summation order
            proximity = contrib.sub_(y).abs_().neg_().add_(y_abs).sum(1)
            out["alti"][:, o0:o1, c0:c1] = torch.relu(proximity)
    if "alti" in measures:
        out["alti"][:, o0:o1] = normalise_alti(out["alti"][:, o0:o1], l1_rows)
