"""The tiled path of a hybrid's other sublayers: attention (eq 4) and token-wise MLP/MoE.

Attention, with the softmax weights ``A`` held fixed, decomposes as ``T_i(x_j) = Σ_h A^h_ij P^h_j`` with the per-head
value paths ``P^h_j = W_O^h v^h_j``. Here the paths are made once per layer (the reference makes them again for every
row block), a block of query rows reads only the columns up to its last row (the weights are causal: the rest are
zero), and the logit term is two GEMMs that never form ``T``:

    Δ_ij = T_i(x_j) · u_i = Σ_h A^h_ij ((W_O^h)^T u_i) · v^h_j

A parallel sublayer (FalconH1: Mamba-2 and attention on the same input, summed) has ``T_i(x_j) = T^M_i(x_j) +
T^A_i(x_j)``: its ℓp and ALTI read the sum, so each tile of the Mamba part's PyTorch tiles gets the attention
part's vectors of the same tile added before the reductions; its logit term is linear and is the parts' sum.

A token-wise sublayer mixes no tokens, ``T_i(x_j) = δ_ij F(LN(x_i))``: its maps are diagonal, made from the ``[B, N,
D]`` output directly instead of ``[B, rows, N, D]`` blocks that are zero off the diagonal.

Same values as :func:`latim_captum.maps.ref.layer_maps_ref` up to rounding (``precision="highest"``).

Example:
    >>> maps = attention_maps_fast(tr.layers[1], ("l2", "alti"))                           # doctest: +SKIP
    >>> maps = tokenwise_maps_fast(tr.layers[3], ("logit",), projection=u)                  # doctest: +SKIP
    >>> maps = parallel_maps_fast(tr.layers[0], "silu_gate", ("l2", "alti"))               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from latim_captum._validation import check_rows, check_size
from latim_captum.aggregate import alti_scores, lp_order, lp_scores
from latim_captum.attention import head_values
from latim_captum.decompose import sublayer_block_rows
from latim_captum.traces import AttentionTrace, LayerTrace, ParallelTrace, TokenwiseTrace

from .options import check_measures, matmul_precision
from .tiles import auto_block, default_anchor_rows, direct_budget, free_bytes, layer_context, tile_bytes
from .torch_tiles import fill_row_block

__all__ = ["attention_maps_fast", "parallel_maps_fast", "parallel_tiled", "tokenwise_maps_fast"]


def _checked(layer, measures: Sequence[str], projection: Tensor | None, rows) -> tuple[int, int]:
    check_measures(measures)
    if "logit" in measures and projection is None:
        raise ValueError("measure 'logit' needs a projection")
    return check_rows(rows, layer.residual.shape[1])


def _head_operands(layer: AttentionTrace, last: int, operand: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-head values of the columns ``< last`` (``[B, H, last, d_head]``, kv heads repeated for grouped-query
    attention) and ``W_O`` per head (``[D, H, d_head]``), in the products' dtype."""
    heads = layer.weights.shape[1]
    values = head_values(layer.values[:, :, :last], heads).to(operand)
    return values, layer.out_weight.view(layer.out_weight.shape[0], heads, -1).to(operand)


def _value_paths(values: Tensor, w_o: Tensor) -> Tensor:
    """``P^h_j = W_O^h v^h_j``, ``[B, H, last, D]``: what token j sends through head h before the weights."""
    return torch.einsum("bhjc,ehc->bhje", values, w_o)


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
    bsz, n, _ = layer.residual.shape
    dtype = layer.residual.dtype
    operand = torch.bfloat16 if precision == "bf16" else dtype
    values, w_o = _head_operands(layer, last, operand)
    vectors = any(m != "logit" for m in measures)
    out = {m: layer.residual.new_zeros(bsz, last - first, n) for m in measures}
    output = layer.block_output
    step = block or sublayer_block_rows(layer)
    with matmul_precision(precision):
        paths = _value_paths(values, w_o) if vectors else None
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


def parallel_tiled(layer: ParallelTrace) -> bool:
    """Whether :func:`parallel_maps_fast` covers the parallel sublayer: one Mamba part beside attention parts
    (FalconH1's layout); others take the reference."""
    mambas = [part for part in layer.parts if isinstance(part, LayerTrace)]
    return len(mambas) == 1 and all(isinstance(part, (LayerTrace, AttentionTrace)) for part in layer.parts)


def parallel_maps_fast(
    layer: ParallelTrace,
    activation: str,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block: int | None = None,
    precision: str = "highest",
    rows: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """``[B, rows, N]`` maps of a parallel sublayer (one Mamba part, attention parts) on the PyTorch tiles.

    ``T_i(x_j) = T^M_i(x_j) + Σ_a Σ_h A^{a,h}_ij P^{a,h}_j`` per tile of ``block × block`` (rows × columns): the
    Mamba part's projected tile plus the attention parts' value paths weighted by the same tile of their softmax
    weights, then ℓp norms and ALTI proximities against the sublayer's ``y_i = x_i + Σ_p M_p(LN(x))_i``. The logit
    ``Δ_ij = T_i(x_j) · u_i`` is the sum of the parts' own (each part's tiles). ``precision`` is that of every
    ``W_o`` and value-path product. Same values as :func:`latim_captum.maps.ref.layer_maps_ref` up to rounding.

    Raises:
        TypeError: a layout :func:`parallel_tiled` does not cover.
    """
    if not parallel_tiled(layer):
        raise TypeError(
            "the parallel tiles cover one Mamba part beside attention parts, not "
            f"{[type(part).__name__ for part in layer.parts]}; use backend='ref'"
        )
    first, last = _checked(layer, measures, projection, rows)
    check_size("block", block)
    # the parts read the sublayer's input; ALTI's T'_ii adds the sublayer's residual (zero for ALTI without it)
    mamba = dataclasses.replace(next(part for part in layer.parts if isinstance(part, LayerTrace)),
                                residual=layer.residual)  # fmt: skip
    attentions = [part for part in layer.parts if isinstance(part, AttentionTrace)]
    bsz, n, d_model = layer.residual.shape
    dtype = layer.residual.dtype
    operand = torch.bfloat16 if precision == "bf16" else dtype
    vectors = [m for m in measures if m != "logit"]
    if block is None:  # the attention parts' tile ([B, D, r, c] vectors and [B, H, r, c] weights) beside the Mamba's
        heads = sum(part.weights.shape[1] for part in attentions)
        mamba_pair = tile_bytes(mamba, 1, 1, precision)
        extra = bsz * (2 * d_model * dtype.itemsize + heads * torch.finfo(operand).bits // 8)
        budget = free_bytes(layer.residual.device) // 2
        block = auto_block(mamba, budget * mamba_pair // (mamba_pair + extra), precision)
    out = {m: layer.residual.new_zeros(bsz, last - first, n) for m in measures}
    with torch.no_grad(), matmul_precision(precision):
        # per attention part: its weights and value paths for the columns read
        paths = [(part.weights, _value_paths(*_head_operands(part, last, operand))) for part in attentions if vectors]

        def attention_tile(r0: int, r1: int, c0: int, c1: int) -> Tensor:
            total = None
            for weights, path in paths:
                tile = torch.einsum("bhrj,bhje->berj", weights[:, :, r0:r1, c0:c1].to(operand), path[:, :, c0:c1])
                total = tile.to(dtype) if total is None else total + tile.to(dtype)
            return total

        ctx = layer_context(mamba, activation, direct_budget(mamba), default_anchor_rows(n))
        for r0 in range(first, last, block):
            r1 = min(last, r0 + block)
            wu = projection[:, r0:r1] @ mamba.out_weight if "logit" in measures else None
            fill_row_block(ctx, out, r0, r1, first, measures, block=block, wu=wu, precision=precision,
                           extra=attention_tile if paths else None, output=layer.block_output)  # fmt: skip
    if "logit" in measures:
        for part in attentions:
            out["logit"] += attention_maps_fast(part, ("logit",), projection=projection, precision=precision,
                                                rows=(first, last))["logit"]  # fmt: skip
    return out
