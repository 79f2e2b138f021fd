"""A fused Triton kernel for :func:`latim_captum.fast.layer_maps_fast` (``kernel="triton"``).

The PyTorch tiles write the gated values ``G`` (``[d, rows, cols]``) and ``T = W_o G`` (``[D, rows, cols]``) to
global memory several times before reducing them; that makes them memory-bound. Here one program owns ``BI`` query
rows × ``BJ`` source columns of one sequence, loops over ``d_model`` in blocks of ``BD`` and, inside, over
``d_inner`` in chunks of ``BC`` channels, and never stores ``G`` nor ``T``::

    G[i, j, c] = g_{i,c} Σ_k (M_c[i, s] + δ_{i,s} D_c) f(ψ_s^{(k)})_c,    s = j + K − 1 − k      (eq 21 × gate)
    T[i, j, o] = Σ_c G[i, j, c] W_o[o, c]                     (tl.dot, fp32 accumulation; TF32/bf16 inputs on request)

The epilogue of each ``D`` block adds (sums over ``D`` are additive across blocks)::

    Σ_o T²,   Σ_o |T|,   Σ_o |T'|,   Σ_o (|y_i| − |y_i − T'|),    T'[i, j] = T[i, j] + δ_ij x_i

(ℓ2, ℓ1, ALTI's ℓ1 fallback and its proximity). The logit measure ``Δ_ij = Σ_c (W_oᵀ u_i)_c G[i, j, c]`` needs no
``W_o`` product: a second launch of the same kernel (``MODE=1``) reduces ``G`` against ``W_oᵀ u_i`` instead. ALTI's
row normalisation, its ℓ1 fallback for degenerate rows and the ``√`` stay in :mod:`latim_captum.fast`.

The mixing ``M`` comes from PyTorch, per launch of query rows ``[r0, r1)``, with the helpers (and so the numerics,
``Λ = cumsum Δ`` in float64) of :mod:`latim_captum.fast`:

* Mamba-2: per head, ``M_{h(c)}[i, s]`` for all sources ``s < r1`` (``[B, H, rows, r1]``).
* Mamba-1: per channel, around anchors every ``ANCHOR`` rows (one per row tile). Sources before the tile's anchor
  ``a`` factorise, with the taps folded into the right factor (``[anchors, B, d, R, cols]``), so that in the kernel
  ``Σ_k M_c[i, s] f(ψ_s^{(k)})_c = Σ_r left[i, c, r] folded_a[c, r, j]``; sources in ``[a, a + ANCHOR)`` use eq 15
  directly (``[B, d, rows, ANCHOR]``) and go through the taps like Mamba-2's.

Example:
    >>> maps = layer_maps_fast(trace.layers[0], "silu", ("l2", "alti"), kernel="triton")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._precision import round_tf32
from .traces import LayerTrace, Mamba1SSM

__all__ = ["VARIANTS", "SUMS", "DEFAULT_CONFIG", "check_supported", "tile_sums", "launch_rows"]

#: the Mamba layer variants (:attr:`LayerTrace.variant`) the kernel covers
VARIANTS: tuple[str, ...] = ("mamba1", "mamba2")
#: the per-pair sums :func:`tile_sums` returns, in this order along its first dimension
SUMS: tuple[str, ...] = ("sum_sq", "sum_abs", "sum_abs_res", "proximity", "logit")
#: block sizes used without autotuning (the interpreter)
DEFAULT_CONFIG = {"BI": 16, "BJ": 16, "BC": 32, "BD": 64, "num_warps": 4, "num_stages": 2}
_PRECISION = {"highest": 0, "tf32": 1, "bf16": 2}
#: elements of the largest tensor the kernel indexes (its offsets are int32)
_MAX_ELEMENTS = 2**31 - 1


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _gated_chunk(
    mix_ptr, sm_h, sm_i, sm_s, base, src_end,  # this sequence's mixing [H or d, rows, sources from base]
    left_ptr, sl_i, sl_c, sl_r,  # Mamba-1: this sequence's left factors [rows, d, R]
    fold_ptr, sf_c, sf_r, sf_j,  # Mamba-1: this sequence's folded right factors of the tile's anchor [d, R, cols]
    sh_ptr, ss_k, ss_c, ss_s,  # this sequence's tap shares [K, d, N]
    gate_ptr, sg_i, sg_c,  # this sequence's output gate [N, d]
    skip_ptr,  # [d]
    i, j, j0, c0, r0, r1, d_inner, near,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, STATE: tl.constexpr, EVEN_C: tl.constexpr,
    BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """``G[i, j, c]`` for rows ``i`` ``[BI]``, columns ``j = j0 + arange(BJ)`` and channels ``[c0, c0 + BC)``,
    ``[BI, BJ, BC]``.

    The mixing holds sources ``[base, src_end)`` (Mamba-2: ``base = 0``); Mamba-1 (``STATE = R > 0``) adds the
    sources before ``base`` through its factors. ``near``: the tile meets the band ``0 ≤ i − j < K`` where a tap's
    source is the row itself (the D skip). ``EVEN_C``: ``BC`` divides ``d_inner`` (no channel masks)."""
    # every operand is indexed in the [BI, BJ, BC] layout of the result (so its broadcasts need no shuffles)
    c = c0 + tl.arange(0, BC)
    i3 = i[:, None, None]
    j3 = j[None, :, None]
    c3 = c[None, None, :]
    c_ok = _in_range(c3, d_inner, EVEN_C)
    row_ok = i3 < r1
    values = tl.zeros([BI, BJ, BC], dtype=tl.float32)
    if STATE > 0:
        if j0 < base:  # sources before the anchor: Σ_r left[i, c, r] folded[c, r, j] (taps already folded in)
            for r in range(STATE):
                left = tl.load(left_ptr + (i3 - r0) * sl_i + c3 * sl_c + r * sl_r, mask=row_ok & c_ok, other=0.0)
                fold = tl.load(fold_ptr + c3 * sf_c + r * sf_r + j3 * sf_j, mask=(j3 < base) & c_ok, other=0.0)
                values += left * fold
    if j0 + BJ + K - 2 >= base:  # some tap reads a source the mixing holds
        for k in tl.static_range(K):
            s = j3 + (K - 1 - k)  # tap k of source s reads token j
            s_ok = (s >= base) & (s < src_end)  # M[i, s] = 0 for s > i
            share = tl.load(sh_ptr + k * ss_k + s * ss_s + c3 * ss_c, mask=s_ok & c_ok, other=0.0)  # [1, BJ, BC]
            if HEAD_DIM % BC == 0:  # the chunk lies in one head: one [BI, BJ] mixing tile for all its channels
                head = c0 // HEAD_DIM
                mix_ok = row_ok & s_ok
            else:
                head = c3 // HEAD_DIM
                mix_ok = row_ok & s_ok & c_ok
            mix = tl.load(mix_ptr + head * sm_h + (i3 - r0) * sm_i + (s - base) * sm_s, mask=mix_ok, other=0.0)
            values += mix * share
            if near:  # the D skip acts on φ_i: it adds D to the diagonal s = i of M
                skip = tl.load(skip_ptr + c3, mask=c_ok, other=0.0)
                values += tl.where(i3 == s, skip * share, 0.0)
    gate = tl.load(gate_ptr + i3 * sg_i + c3 * sg_c, mask=row_ok & c_ok, other=0.0)  # [BI, 1, BC]
    return values * gate


@triton.jit
def _in_range(index, size, EVEN: tl.constexpr):
    """``index < size``, constant true (and so no mask at all) when the blocks divide ``size``."""
    if EVEN:
        ok = tl.full(index.shape, 1, tl.int1)
    else:
        ok = index < size
    return ok


@triton.jit
def _round_tf32(v):
    """``v`` rounded to the nearest TF32 value (10 mantissa bits, ties away from zero: ``cvt.rna.tf32.f32``), as
    :func:`latim_captum._precision.round_tf32`; finite inputs."""
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(v):
    """``v`` rounded to the nearest bf16 value (ties to even), kept in fp32; finite inputs."""
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).to(tl.float32, bitcast=True)


@triton.jit
def _dot(g, w, acc, PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """``acc + g @ w`` in fp32: IEEE fp32 inputs (0), TF32 (1) or bf16 (2).

    TF32: ``g`` is rounded to nearest here and ``w`` before the launch. Handed fp32 operands, Triton's TF32 dot keeps
    their leading bits without rounding (triton-lang/triton#4574: markedly less accurate than PyTorch's TF32), a
    biased error that ALTI's normalisation amplifies; rounded, the products are those of cuBLAS's TF32 and of the
    CPU emulation the tests use (the interpreter multiplies the rounded operands exactly)."""
    if PRECISION == 1:
        out = tl.dot(_round_tf32(g), w, acc, input_precision="tf32")
    elif PRECISION == 2:
        if INTERPRET:  # the interpreter truncates fp32 → bf16 and multiplies bf16 bit patterns: round here, in fp32
            out = tl.dot(_round_bf16(g), w.to(tl.float32), acc, input_precision="ieee")
        else:
            out = tl.dot(g.to(tl.bfloat16, fp_downcast_rounding="rtne"), w, acc)
    else:
        out = tl.dot(g, w, acc, input_precision="ieee")
    return out


@triton.jit
def _tile_kernel(
    mix_ptr, sm_b, sm_h, sm_i, sm_s,  # [B, H, rows, r1] (Mamba-2) or [B, d, rows, ANCHOR] (Mamba-1) mixing
    left_ptr, sl_b, sl_i, sl_c, sl_r,  # Mamba-1: [B, rows, d, R] left factors
    fold_ptr, sf_t, sf_b, sf_c, sf_r, sf_j,  # Mamba-1: [anchors, B, d, R, cols] folded right factors
    sh_ptr, ss_k, ss_b, ss_c, ss_s,  # [K, B, d, N] tap shares f(ψ)
    gate_ptr, sg_b, sg_i, sg_c,  # [B, N, d] output gate g
    skip_ptr,  # [d] D skip
    w_ptr, sw_o, sw_c,  # [D, d] W_o
    y_ptr, sy_b, sy_i, sy_o,  # [B, N, D] block output y
    x_ptr, sx_b, sx_i, sx_o,  # [B, N, D] residual x
    u_ptr, su_b, su_i, su_c,  # [B, rows, d] W_oᵀ u_i (MODE 1)
    out_ptr, so_q, so_b, so_i, so_j,  # [5, B, rows, r1] the SUMS
    r0, r1, d_inner, d_model,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, STATE: tl.constexpr, ANCHOR: tl.constexpr, MODE: tl.constexpr,
    WANT_L1: tl.constexpr, WANT_L2: tl.constexpr, WANT_ALTI: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
    BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr,
    EVEN_C: tl.constexpr, EVEN_D: tl.constexpr,  # from the block sizes (triton.heuristics)
):  # fmt: skip
    n_col_tiles = (r1 + BJ - 1) // BJ
    row_tile = tl.program_id(0) // n_col_tiles
    col_tile = tl.program_id(0) % n_col_tiles
    b = tl.program_id(1)
    i0 = r0 + row_tile * BI
    j0 = col_tile * BJ
    i = i0 + tl.arange(0, BI)
    j = j0 + tl.arange(0, BJ)
    if j0 <= i0 + BI - 1:  # the tile holds causal pairs (j ≤ i)
        if STATE > 0:  # Mamba-1: the row tile's anchor; the mixing holds sources [anchor, anchor + ANCHOR)
            anchor = (row_tile * BI) // ANCHOR
            base = r0 + anchor * ANCHOR
            src_end = tl.minimum(base + ANCHOR, r1)
        else:
            anchor = 0
            base = 0
            src_end = r1
        mix_b = mix_ptr + b * sm_b
        left_b = left_ptr + b * sl_b
        fold_b = fold_ptr + anchor * sf_t + b * sf_b
        sh_b = sh_ptr + b * ss_b
        gate_b = gate_ptr + b * sg_b
        near = j0 + BJ + K - 2 >= i0  # some i − j < K: the D skip lies in the tile
        row_ok = i < r1
        keep = row_ok[:, None] & (j[None, :] <= i[:, None])
        out_b = out_ptr + b * so_b + (i - r0)[:, None] * so_i + j[None, :] * so_j
        if MODE == 1:  # logit: Δ_ij = Σ_c (W_oᵀ u_i)_c G[i, j, c]
            logit = tl.zeros([BI, BJ], dtype=tl.float32)
            for c0 in range(0, d_inner, BC):
                c = c0 + tl.arange(0, BC)
                g = _gated_chunk(
                    mix_b, sm_h, sm_i, sm_s, base, src_end, left_b, sl_i, sl_c, sl_r, fold_b, sf_c, sf_r, sf_j,
                    sh_b, ss_k, ss_c, ss_s, gate_b, sg_i, sg_c, skip_ptr,
                    i, j, j0, c0, r0, r1, d_inner, near, K, HEAD_DIM, STATE, EVEN_C, BI, BJ, BC,
                )  # fmt: skip
                u = tl.load(
                    u_ptr + b * su_b + (i - r0)[:, None] * su_i + c[None, :] * su_c,
                    mask=row_ok[:, None] & _in_range(c, d_inner, EVEN_C)[None, :],
                    other=0.0,
                )
                logit += tl.sum(g * u[:, None, :], axis=2)
            tl.store(out_b + 4 * so_q, logit, mask=keep)
        else:
            sum_sq = tl.zeros([BI, BJ], dtype=tl.float32)
            sum_abs = tl.zeros([BI, BJ], dtype=tl.float32)
            sum_abs_res = tl.zeros([BI, BJ], dtype=tl.float32)
            proximity = tl.zeros([BI, BJ], dtype=tl.float32)
            own = (i[:, None] == j[None, :])[:, :, None]
            for o0 in range(0, d_model, BD):
                o = o0 + tl.arange(0, BD)
                o_ok = _in_range(o, d_model, EVEN_D)
                acc = tl.zeros([BI * BJ, BD], dtype=tl.float32)
                for c0 in range(0, d_inner, BC):
                    c = c0 + tl.arange(0, BC)
                    g = _gated_chunk(
                        mix_b, sm_h, sm_i, sm_s, base, src_end, left_b, sl_i, sl_c, sl_r, fold_b, sf_c, sf_r, sf_j,
                        sh_b, ss_k, ss_c, ss_s, gate_b, sg_i, sg_c, skip_ptr,
                        i, j, j0, c0, r0, r1, d_inner, near, K, HEAD_DIM, STATE, EVEN_C, BI, BJ, BC,
                    )  # fmt: skip
                    w = tl.load(
                        w_ptr + o[None, :] * sw_o + c[:, None] * sw_c,
                        mask=_in_range(c, d_inner, EVEN_C)[:, None] & o_ok[None, :],
                        other=0.0,
                    )  # [BC, BD] = W_oᵀ
                    acc = _dot(tl.reshape(g, [BI * BJ, BC]), w, acc, PRECISION, INTERPRET)
                t = tl.reshape(acc, [BI, BJ, BD])  # T[i, j, o] for this block of o
                if WANT_L2:
                    sum_sq += tl.sum(t * t, axis=2)
                if WANT_L1:
                    sum_abs += tl.sum(tl.abs(t), axis=2)
                if WANT_ALTI:
                    io_ok = row_ok[:, None] & o_ok[None, :]
                    y = tl.load(y_ptr + b * sy_b + i[:, None] * sy_i + o[None, :] * sy_o, mask=io_ok, other=0.0)
                    x = tl.load(x_ptr + b * sx_b + i[:, None] * sx_i + o[None, :] * sx_o, mask=io_ok, other=0.0)
                    t = t + tl.where(own, x[:, None, :], 0.0)  # T'_i(x_i) = T_i(x_i) + x_i
                    sum_abs_res += tl.sum(tl.abs(t), axis=2)
                    # |y| − |y − T'| is exactly 0 where T' = 0 (j > i, padding), whatever the order of the sums
                    proximity += tl.sum(tl.abs(y)[:, None, :] - tl.abs(y[:, None, :] - t), axis=2)
            if WANT_L2:
                tl.store(out_b, sum_sq, mask=keep)
            if WANT_L1:
                tl.store(out_b + so_q, sum_abs, mask=keep)
            if WANT_ALTI:
                tl.store(out_b + 2 * so_q, sum_abs_res, mask=keep)
                tl.store(out_b + 3 * so_q, proximity, mask=keep)


#: autotuning candidates (BI, BJ, BC, BD, num_warps, num_stages) per variant: 8 warps, the fp32 accumulator
#: [BI·BJ, BD] at most 16K elements, those that spill little or nothing in a ptxas sweep for sm_90 (triton 3.9, TF32).
#: The last ones (BD = 256, 64 pairs per tile) rebuild each chunk of G 3 times for d_model = 768 instead of 6 or 12:
#: G, not the W_o product, dominates the measured time (Mamba-1 most), so they may win despite the smaller tiles
_CANDIDATES = {
    "mamba2": (
        (16, 16, 16, 64, 8, 2),
        (16, 16, 16, 64, 8, 3),
        (16, 16, 32, 64, 8, 2),
        (16, 16, 32, 64, 8, 3),
        (16, 16, 32, 32, 8, 2),
        (16, 16, 16, 32, 8, 2),
        (16, 32, 16, 32, 8, 2),
        (32, 16, 16, 32, 8, 2),
        (8, 16, 16, 128, 8, 2),
        (8, 16, 16, 64, 8, 2),
        (8, 8, 16, 256, 8, 2),
    ),
    "mamba1": (
        (8, 16, 16, 128, 8, 2),
        (8, 16, 16, 128, 8, 3),
        (8, 16, 16, 64, 8, 2),
        (8, 16, 32, 64, 8, 2),
        (16, 8, 16, 128, 8, 2),
        (16, 16, 16, 32, 8, 2),
        (8, 8, 16, 256, 8, 2),
        (4, 16, 16, 256, 8, 2),
    ),
}


def _autotune_configs() -> list[triton.Config]:
    return [
        triton.Config({"BI": bi, "BJ": bj, "BC": bc, "BD": bd}, num_warps=warps, num_stages=stages)
        for bi, bj, bc, bd, warps, stages in sorted(set(_CANDIDATES["mamba2"] + _CANDIDATES["mamba1"]))
    ]


def _candidate(config: triton.Config) -> tuple[int, ...]:
    meta = config.kwargs
    return meta["BI"], meta["BJ"], meta["BC"], meta["BD"], config.num_warps, config.num_stages


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The variant's candidates; Mamba-1 row tiles must not straddle an anchor (``BI`` divides ``ANCHOR``); the
    logit launch has no ``D`` blocks (one config per ``BI, BJ, BC``)."""
    variant = "mamba1" if kwargs.get("STATE", 0) else "mamba2"
    anchor = kwargs.get("ANCHOR", 0)
    kept, seen = [], set()
    for config in configs:
        meta = config.kwargs
        shape = (meta["BI"], meta["BJ"], meta["BC"]) if kwargs.get("MODE") == 1 else id(config)
        if _candidate(config) not in _CANDIDATES[variant] or (anchor and anchor % meta["BI"]) or shape in seen:
            continue
        seen.add(shape)
        kept.append(config)
    return kept


_kernel = triton.heuristics(
    {"EVEN_C": lambda a: a["d_inner"] % a["BC"] == 0, "EVEN_D": lambda a: a["d_model"] % a["BD"] == 0}
)(_tile_kernel)
_autotuned = triton.autotune(
    configs=_autotune_configs(),
    key=["d_inner", "d_model", "K", "HEAD_DIM", "STATE", "ANCHOR", "MODE", "WANT_ALTI", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)(_kernel)


def check_supported(layer: LayerTrace, measures: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming what ``kernel="triton"`` cannot do for this layer or these measures."""
    if layer.variant not in VARIANTS:
        raise ValueError(
            f"kernel='triton' covers {', '.join(VARIANTS)} layers, not {layer.variant} (layer {layer.layer}); "
            "use kernel='torch'"
        )
    if layer.residual.dtype != torch.float32:
        raise ValueError(f"kernel='triton' computes in float32, not {layer.residual.dtype}; use kernel='torch'")
    unsupported = [m for m in measures if m not in ("l1", "l2", "alti", "logit")]
    if unsupported:
        raise ValueError(f"kernel='triton' computes l1, l2, alti and logit, not {unsupported}; use kernel='torch'")
    if layer.residual.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported), not "
            f"{layer.residual.device}"
        )


def _row_elements(layer: LayerTrace, anchor: int) -> tuple[int, int]:
    """Elements per query row of one launch: of its largest tensor, and of all it allocates (with temporaries)."""
    bsz, n, _ = layer.residual.shape
    sums = len(SUMS) * bsz * n
    if isinstance(layer.ssm, Mamba1SSM):
        d, state = layer.ssm.A.shape
        folded = bsz * d * state * n // anchor + bsz * d * state  # folded right factors (+ a share of one anchor's)
        direct = bsz * d * anchor
        return max(folded, sums), folded + bsz * d * state + direct + sums
    heads = layer.ssm.A.shape[0]
    # the mixing's temporaries (Λ differences in float64, decay, C·B) count ≈ 4 planes per head
    return max(heads, len(SUMS)) * bsz * n, (4 * heads + len(SUMS)) * bsz * n


def launch_rows(layer: LayerTrace, budget_bytes: int, anchor_rows: int = 16) -> int:
    """Query rows per launch whose mixing, factors and sums fit ``budget_bytes`` and int32 offsets (Mamba-1: a
    multiple of ``anchor_rows`` when more than one anchor fits)."""
    n = layer.residual.shape[1]
    largest, total = _row_elements(layer, anchor_rows)
    rows = max(1, min(n, budget_bytes // (total * layer.residual.element_size()), _MAX_ELEMENTS // largest))
    if isinstance(layer.ssm, Mamba1SSM) and rows < n:
        rows = max(anchor_rows, rows - rows % anchor_rows)
    return rows


def _mamba1_factors(ctx, r0: int, r1: int, anchor_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-1 mixing for rows ``[r0, r1)`` with anchors ``r0, r0 + anchor_rows, …`` (as
    :func:`latim_captum.fast._mamba1_anchor_rows`): left factors ``[B, rows, d, R]``, folded right factors
    ``[anchors, B, d, R, cols]`` (columns before each anchor) and eq 15 near the anchors ``[B, d, rows, anchor_rows]``
    (no D skip: the kernel adds it)."""
    from .fast import _add_taps, _mamba1_direct

    ssm = ctx.layer.ssm
    bsz, _, d = ssm.delta.shape
    state = ssm.A.shape[-1]
    dtype = ssm.delta.dtype
    anchors = list(range(r0, r1, anchor_rows))
    rows = torch.arange(r0, r1, device=ssm.delta.device)
    anchor_of_row = r0 + (rows - r0) // anchor_rows * anchor_rows
    ahead = (ctx.lam[:, r0:r1] - ctx.lam[:, anchor_of_row]).to(dtype)  # [B, r, d], ≥ 0
    left = torch.exp(ahead[..., None] * ssm.A) * ssm.C[:, r0:r1, None, :]  # [B, r, d, R]
    folded = ssm.delta.new_zeros(len(anchors), bsz, d, state, max(1, anchors[-1]))
    direct = ssm.delta.new_zeros(bsz, d, r1 - r0, anchor_rows)
    for t, a in enumerate(anchors):
        b = min(r1, a + anchor_rows)
        if a > 0:
            back = (ctx.lam[:, a, None] - ctx.lam[:, :a]).to(dtype)  # [B, s, d], ≥ 0
            right = torch.exp(back[..., None] * ssm.A) * ssm.B[:, :a, None, :] * ssm.delta[:, :a, :, None]
            _add_taps(folded[t, ..., :a], right.permute(0, 2, 3, 1), ctx.shares, 0, a, 0)
        direct[:, :, a - r0 : b - r0, : b - a] = _mamba1_direct(ctx, a, b, a, b)
    return left, folded, direct


def tile_sums(
    ctx,
    r0: int,
    r1: int,
    measures: Sequence[str],
    *,
    precision: str = "highest",
    wu: Tensor | None = None,
    config: dict | None = None,
) -> Tensor:
    """The :data:`SUMS` of every causal pair of query rows ``[r0, r1)`` × sources ``[0, r1)``, ``[5, B, rows, r1]``.

    Args:
        ctx: the layer context of :mod:`latim_captum.fast` (tap shares ``[K, B, d, N]``, ``Λ``, gate, skip and, for
            Mamba-1, ``anchor_rows``: a multiple of ``BI``).
        r0, r1: query rows; sums of pairs ``j > i`` (and of measures not asked for) are 0.
        measures: which sums to form: ``"l2"`` → ``sum_sq``, ``"l1"`` → ``sum_abs``, ``"alti"`` → ``sum_abs_res``
            and ``proximity``, ``"logit"`` → ``logit`` (needs ``wu``).
        precision: ``"highest"`` (IEEE fp32 ``tl.dot``), ``"tf32"`` or ``"bf16"`` for the ``W_o`` product.
        wu: ``W_oᵀ u_i`` for the rows, ``[B, rows, d]`` (the logit measure).
        config: block sizes ``{"BI", "BJ", "BC", "BD"}`` (+ ``num_warps``, ``num_stages``); default: autotuned on
            CUDA, :data:`DEFAULT_CONFIG` in the interpreter.
    """
    from .fast import _mamba2_head_mixing

    layer = ctx.layer
    bsz, _, d_model = layer.residual.shape
    d_inner = ctx.gate.shape[1]
    mamba1 = isinstance(layer.ssm, Mamba1SSM)
    anchor_rows = ctx.anchor_rows if mamba1 else 0
    interpret = _interpreting()
    if config is None and interpret:
        config = DEFAULT_CONFIG
    row_block = min(c[0] for c in _CANDIDATES["mamba1"]) if config is None else config["BI"]
    if mamba1 and anchor_rows % row_block:
        raise ValueError(
            f"anchor_rows={anchor_rows} must be a multiple of the kernel's row block BI ({row_block}"
            f"{' for the autotuned kernel' if config is None else ''})"
        )
    largest, _ = _row_elements(layer, anchor_rows or 1)
    if (r1 - r0) * largest > _MAX_ELEMENTS:
        raise ValueError(f"{r1 - r0} rows per launch overflow int32 offsets; use fewer (see launch_rows)")
    sums = layer.residual.new_zeros(len(SUMS), bsz, r1 - r0, r1)
    if mamba1:
        left, folded, mixing = _mamba1_factors(ctx, r0, r1, anchor_rows)
        head_dim, state = 1, layer.ssm.A.shape[-1]
    else:
        mixing = _mamba2_head_mixing(ctx, r0, r1, 0, r1).contiguous()  # [B, H, rows, r1]
        left, folded = sums, sums[..., None]  # not read
        head_dim, state = layer.ssm.head_dim, 0
    gate = layer.out_gate  # [B, N, d]
    out_weight = layer.out_weight  # rounded once here for the reduced precisions (G is rounded in the kernel)
    if precision == "bf16":
        out_weight = out_weight.to(torch.bfloat16)
    elif precision == "tf32":
        out_weight = round_tf32(out_weight)
    y, x = layer.block_output, layer.residual
    u = wu if wu is not None else sums[0]  # not read without the logit
    common = dict(
        K=ctx.shares.shape[0],
        HEAD_DIM=head_dim,
        STATE=state,
        ANCHOR=anchor_rows,
        WANT_L1="l1" in measures,
        WANT_L2="l2" in measures,
        WANT_ALTI="alti" in measures,
        PRECISION=_PRECISION[precision],
        INTERPRET=interpret,
    )
    modes = ([0] if any(m in measures for m in ("l1", "l2", "alti")) else []) + ([1] if "logit" in measures else [])
    for mode in modes:
        if mode == 1 and wu is None:
            raise ValueError("the logit sums need wu = W_oᵀ u_i")
        args = (
            mixing, *mixing.stride(),
            left, *left.stride(),
            folded, *folded.stride(),
            ctx.shares, *ctx.shares.stride(),
            gate, *gate.stride(),
            ctx.skip,
            out_weight, *out_weight.stride(),
            y, *y.stride(),
            x, *x.stride(),
            u, *u.stride(),
            sums, *sums.stride(),
            r0, r1, d_inner, d_model,
        )  # fmt: skip
        if config is None:
            grid = lambda meta: (triton.cdiv(r1 - r0, meta["BI"]) * triton.cdiv(r1, meta["BJ"]), bsz)  # noqa: E731
            _autotuned[grid](*args, MODE=mode, **common)
        else:
            grid = (triton.cdiv(r1 - r0, config["BI"]) * triton.cdiv(r1, config["BJ"]), bsz)
            _kernel[grid](*args, MODE=mode, **common, **config)
    return sums
