"""The tiled path of a hybrid's other sublayers: attention (eq 4) and token-wise MLP/MoE.

Attention, with the softmax weights ``A`` held fixed, decomposes as ``T_i(x_j) = Σ_h A^h_ij P^h_j`` with the per-head
value paths ``P^h_j = W_O^h v^h_j``. Here the paths are made once per layer (the reference makes them again for every
row block), a block of query rows reads only the columns up to its last row (the weights are causal: the rest are
zero), and the logit term is two GEMMs that never form ``T``:

    Δ_ij = T_i(x_j) · u_i = Σ_h A^h_ij ((W_O^h)^T u_i) · v^h_j

A token-wise sublayer mixes no tokens, ``T_i(x_j) = δ_ij F(LN(x_i))``: its maps are diagonal, made from the ``[B, N,
D]`` output directly instead of ``[B, rows, N, D]`` blocks that are zero off the diagonal.

Same values as :func:`latim_captum.maps.ref.layer_maps_ref` up to rounding (``precision="highest"``).

Example:
    >>> maps = attention_maps_fast(tr.layers[1], ("l2", "alti"))                           # doctest: +SKIP
    >>> maps = tokenwise_maps_fast(tr.layers[3], ("logit",), projection=u)                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from latim_captum._validation import check_rows, check_size
from latim_captum.aggregate import alti_scores, lp_order, lp_scores
from latim_captum.attention import head_values
from latim_captum.decompose import sublayer_block_rows
from latim_captum.traces import AttentionTrace, TokenwiseTrace

from .options import check_measures, matmul_precision

__all__ = ["attention_maps_fast", "tokenwise_maps_fast"]


def _checked(layer, measures: Sequence[str], projection: Tensor | None, rows) -> tuple[int, int]:
    check_measures(measures)
    if "logit" in measures and projection is None:
        raise ValueError("measure 'logit' needs a projection")
    return check_rows(rows, layer.residual.shape[1])


def attention_maps_fast(
    layer: AttentionTrace,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block: int | None = None,
    precision: str = "highest",
    rows: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """``[B, rows, N]`` maps of an attention sublayer for ``measures`` (ℓp, ``"alti"``, ``"logit"``).

    Args:
        layer: the attention trace (weights ``[B, H, N, N]``, values ``[B, H_kv, N, d_head]``, ``W_O``).
        measures: any ``"l<p>"``, ``"alti"``, ``"logit"`` (needs ``projection``, ``u_i``: ``[B, N, D]``).
        block: query rows per block (default: the reference's budget).
        precision: operands of the value-path products in the compute dtype (``"highest"``), TF32 (``"tf32"``) or
            bf16 (``"bf16"``); the reductions stay in the compute dtype.
        rows: only query rows ``[start, stop)``.
    """
    first, last = _checked(layer, measures, projection, rows)
    check_size("block", block)
    bsz, n, d_model = layer.residual.shape
    dtype = layer.residual.dtype
    heads = layer.weights.shape[1]
    operand = torch.bfloat16 if precision == "bf16" else dtype
    values = head_values(layer.values[:, :, :last], heads).to(operand)  # [B, H, last, d_head]: the columns read
    w_o = layer.out_weight.view(d_model, heads, -1).to(operand)  # [D, H, d_head]
    vectors = any(m != "logit" for m in measures)
    out = {m: layer.residual.new_zeros(bsz, last - first, n) for m in measures}
    output = layer.block_output
    step = block or sublayer_block_rows(layer)
    with matmul_precision(precision):
        paths = torch.einsum("bhjc,ehc->bhje", values, w_o) if vectors else None  # P^h_j: [B, H, last, D]
        back = None
        if "logit" in measures:  # (W_O^h)^T u_i: [B, rows, H, d_head]
            back = torch.einsum("brd,dhc->brhc", projection[:, first:last].to(operand), w_o)
        for r0 in range(first, last, step):
            r1 = min(last, r0 + step)
            o0, o1 = r0 - first, r1 - first
            weights = layer.weights[:, :, r0:r1, :r1].to(operand)  # causal: the columns after r1 - 1 are zero
            if vectors:
                t = torch.einsum("bhrj,bhje->brje", weights, paths[:, :, :r1]).to(dtype)  # [B, r, r1, D]
                for m in measures:
                    if lp_order(m) is not None:
                        out[m][:, o0:o1, :r1] = lp_scores(t, p=lp_order(m))
                    elif m == "alti":  # the columns left out are zero vectors: proximity 0, no share
                        out[m][:, o0:o1, :r1] = alti_scores(t, layer.residual[:, r0:r1], output[:, r0:r1], r0)
            if back is not None:
                scores = torch.einsum("brhc,bhjc->bhrj", back[:, o0:o1], values[:, :, :r1])  # [B, H, r, r1]
                out["logit"][:, o0:o1, :r1] = (weights * scores).sum(1).to(dtype)
    return out


def tokenwise_maps_fast(
    layer: TokenwiseTrace,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    rows: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """``[B, rows, N]`` maps of a token-wise sublayer: diagonal, from ``v_i = F(LN(x_i))`` (zero on padding).

    ℓp: ``‖v_i‖_p``; logit: ``v_i · u_i``; ALTI: 1 where row i has a share (its one vector ``T'_ii = v_i + x_i``
    moves ``y_i`` closer, or, as the reference falls back, has a non-zero ℓ1 norm), else 0.
    """
    first, last = _checked(layer, measures, projection, rows)
    bsz, n, _ = layer.residual.shape
    own = layer.mixer_output[:, first:last]
    if layer.mask is not None:
        own = own * layer.mask[:, first:last, None].to(own.dtype)
    idx = torch.arange(first, last, device=own.device)
    out = {}
    for m in measures:
        if lp_order(m) is not None:
            diag = lp_scores(own[:, :, None], p=lp_order(m))[:, :, 0]
        elif m == "alti":
            y, t_own = layer.block_output[:, first:last], own + layer.residual[:, first:last]
            proximity = y.abs().sum(-1) - (y - t_own).abs().sum(-1)
            share = torch.where(proximity > 0, proximity, t_own.abs().sum(-1))
            diag = (share > 0).to(own.dtype)
        else:  # "logit"
            diag = (own * projection[:, first:last]).sum(-1)
        maps = layer.residual.new_zeros(bsz, last - first, n)
        maps[:, idx - first, idx] = diag
        out[m] = maps
    return out
