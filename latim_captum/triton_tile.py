"""Triton kernels for :func:`latim_captum.fast.layer_maps_fast` (``kernel="triton"``).

Two ways to the ℓ1/ℓ2/ALTI sums. **Staged** (default): :func:`_gate_kernel` builds ``G`` of every causal tile once
into a ``[tiles, BI·BJ, d]`` buffer, and :func:`_project_kernel` is a plain GEMM ``G W_oᵀ`` per tile and block of
``D`` whose epilogue reduces ``T``; the blocks' sums are added, and ALTI's pairs ``j = i`` redone with the residual,
on the host. **Fused** (``config={"staged": False}``), below: no buffer, but ``G`` is rebuilt for every block of
``D``. Mamba-1's tap-folded right factors come from :func:`_fold_kernel` in either case.

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

The mixing ``M`` is made per launch of query rows ``[r0, r1)``, with the numerics (``Λ = cumsum Δ`` in float64) of
:mod:`latim_captum.fast`:

* Mamba-2: per head, ``M_{h(c)}[i, s]`` for all sources ``s < r1`` (``[B, H, rows, r1]``), in one pass of
  :func:`_mix_kernel` (``C·B`` as a ``tl.dot``, the decay and ``Δ`` in its epilogue).
* Mamba-1: per channel, around anchors every ``ANCHOR`` rows (one per row tile). Sources before the tile's anchor
  ``a`` factorise, with the taps folded into the right factor (``[anchors, B, d, R, cols]``), so that in the kernel
  ``Σ_k M_c[i, s] f(ψ_s^{(k)})_c = Σ_r left[i, c, r] folded_a[c, r, j]``; sources in ``[a, a + ANCHOR)`` use eq 15
  directly (``[B, d, rows, ANCHOR]``) and go through the taps like Mamba-2's.

Example:
    >>> maps = layer_maps_fast(trace.layers[0], "silu", ("l2", "alti"), kernel="triton")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._precision import round_tf32
from .ssm import d_inner_of
from .traces import LayerTrace, Mamba1SSM

__all__ = [
    "VARIANTS", "SUMS", "DEFAULT_CONFIG", "Workspace", "check_supported", "tile_sums", "launch_rows", "mamba2_mixing",
]  # fmt: skip

#: the Mamba layer variants (:attr:`LayerTrace.variant`) the kernel covers
VARIANTS: tuple[str, ...] = ("mamba1", "mamba2")
#: the per-pair sums :func:`tile_sums` returns, in this order along its first dimension
SUMS: tuple[str, ...] = ("sum_sq", "sum_abs", "sum_abs_res", "proximity", "logit")
#: block sizes used without autotuning (the interpreter)
DEFAULT_CONFIG = {"BI": 16, "BJ": 16, "BC": 32, "BD": 64, "num_warps": 4, "num_stages": 2}
_PRECISION = {"highest": 0, "tf32": 1, "bf16": 2}
#: the measures of the ``W_o`` product: made by the staged launches (the logit has none and is always fused)
STAGED_MEASURES: tuple[str, ...] = ("l1", "l2", "alti")
#: the tap shares in memory with the channels contiguous (``[K, B, N, d]``, as ``G``'s rows and the gate), not the
#: sequence (the kernels take any strides): on the H100, Mamba-2's step 1 5.70 against 6.36 ms (TF32) and 5.30
#: against 6.04 ms (bf16) at N = 2048 (benchmarks/gate_sweep.py); Mamba-1's the same
SHARES_CHANNELS_CONTIGUOUS = True
#: rows × sources of one program of :func:`_mix_kernel` (tl.dot needs ≥ 16 on each side; 8 warps: no spills at
#: mamba2-130m's state 128 with sm_90's ptxas)
_MIX_TILE = (64, 64)
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
    K: tl.constexpr, HEAD_DIM: tl.constexpr, STATE: tl.constexpr, STATE_P: tl.constexpr, EVEN_C: tl.constexpr,
    BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """``G[i, j, c]`` for rows ``i`` ``[BI]``, columns ``j = j0 + arange(BJ)`` and channels ``[c0, c0 + BC)``,
    ``[BI, BJ, BC]``.

    The mixing holds sources ``[base, src_end)`` (Mamba-2: ``base = 0``); Mamba-1 (``STATE = R > 0``) adds the
    sources before ``base`` through its factors. ``near``: the tile meets the band ``0 ≤ i − j < K`` where a tap's
    source is the row itself (the D skip). ``EVEN_C``: ``BC`` divides ``d_inner`` (no channel masks). ``STATE_P``:
    ``STATE`` padded to a power of two ≥ 16, the contraction of Mamba-1's factor product as one batched ``tl.dot``
    (tiles of at least 16 × 16; smaller ones add the ``R`` products one by one)."""
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
            if BI >= 16 and BJ >= 16:  # one [BI, R] @ [R, BJ] product per channel, batched over the chunk
                r = tl.arange(0, STATE_P)
                r_ok = r < STATE
                c_ok1 = _in_range(c, d_inner, EVEN_C)
                left = tl.load(
                    left_ptr + (i - r0)[None, :, None] * sl_i + c[:, None, None] * sl_c + r[None, None, :] * sl_r,
                    mask=(i < r1)[None, :, None] & c_ok1[:, None, None] & r_ok[None, None, :],
                    other=0.0,
                )  # [BC, BI, R]
                fold = tl.load(
                    fold_ptr + c[:, None, None] * sf_c + r[None, :, None] * sf_r + j[None, None, :] * sf_j,
                    mask=c_ok1[:, None, None] & r_ok[None, :, None] & (j < base)[None, None, :],
                    other=0.0,
                )  # [BC, R, BJ]
                values += tl.permute(tl.dot(left, fold, input_precision="ieee"), (1, 2, 0))
            else:
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
def _round_to(v, PRECISION: tl.constexpr):
    """``v`` rounded to the operand precision of the ``W_o`` product (TF32 or bf16, kept in fp32; IEEE: as is)."""
    if PRECISION == 1:
        v = _round_tf32(v)
    elif PRECISION == 2:
        v = _round_bf16(v)
    return v


@triton.jit
def _dot(g, w, acc, PRECISION: tl.constexpr, INTERPRET: tl.constexpr, ROUNDED: tl.constexpr):
    """``acc + g @ w`` in fp32: IEEE fp32 inputs (0), TF32 (1) or bf16 (2). ``ROUNDED``: ``g`` already holds values
    of that precision (the staged kernels round it once, when they store it).

    TF32: ``g`` is rounded to nearest here and ``w`` before the launch. Handed fp32 operands, Triton's TF32 dot keeps
    their leading bits without rounding (triton-lang/triton#4574: markedly less accurate than PyTorch's TF32), a
    biased error that ALTI's normalisation amplifies; rounded, the products are those of cuBLAS's TF32 and of the
    CPU emulation the tests use (the interpreter multiplies the rounded operands exactly)."""
    if PRECISION == 1:
        if not ROUNDED:
            g = _round_tf32(g)
        out = tl.dot(g, w, acc, input_precision="tf32")
    elif PRECISION == 2:
        if INTERPRET:  # the interpreter truncates fp32 → bf16 and multiplies bf16 bit patterns: round here, in fp32
            if not ROUNDED:
                g = _round_bf16(g)
            out = tl.dot(g.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        elif ROUNDED:
            out = tl.dot(g, w, acc)
        else:
            out = tl.dot(g.to(tl.bfloat16, fp_downcast_rounding="rtne"), w, acc)
    else:
        out = tl.dot(g, w, acc, input_precision="ieee")
    return out


@triton.jit
def _tile_sources(row_tile, r0, r1, STATE: tl.constexpr, ANCHOR: tl.constexpr, BI: tl.constexpr):
    """``(anchor, base, src_end)``: the mixing of the row tile holds sources ``[base, src_end)`` (Mamba-2: all of
    them; Mamba-1: ``[anchor row, anchor row + ANCHOR)``, earlier ones through the anchor's factors)."""
    if STATE > 0:
        anchor = (row_tile * BI) // ANCHOR
        base = r0 + anchor * ANCHOR
        src_end = tl.minimum(base + ANCHOR, r1)
    else:
        anchor = 0
        base = 0
        src_end = r1
    return anchor, base, src_end


@triton.jit
def _add_block_sums(
    acc, ip, row_ok, own, o0, d_model,
    y_ptr, sy_i, sy_o, x_ptr, sx_i, sx_o,  # this sequence's block output y and residual x [N, D]
    sum_sq, sum_abs, sum_abs_res, proximity,
    WANT_L1: tl.constexpr, WANT_L2: tl.constexpr, WANT_ALTI: tl.constexpr, RESIDUAL: tl.constexpr,
    BD: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """The :data:`SUMS` of ``T[p, o]`` for one block of ``o`` (``acc``, ``[pairs, BD]``, pair ``p`` of query row
    ``ip[p]``) added to the running ``[pairs]`` ones: sums over ``D`` are additive across blocks. Everything stays in
    the GEMM accumulator's 2-D layout (a ``[BI, BJ, BD]`` view costs registers and shuffles).

    ``RESIDUAL``: ALTI's ``T'_i(x_i) = T_i(x_i) + x_i`` is formed here; otherwise ``T' = T`` for every pair, and the
    caller redoes the pairs ``j = i`` (a ``[pairs, BD]`` residual tile would not fit in registers beside ``acc``)."""
    o = o0 + tl.arange(0, BD)
    o_ok = _in_range(o, d_model, EVEN_D)
    if WANT_L2:
        sum_sq += tl.sum(acc * acc, axis=1)
    if WANT_L1 or (WANT_ALTI and not RESIDUAL):
        sum_abs += tl.sum(tl.abs(acc), axis=1)
    if WANT_ALTI:
        io_ok = row_ok[:, None] & o_ok[None, :]
        y = tl.load(y_ptr + ip[:, None] * sy_i + o[None, :] * sy_o, mask=io_ok, other=0.0)
        if RESIDUAL:  # only the pairs j = i read the residual
            acc += tl.load(x_ptr + ip[:, None] * sx_i + o[None, :] * sx_o, mask=io_ok & own[:, None], other=0.0)
            sum_abs_res += tl.sum(tl.abs(acc), axis=1)
        # |y| − |y − T'| is exactly 0 where T' = 0 (j > i, padding), whatever the order of the sums
        proximity += tl.sum(tl.abs(y) - tl.abs(y - acc), axis=1)
    return sum_sq, sum_abs, sum_abs_res, proximity


@triton.jit
def _store_sums(
    out_p, so_q, keep, sum_sq, sum_abs, sum_abs_res, proximity,
    WANT_L1: tl.constexpr, WANT_L2: tl.constexpr, WANT_ALTI: tl.constexpr,
):  # fmt: skip
    if WANT_L2:
        tl.store(out_p, sum_sq, mask=keep)
    if WANT_L1:
        tl.store(out_p + so_q, sum_abs, mask=keep)
    if WANT_ALTI:
        tl.store(out_p + 2 * so_q, sum_abs_res, mask=keep)
        tl.store(out_p + 3 * so_q, proximity, mask=keep)


@triton.jit
def _pairs(i0, j0, r1, BI: tl.constexpr, BJ: tl.constexpr):
    """Query row, source column, row in range, causal-and-in-range and ``j = i`` of the ``BI·BJ`` pairs of a tile,
    row-major (the layout of ``G`` in the ``W_o`` product)."""
    p = tl.arange(0, BI * BJ)
    ip = i0 + p // BJ
    jp = j0 + p % BJ
    row_ok = ip < r1
    return ip, jp, row_ok, row_ok & (jp <= ip), ip == jp


@triton.jit(do_not_specialize=["r0", "r1"])  # one binary whatever the launch's rows
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
    EVEN_C: tl.constexpr, EVEN_D: tl.constexpr, STATE_P: tl.constexpr,  # from the arguments (triton.heuristics)
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
        anchor, base, src_end = _tile_sources(row_tile, r0, r1, STATE, ANCHOR, BI)
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
                    i, j, j0, c0, r0, r1, d_inner, near, K, HEAD_DIM, STATE, STATE_P, EVEN_C, BI, BJ, BC,
                )  # fmt: skip
                u = tl.load(
                    u_ptr + b * su_b + (i - r0)[:, None] * su_i + c[None, :] * su_c,
                    mask=row_ok[:, None] & _in_range(c, d_inner, EVEN_C)[None, :],
                    other=0.0,
                )
                logit += tl.sum(g * u[:, None, :], axis=2)
            tl.store(out_b + 4 * so_q, logit, mask=keep)
        else:
            ip, jp, row_ok_p, keep_p, own = _pairs(i0, j0, r1, BI, BJ)
            sum_sq = tl.zeros([BI * BJ], dtype=tl.float32)
            sum_abs = tl.zeros([BI * BJ], dtype=tl.float32)
            sum_abs_res = tl.zeros([BI * BJ], dtype=tl.float32)
            proximity = tl.zeros([BI * BJ], dtype=tl.float32)
            for o0 in range(0, d_model, BD):
                o = o0 + tl.arange(0, BD)
                o_ok = _in_range(o, d_model, EVEN_D)
                acc = tl.zeros([BI * BJ, BD], dtype=tl.float32)
                for c0 in range(0, d_inner, BC):
                    c = c0 + tl.arange(0, BC)
                    g = _gated_chunk(
                        mix_b, sm_h, sm_i, sm_s, base, src_end, left_b, sl_i, sl_c, sl_r, fold_b, sf_c, sf_r, sf_j,
                        sh_b, ss_k, ss_c, ss_s, gate_b, sg_i, sg_c, skip_ptr,
                        i, j, j0, c0, r0, r1, d_inner, near, K, HEAD_DIM, STATE, STATE_P, EVEN_C, BI, BJ, BC,
                    )  # fmt: skip
                    w = tl.load(
                        w_ptr + o[None, :] * sw_o + c[:, None] * sw_c,
                        mask=_in_range(c, d_inner, EVEN_C)[:, None] & o_ok[None, :],
                        other=0.0,
                    )  # [BC, BD] = W_oᵀ
                    acc = _dot(tl.reshape(g, [BI * BJ, BC]), w, acc, PRECISION, INTERPRET, False)
                sum_sq, sum_abs, sum_abs_res, proximity = _add_block_sums(
                    acc, ip, row_ok_p, own, o0, d_model, y_ptr + b * sy_b, sy_i, sy_o, x_ptr + b * sx_b, sx_i, sx_o,
                    sum_sq, sum_abs, sum_abs_res, proximity, WANT_L1, WANT_L2, WANT_ALTI, True, BD, EVEN_D,
                )  # fmt: skip
            out_p = out_ptr + b * so_b + (ip - r0) * so_i + jp * so_j
            _store_sums(out_p, so_q, keep_p, sum_sq, sum_abs, sum_abs_res, proximity, WANT_L1, WANT_L2, WANT_ALTI)


@triton.jit
def _tile_of(tiles_ptr, t, r0, BI: tl.constexpr, BJ: tl.constexpr):
    """Sequence, row tile, first row and first column of entry ``t`` of the causal tile list ``[T, 3]``."""
    b = tl.load(tiles_ptr + 3 * t)
    row_tile = tl.load(tiles_ptr + 3 * t + 1)
    col_tile = tl.load(tiles_ptr + 3 * t + 2)
    return b, row_tile, r0 + row_tile * BI, col_tile * BJ


@triton.jit(do_not_specialize=["r0", "r1"])  # one binary whatever the launch's rows
def _gate_kernel(
    mix_ptr, sm_b, sm_h, sm_i, sm_s,  # as _tile_kernel
    left_ptr, sl_b, sl_i, sl_c, sl_r,
    fold_ptr, sf_t, sf_b, sf_c, sf_r, sf_j,
    sh_ptr, ss_k, ss_b, ss_c, ss_s,
    gate_ptr, sg_b, sg_i, sg_c,
    skip_ptr,
    tiles_ptr,  # [T, 3] int32: sequence, row tile, column tile of each causal tile
    g_ptr, st_t, st_p, st_c,  # [T, BI·BJ, d] gated values, pairs (i, j) row-major in the tile
    r0, r1, d_inner,
    K: tl.constexpr, HEAD_DIM: tl.constexpr, STATE: tl.constexpr, ANCHOR: tl.constexpr,
    PRECISION: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr,
    EVEN_C: tl.constexpr, STATE_P: tl.constexpr,  # from the arguments (triton.heuristics)
):  # fmt: skip
    """Staged, step 1: ``G`` of one causal tile and one chunk of ``BC`` channels, rounded once to the precision of the
    ``W_o`` product and stored (bf16 halves the bytes)."""
    t = tl.program_id(0)
    c0 = tl.program_id(1) * BC
    b, row_tile, i0, j0 = _tile_of(tiles_ptr, t, r0, BI, BJ)
    i = i0 + tl.arange(0, BI)
    j = j0 + tl.arange(0, BJ)
    anchor, base, src_end = _tile_sources(row_tile, r0, r1, STATE, ANCHOR, BI)
    g = _gated_chunk(
        mix_ptr + b * sm_b, sm_h, sm_i, sm_s, base, src_end, left_ptr + b * sl_b, sl_i, sl_c, sl_r,
        fold_ptr + anchor * sf_t + b * sf_b, sf_c, sf_r, sf_j, sh_ptr + b * ss_b, ss_k, ss_c, ss_s,
        gate_ptr + b * sg_b, sg_i, sg_c, skip_ptr,
        i, j, j0, c0, r0, r1, d_inner, j0 + BJ + K - 2 >= i0, K, HEAD_DIM, STATE, STATE_P, EVEN_C, BI, BJ, BC,
    )  # fmt: skip
    g = _round_to(tl.reshape(g, [BI * BJ, BC]), PRECISION)  # rounded: the cast to bf16 below is exact
    p = tl.arange(0, BI * BJ)
    c = c0 + tl.arange(0, BC)
    dest = g_ptr + t.to(tl.int64) * st_t + p[:, None] * st_p + c[None, :] * st_c  # int64: the buffer may be large
    tl.store(dest, g.to(g_ptr.dtype.element_ty), mask=_in_range(c, d_inner, EVEN_C)[None, :])


@triton.jit(do_not_specialize=["r0", "r1"])  # one binary whatever the launch's rows
def _project_kernel(
    g_ptr, st_t, st_p, st_c,  # [T, BI·BJ, d] gated values of _gate_kernel
    tiles_ptr,  # [T, 3] int32
    w_ptr, sw_o, sw_c,  # [D, d] W_o
    y_ptr, sy_b, sy_i, sy_o,  # [B, N, D] block output y
    out_ptr, so_d, so_q, so_b, so_i, so_j,  # [n_blocks, 4, B, rows, r1] the first four SUMS per block of D
    r0, r1, d_inner, d_model, n_blocks,
    WANT_L1: tl.constexpr, WANT_L2: tl.constexpr, WANT_ALTI: tl.constexpr,
    PRECISION: tl.constexpr, INTERPRET: tl.constexpr,
    BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
    EVEN_K: tl.constexpr, EVEN_D: tl.constexpr,
):  # fmt: skip
    """Staged, step 2: ``T = G W_oᵀ`` of one causal tile and one block of ``BD`` outputs, a plain
    ``[BI·BJ, d] @ [d, BD]`` GEMM reduced to the sums of that block in its epilogue. The blocks of a tile are
    neighbouring programs, so ``G`` comes from L2 after the first; the caller adds the blocks' sums (no atomics: the
    result does not depend on the schedule) and redoes ALTI's pairs ``j = i``, whose residual is left out here."""
    t = tl.program_id(0) // n_blocks
    od = tl.program_id(0) % n_blocks
    b, row_tile, i0, j0 = _tile_of(tiles_ptr, t, r0, BI, BJ)
    ip, jp, row_ok, keep, own = _pairs(i0, j0, r1, BI, BJ)
    zero = tl.zeros([BI * BJ], dtype=tl.float32)
    sum_sq, sum_abs, proximity = zero, zero, zero
    if od * BD < d_model:  # the blocks past d_model store zeros: every config writes all n_blocks (autotuning)
        p = tl.arange(0, BI * BJ)
        g_t = g_ptr + t.to(tl.int64) * st_t
        o = od * BD + tl.arange(0, BD)
        o_ok = _in_range(o, d_model, EVEN_D)
        acc = tl.zeros([BI * BJ, BD], dtype=tl.float32)
        for c0 in range(0, d_inner, BK):
            c = c0 + tl.arange(0, BK)
            c_ok = _in_range(c, d_inner, EVEN_K)
            g = tl.load(g_t + p[:, None] * st_p + c[None, :] * st_c, mask=c_ok[None, :], other=0.0)
            w_ptrs = w_ptr + o[None, :] * sw_o + c[:, None] * sw_c
            w = tl.load(w_ptrs, mask=c_ok[:, None] & o_ok[None, :], other=0.0)
            acc = _dot(g, w, acc, PRECISION, INTERPRET, True)
        sum_sq, sum_abs, _, proximity = _add_block_sums(
            acc, ip, row_ok, own, od * BD, d_model, y_ptr + b * sy_b, sy_i, sy_o, y_ptr, 0, 0,
            zero, zero, zero, zero, WANT_L1, WANT_L2, WANT_ALTI, False, BD, EVEN_D,
        )  # fmt: skip
    out_p = out_ptr + od * so_d + b * so_b + (ip - r0) * so_i + jp * so_j
    # T' = T here: ALTI's ℓ1 is the ℓ1
    _store_sums(out_p, so_q, keep, sum_sq, sum_abs, sum_abs, proximity, WANT_L1, WANT_L2, WANT_ALTI)


@triton.jit(do_not_specialize=["r0"])  # one binary whatever the launch's rows
def _fold_kernel(
    lam_ptr, sl_b, sl_i, sl_c,  # [B, N, d] Λ = cumsum Δ, float64
    a_ptr, sa_c, sa_r,  # [d, R] A
    bm_ptr, sb_b, sb_i, sb_r,  # [B, N, R] B
    dt_ptr, sd_b, sd_i, sd_c,  # [B, N, d] Δ
    sh_ptr, ss_k, ss_b, ss_c, ss_s,  # [K, B, d, N] tap shares f(ψ)
    out_ptr, so_t, so_b, so_c, so_r, so_j,  # [anchors, B, d, R, cols] folded right factors
    r0, anchor_rows, d_inner, n_seq, cols,
    K: tl.constexpr, STATE: tl.constexpr, STATE_P: tl.constexpr, BC: tl.constexpr, BJ: tl.constexpr,
):  # fmt: skip
    """Mamba-1's right factors of anchor ``a = r0 + t·anchor_rows`` with the taps folded in, for token columns
    ``j < a`` (as the PyTorch it replaces: same operations, same order)::

        folded[t, c, r, j] = Σ_k exp(A_{c,r} (Λ_{a,c} − Λ_{s,c})) B_{s,r} Δ_{s,c} f(ψ_s^{(k)})_c,  s = j+K−1−k < a

    One ``[BC, R, BJ]`` block per program; ``Λ`` differences in float64, as everywhere."""
    t = tl.program_id(0) // n_seq
    b = tl.program_id(0) % n_seq
    a = r0 + t * anchor_rows
    j0 = tl.program_id(2) * BJ
    if j0 < a:
        c = tl.program_id(1) * BC + tl.arange(0, BC)
        r = tl.arange(0, STATE_P)
        j = j0 + tl.arange(0, BJ)
        c_ok = c < d_inner
        r_ok = r < STATE
        lam_a = tl.load(lam_ptr + b * sl_b + a * sl_i + c * sl_c, mask=c_ok, other=0.0)  # [BC] float64
        decay_rate = tl.load(
            a_ptr + c[:, None] * sa_c + r[None, :] * sa_r, mask=c_ok[:, None] & r_ok[None, :], other=0.0
        )  # [BC, R]
        acc = tl.zeros([BC, STATE_P, BJ], dtype=tl.float32)
        for k in tl.static_range(K):
            s = j + (K - 1 - k)  # tap k of source s reads token j
            s_ok = s < a
            cs_ok = c_ok[:, None] & s_ok[None, :]
            lam_s = tl.load(lam_ptr + b * sl_b + s[None, :] * sl_i + c[:, None] * sl_c, mask=cs_ok, other=0.0)
            back = (lam_a[:, None] - lam_s).to(tl.float32)  # [BC, BJ], ≥ 0 where it counts
            rs_ok = r_ok[:, None] & s_ok[None, :]
            bm = tl.load(bm_ptr + b * sb_b + s[None, :] * sb_i + r[:, None] * sb_r, mask=rs_ok, other=0.0)
            dt = tl.load(dt_ptr + b * sd_b + s[None, :] * sd_i + c[:, None] * sd_c, mask=cs_ok, other=0.0)
            sh_b = sh_ptr + k * ss_k + b * ss_b
            share = tl.load(sh_b + c[:, None] * ss_c + s[None, :] * ss_s, mask=cs_ok, other=0.0)
            right = tl.exp(back[:, None, :] * decay_rate[:, :, None]) * bm[None, :, :] * dt[:, None, :]
            acc += tl.where(cs_ok[:, None, :], right * share[:, None, :], 0.0)
        out_b = out_ptr + t * so_t + b * so_b
        dest = out_b + c[:, None, None] * so_c + r[None, :, None] * so_r + j[None, None, :] * so_j
        tl.store(dest, acc, mask=c_ok[:, None, None] & r_ok[None, :, None] & (j < cols)[None, None, :])


@triton.jit(do_not_specialize=["r0", "r1"])  # one binary whatever the launch's rows
def _band_kernel(
    lam_ptr, sl_b, sl_i, sl_c,  # [B, N, d] Λ = cumsum Δ, float64
    a_ptr, sa_c, sa_r,  # [d, R] A
    bm_ptr, sb_b, sb_i, sb_r,  # [B, N, R] B
    cm_ptr, sc_b, sc_i, sc_r,  # [B, N, R] C
    dt_ptr, sd_b, sd_i, sd_c,  # [B, N, d] Δ
    out_ptr, so_b, so_c, so_i, so_s,  # [B, d, rows, anchor_rows] eq 15 near the anchors
    r0, r1, d_inner, n_seq,
    STATE: tl.constexpr, ANCHOR: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """Mamba-1's mixing between the rows and the sources of one anchor window ``[a, a + ANCHOR)`` by eq 15, as
    :func:`latim_captum.fast._mamba1_direct` (no D skip)::

        M[c, i, s] = Σ_r C_{i,r} exp(A_{c,r} (Λ_{i,c} − Λ_{s,c})) B_{s,r} · Δ_{s,c}      (a ≤ s ≤ i < a + ANCHOR)

    One ``[BC, ANCHOR, ANCHOR]`` block per program; 0 for ``s > i`` and rows past ``r1``."""
    t = tl.program_id(0) // n_seq
    b = tl.program_id(0) % n_seq
    a = r0 + t * ANCHOR
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    i = a + tl.arange(0, ANCHOR)
    src = a + tl.arange(0, ANCHOR)
    c_ok = c < d_inner
    i_ok = i < r1
    causal = (src[None, :] <= i[:, None]) & i_ok[:, None]  # [rows, sources]; s ≤ i < r1 keeps s in range
    ci_ok = c_ok[:, None] & i_ok[None, :]
    cs_ok = c_ok[:, None] & (src < r1)[None, :]
    lam_i = tl.load(lam_ptr + b * sl_b + i[None, :] * sl_i + c[:, None] * sl_c, mask=ci_ok, other=0.0)  # [BC, rows]
    lam_s = tl.load(lam_ptr + b * sl_b + src[None, :] * sl_i + c[:, None] * sl_c, mask=cs_ok, other=0.0)
    gap = (lam_i[:, :, None] - lam_s[:, None, :]).to(tl.float32)  # [BC, rows, sources], ≥ 0 where causal
    acc = tl.zeros([BC, ANCHOR, ANCHOR], dtype=tl.float32)
    for r in range(STATE):
        rate = tl.load(a_ptr + c * sa_c + r * sa_r, mask=c_ok, other=0.0)  # [BC]
        bm = tl.load(bm_ptr + b * sb_b + src * sb_i + r * sb_r, mask=src < r1, other=0.0)  # [sources]
        cm = tl.load(cm_ptr + b * sc_b + i * sc_i + r * sc_r, mask=i_ok, other=0.0)  # [rows]
        decay = tl.exp(tl.where(causal[None, :, :], gap * rate[:, None, None], float("-inf")))
        acc += decay * bm[None, None, :] * cm[None, :, None]
    dt = tl.load(dt_ptr + b * sd_b + src[None, :] * sd_i + c[:, None] * sd_c, mask=cs_ok, other=0.0)  # [BC, sources]
    acc = acc * dt[:, None, :]
    rows = i - r0
    dest = (
        out_ptr
        + b * so_b
        + c[:, None, None] * so_c
        + rows[None, :, None] * so_i
        + tl.arange(0, ANCHOR)[None, None, :] * so_s
    )
    tl.store(dest, acc, mask=c_ok[:, None, None] & i_ok[None, :, None])


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


@triton.jit(do_not_specialize=["r0", "r1"])  # one binary whatever the launch's rows
def _mix_kernel(
    c_ptr, sc_b, sc_i, sc_g, sc_n,  # C [B, N, G, S]
    b_ptr, sb_b, sb_s, sb_g, sb_n,  # B [B, N, G, S]
    lam_ptr, sl_b, sl_i, sl_h,  # Λ = cumsum Δ, float64 [B, N, H]
    a_ptr,  # A [H]
    dt_ptr, sd_b, sd_s, sd_h,  # Δ [B, N, H]
    m_ptr, sm_b, sm_h, sm_i, sm_s,  # out: M [B, H, rows, r1]
    r0, r1, heads, heads_per_group,
    STATE: tl.constexpr, STATE_P: tl.constexpr, BI: tl.constexpr, BS: tl.constexpr,
):  # fmt: skip
    """Mamba-2's causal mixing of one head, rows ``[r0, r1)`` × sources ``[0, r1)``, in one pass (eq 13)::

        M_h[i, s] = (C_i · B_s) exp(A_h (Λ_{i,h} − Λ_{s,h})) Δ_{s,h}   for s ≤ i,   0 for s > i

    (:func:`latim_captum.fast._mamba2_head_mixing` is its ``_ref``: the same operations, ``Λ`` differences in
    float64, on ``[B, H, rows, r1]`` planes it writes several times)."""
    bh = tl.program_id(2)
    b = bh // heads
    h = bh % heads
    g = h // heads_per_group
    i = r0 + tl.program_id(0) * BI + tl.arange(0, BI)
    s = tl.program_id(1) * BS + tl.arange(0, BS)
    i_ok = i < r1
    s_ok = s < r1
    causal = s[None, :] <= i[:, None]
    mix = tl.zeros([BI, BS], dtype=tl.float32)
    if tl.program_id(1) * BS <= r0 + tl.program_id(0) * BI + BI - 1:  # the tile holds a pair s ≤ i
        n = tl.arange(0, STATE_P)
        n_ok = n < STATE
        c = tl.load(
            c_ptr + b * sc_b + i[:, None] * sc_i + g * sc_g + n[None, :] * sc_n,
            mask=i_ok[:, None] & n_ok[None, :], other=0.0,
        )  # fmt: skip
        src = tl.load(
            b_ptr + b * sb_b + s[None, :] * sb_s + g * sb_g + n[:, None] * sb_n,
            mask=n_ok[:, None] & s_ok[None, :], other=0.0,
        )  # fmt: skip
        cb = tl.dot(c, src, input_precision="ieee")  # [BI, BS]
        lam_i = tl.load(lam_ptr + b * sl_b + i * sl_i + h * sl_h, mask=i_ok, other=0.0)
        lam_s = tl.load(lam_ptr + b * sl_b + s * sl_i + h * sl_h, mask=s_ok, other=0.0)
        gap = (lam_i[:, None] - lam_s[None, :]).to(tl.float32)  # float64 difference, as the reference
        rate = tl.load(a_ptr + h)
        decay = tl.exp(tl.where(causal, gap * rate, float("-inf")))
        dt = tl.load(dt_ptr + b * sd_b + s * sd_s + h * sd_h, mask=s_ok, other=0.0)
        mix = cb * decay * dt[None, :]
    dest = m_ptr + b.to(tl.int64) * sm_b + h * sm_h + (i - r0)[:, None] * sm_i + s[None, :] * sm_s
    tl.store(dest, mix, mask=i_ok[:, None] & s_ok[None, :])


def mamba2_mixing(ctx, r0: int, r1: int, workspace: Workspace | None = None) -> Tensor:
    """``M[b, h, i, s]`` of a Mamba-2 layer for rows ``[r0, r1)`` and sources ``[0, r1)``, ``[B, H, rows, r1]``
    (:func:`_mix_kernel`; equal to :func:`latim_captum.fast._mamba2_head_mixing` up to rounding), in ``workspace``
    when given.

    Example:
        >>> mixing = mamba2_mixing(ctx, 0, 128)  # doctest: +SKIP
    """
    ssm = ctx.layer.ssm
    bsz = ssm.delta.shape[0]
    heads, groups, state = ssm.A.shape[0], ssm.B.shape[2], ssm.B.shape[3]
    shape = (bsz, heads, r1 - r0, r1)
    if workspace is None:
        out = ssm.delta.new_empty(shape)
    else:
        out = workspace.take("mixing", shape, ssm.delta.dtype, ssm.delta.device, bsz * heads * workspace.most_pairs())
    bi, bs = _MIX_TILE
    grid = (triton.cdiv(r1 - r0, bi), triton.cdiv(r1, bs), bsz * heads)
    _mix_kernel[grid](
        ssm.C, *ssm.C.stride(),
        ssm.B, *ssm.B.stride(),
        ctx.lam, *ctx.lam.stride(),
        ssm.A,
        ssm.delta, *ssm.delta.stride(),
        out, *out.stride(),
        r0, r1, heads, heads // groups,
        STATE=state, STATE_P=_state_padded(state), BI=bi, BS=bs, num_warps=8,  # 4 warps spill at state 128
    )  # fmt: skip
    return out


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


def _state_padded(state: int) -> int:
    """Mamba-1's state size padded to a power of two ≥ 16 (``tl.dot``'s smallest contraction); 0 for Mamba-2."""
    return max(16, triton.next_power_of_2(state)) if state else 0


_kernel = triton.heuristics(
    {
        "EVEN_C": lambda a: a["d_inner"] % a["BC"] == 0,
        "EVEN_D": lambda a: a["d_model"] % a["BD"] == 0,
        "STATE_P": lambda a: _state_padded(a["STATE"]),
    }
)(_tile_kernel)
_autotuned = triton.autotune(
    configs=_autotune_configs(),
    key=["d_inner", "d_model", "K", "HEAD_DIM", "STATE", "ANCHOR", "MODE", "WANT_ALTI", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)(_kernel)


#: pairs per tile of the staged kernels (query rows × source columns) per variant: Mamba-2, one GEMM tile of
#: BI·BJ = 128 rows (two Hopper warpgroups of 64); Mamba-1, 16 × 16, the smallest tile whose factor product is one
#: batched tl.dot (a Mamba-1 anchor must be a multiple of BI)
STAGED_TILE: dict[str, tuple[int, int]] = {"mamba2": (8, 16), "mamba1": (16, 16)}
#: staged step 1 (gated values): (BC, num_warps); step 2 (GEMM + sums): (BK, BD, num_warps, num_stages) per pairs
#: per tile. None spills for sm_90 with 128 pairs and BD = 128; the BD = 256 ones spill a little with ALTI's
#: epilogue, none without; 256 pairs keep the accumulator at 32K elements or less
_GATE_CANDIDATES = ((16, 4), (32, 4), (32, 8), (64, 4))
_PROJECT_CANDIDATES = {
    128: ((32, 128, 8, 3), (32, 128, 8, 4), (64, 128, 8, 3), (32, 256, 8, 3), (16, 256, 8, 4)),
    256: ((32, 64, 8, 3), (32, 128, 8, 3), (16, 128, 8, 4), (64, 64, 8, 2)),
}

_gate = triton.heuristics(
    {"EVEN_C": lambda a: a["d_inner"] % a["BC"] == 0, "STATE_P": lambda a: _state_padded(a["STATE"])}
)(_gate_kernel)
_gate_autotuned = triton.autotune(
    configs=[triton.Config({"BC": bc}, num_warps=warps) for bc, warps in _GATE_CANDIDATES],
    key=["d_inner", "K", "HEAD_DIM", "STATE", "ANCHOR", "PRECISION", "BI", "BJ"],
)(_gate)
_project = triton.heuristics(
    {"EVEN_K": lambda a: a["d_inner"] % a["BK"] == 0, "EVEN_D": lambda a: a["d_model"] % a["BD"] == 0}
)(_project_kernel)


def _prune_project(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The step-2 candidates of the tile's number of pairs."""
    kept = _PROJECT_CANDIDATES[kwargs["BI"] * kwargs["BJ"]]
    return [c for c in configs if (c.kwargs["BK"], c.kwargs["BD"], c.num_warps, c.num_stages) in kept]


_project_autotuned = triton.autotune(
    configs=[
        triton.Config({"BK": bk, "BD": bd}, num_warps=warps, num_stages=stages)
        for bk, bd, warps, stages in sorted(set(sum(_PROJECT_CANDIDATES.values(), ())))
    ],
    key=["d_inner", "d_model", "WANT_L1", "WANT_L2", "WANT_ALTI", "PRECISION", "BI", "BJ"],
    prune_configs_by={"early_config_prune": _prune_project},
)(_project)


@dataclass
class Workspace:
    """Buffers reused by every launch of one layer's query rows ``[start, stop)``, ``rows`` per launch.

    Each buffer is sized once, for the largest launch. Sized per launch, a buffer grows with the launch's last row;
    the allocator, short of memory for a new block of a budget's size, then frees its cache (a device-wide sync) at
    every launch: at N = 32768 that left the GPU idle 70 % of the time.

    Example:
        >>> ws = Workspace(0, 100, 40)
        >>> ws.most_pairs(), ws.most_tiles(8, 16)   # the launch [40, 80) and the last one [80, 100)
        (3200, 21)
    """

    start: int
    stop: int
    rows: int
    buffers: dict[str, Tensor] = field(default_factory=dict)

    def _largest_launches(self) -> list[tuple[int, int]]:
        """The last launch and the full one before it: every other launch has as many rows and an earlier end."""
        last = self.start + (self.stop - self.start - 1) // self.rows * self.rows
        return [(last, self.stop)] + ([(last - self.rows, last)] if last > self.start else [])

    def most_pairs(self) -> int:
        """Most ``rows × columns`` of one launch (columns ``[0, r1)``)."""
        return max((r1 - r0) * r1 for r0, r1 in self._largest_launches())

    def most_tiles(self, bi: int, bj: int) -> int:
        """Most causal ``bi × bj`` tiles of one launch, per sequence."""
        return max(int(_causal_tile_counts(r0, r1, bi, bj)[0].sum()) for r0, r1 in self._largest_launches())

    def take(self, key: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device, capacity: int) -> Tensor:
        """A contiguous ``shape`` view of buffer ``key`` (uninitialised), allocated with ``capacity`` elements
        (or ``shape``'s, if more) the first time."""
        numel = math.prod(shape)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            self.buffers.pop(key, None)
            buffer = None  # the old block is free before the new one is allocated
            buffer = torch.empty(max(numel, capacity), dtype=dtype, device=device)
            self.buffers[key] = buffer
        return buffer[:numel].view(shape)


def _causal_tile_counts(r0: int, r1: int, bi: int, bj: int) -> tuple[Tensor, Tensor]:
    """Per row tile of rows ``[r0, r1)`` (CPU int64): how many column tiles hold a causal pair (those with ``j0 ≤`` its
    last row), and where its tiles start in one sequence's part of :func:`causal_tiles`."""
    row_tiles = torch.arange(triton.cdiv(r1 - r0, bi))
    per_row_tile = (torch.clamp(r0 + (row_tiles + 1) * bi, max=r1) - 1) // bj + 1
    return per_row_tile, torch.cumsum(per_row_tile, 0) - per_row_tile


@functools.lru_cache(maxsize=64)
def _tile_layout(bsz: int, r0: int, r1: int, bi: int, bj: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """:func:`causal_tiles` and the first tile of each row tile, on ``device``.

    Built on the host and cached: on CUDA, sizing ``repeat_interleave``'s output from device counts would stall the
    host on the GPU's queue at every launch, leaving the GPU idle while the next kernels are enqueued.
    """
    per_row_tile, starts = _causal_tile_counts(r0, r1, bi, bj)
    rows = torch.repeat_interleave(torch.arange(len(per_row_tile)), per_row_tile)
    cols = torch.arange(len(rows)) - torch.repeat_interleave(starts, per_row_tile)
    one = torch.stack([rows, cols], 1)
    seqs = torch.arange(bsz).repeat_interleave(len(one))
    tiles = torch.cat([seqs[:, None], one.repeat(bsz, 1)], 1).to(torch.int32)
    return tiles.to(device), starts.to(device)


def causal_tiles(bsz: int, r0: int, r1: int, bi: int, bj: int, device: torch.device) -> Tensor:
    """``[T, 3]`` int32 (sequence, row tile, column tile) of every ``bi × bj`` tile of rows ``[r0, r1)`` × columns
    ``[0, r1)`` that holds a causal pair (``j0 ≤`` the tile's last row), row tile by row tile.

    Example:
        >>> causal_tiles(1, 0, 4, 2, 2, torch.device("cpu")).tolist()
        [[0, 0, 0], [0, 1, 0], [0, 1, 1]]
    """
    return _tile_layout(bsz, r0, r1, bi, bj, torch.device(device))[0]


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
    # the mixing (one plane per head, written once by _mix_kernel: no temporaries) and the sums
    return max(heads, len(SUMS)) * bsz * n, (heads + len(SUMS)) * bsz * n


def _staged_row_bytes(layer: LayerTrace, measures: Sequence[str], precision: str) -> int:
    """Bytes per query row of the staged kernels' buffers: ``G`` (``[N, d]``, bf16 with ``precision="bf16"``) and
    the sums per block of ``D``; 0 for measures without the ``W_o`` product (no staged launch)."""
    if not any(m in STAGED_MEASURES for m in measures):
        return 0
    bsz, n, d_model = layer.residual.shape
    bi, bj = STAGED_TILE[layer.variant]
    gated = (n + bj) * d_inner_of(layer.ssm) * (2 if precision == "bf16" else 4)
    blocks = 4 * _project_blocks(d_model, bi * bj) * n * 4
    return bsz * (gated + blocks)


def launch_rows(
    layer: LayerTrace,
    budget_bytes: int,
    anchor_rows: int = 16,
    measures: Sequence[str] = ("l2",),
    precision: str = "highest",
) -> int:
    """Query rows per launch whose mixing, factors, sums and staged buffers (:func:`_staged_row_bytes`) fit
    ``budget_bytes`` and int32 offsets (Mamba-1: a multiple of ``anchor_rows`` when more than one anchor fits;
    Mamba-2: a multiple of the staged row tile when more than one tile fits).

    Example:
        >>> launch_rows(layer, 2**30)  # doctest: +SKIP
        96
    """
    n = layer.residual.shape[1]
    largest, total = _row_elements(layer, anchor_rows)
    row_bytes = total * layer.residual.element_size() + _staged_row_bytes(layer, measures, precision)
    rows = max(1, min(n, budget_bytes // row_bytes, _MAX_ELEMENTS // largest))
    mamba1 = isinstance(layer.ssm, Mamba1SSM)
    # Mamba-2: a partial last row tile computes its masked rows all the same (26 rows in tiles of 8 waste 6 of 32)
    step = anchor_rows if mamba1 else STAGED_TILE[layer.variant][0]
    if rows < n and (mamba1 or rows >= step):
        rows = max(step, rows - rows % step)
    return rows


def _mamba1_factors(ctx, r0: int, r1: int, anchor_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-1 mixing for rows ``[r0, r1)`` with anchors ``r0, r0 + anchor_rows, …`` (as
    :func:`latim_captum.fast._mamba1_anchor_rows`): left factors ``[B, rows, d, R]``, folded right factors
    ``[anchors, B, d, R, cols]`` (columns before each anchor; :func:`_fold_kernel`, one pass) and eq 15 near the
    anchors ``[B, d, rows, anchor_rows]`` (no D skip: the kernel adds it; :func:`_band_kernel`, one pass, for anchors
    that are powers of two, else PyTorch)."""
    from .fast import _mamba1_direct

    ssm = ctx.layer.ssm
    bsz, _, d = ssm.delta.shape
    state = ssm.A.shape[-1]
    dtype = ssm.delta.dtype
    anchors = list(range(r0, r1, anchor_rows))
    rows = torch.arange(r0, r1, device=ssm.delta.device)
    anchor_of_row = r0 + (rows - r0) // anchor_rows * anchor_rows
    ahead = (ctx.lam[:, r0:r1] - ctx.lam[:, anchor_of_row]).to(dtype)  # [B, r, d], ≥ 0
    left = torch.exp(ahead[..., None] * ssm.A) * ssm.C[:, r0:r1, None, :]  # [B, r, d, R]
    cols = max(1, anchors[-1])
    folded = ssm.delta.new_empty(len(anchors), bsz, d, state, cols)  # only columns j < anchor are read
    if anchors[-1] > 0:
        block_c, block_j = 16, 32
        grid = (len(anchors) * bsz, triton.cdiv(d, block_c), triton.cdiv(cols, block_j))
        _fold_kernel[grid](
            ctx.lam, *ctx.lam.stride(),
            ssm.A, *ssm.A.stride(),
            ssm.B, *ssm.B.stride(),
            ssm.delta, *ssm.delta.stride(),
            ctx.staged_shares, *ctx.staged_shares.stride(),
            folded, *folded.stride(),
            r0, anchor_rows, d, bsz, cols,
            K=ctx.shares.shape[0], STATE=state, STATE_P=_state_padded(state), BC=block_c, BJ=block_j,
        )  # fmt: skip
    direct = ssm.delta.new_empty(bsz, d, r1 - r0, anchor_rows)  # every row of the launch is written
    if anchor_rows & (anchor_rows - 1) == 0:  # a power of two: one Triton pass (tl.arange's sizes)
        block_c = max(1, min(16, 4096 // anchor_rows**2))
        _band_kernel[(len(anchors) * bsz, triton.cdiv(d, block_c))](
            ctx.lam, *ctx.lam.stride(),
            ssm.A, *ssm.A.stride(),
            ssm.B, *ssm.B.stride(),
            ssm.C, *ssm.C.stride(),
            ssm.delta, *ssm.delta.stride(),
            direct, *direct.stride(),
            r0, r1, d, bsz,
            STATE=state, ANCHOR=anchor_rows, BC=block_c, num_warps=8 if anchor_rows >= 64 else 4,
        )  # fmt: skip
        return left, folded, direct
    direct.zero_()
    for a in anchors:
        b = min(r1, a + anchor_rows)
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
    workspace: Workspace | None = None,
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
            CUDA, :data:`DEFAULT_CONFIG` in the interpreter. Staged, ``BI × BJ`` is the pair tile of both steps,
            ``BC`` the channel chunk of step 1 and of step 2's GEMM, ``BD`` step 2's block of ``D``. The key
            ``"staged"`` (default ``True``; alone, it keeps the autotuning) picks how the ℓ1/ℓ2/ALTI sums are made:
            in two steps (``G`` of the causal tiles stored once, then a GEMM whose epilogue reduces ``T``), or in
            one fused kernel that rebuilds ``G`` in registers for each block of ``D`` (no buffer). The logit has no
            ``W_o`` product and is always fused.
        workspace: buffers of the staged kernels and of Mamba-2's mixing shared by the launches of one layer
            (:class:`Workspace`); default: allocated for this launch.
    """
    layer = ctx.layer
    bsz, _, d_model = layer.residual.shape
    d_inner = ctx.gate.shape[1]
    mamba1 = isinstance(layer.ssm, Mamba1SSM)
    anchor_rows = ctx.anchor_rows if mamba1 else 0
    interpret = _interpreting()
    config = dict(config or {})
    staged = config.pop("staged", True)
    if not config:
        config = DEFAULT_CONFIG if interpret else None
    staged_w = staged and any(m in STAGED_MEASURES for m in measures)
    fused_bi = min(c[0] for c in _CANDIDATES["mamba1"])
    if config is not None:
        row_blocks = {config["BI"]}
    else:  # the fused launches (logit, or everything unstaged) are autotuned down to BI = fused_bi
        fused = "logit" in measures or not staged_w
        row_blocks = ({fused_bi} if fused else set()) | ({STAGED_TILE[layer.variant][0]} if staged_w else set())
    if mamba1 and any(anchor_rows % bi for bi in row_blocks):
        raise ValueError(
            f"anchor_rows={anchor_rows} must be a multiple of the kernel's row block BI ({max(row_blocks)}"
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
        mixing = mamba2_mixing(ctx, r0, r1, workspace)  # [B, H, rows, r1]
        left, folded = sums, sums[..., None]  # not read
        head_dim, state = layer.ssm.head_dim, 0
    gate = layer.out_gate  # [B, N, d]
    out_weight = layer.out_weight  # rounded once here for the reduced precisions (G is rounded in the kernels)
    if precision == "bf16":
        out_weight = out_weight.to(torch.bfloat16)
    elif precision == "tf32":
        out_weight = round_tf32(out_weight)
    y, x = layer.block_output, layer.residual
    u = wu if wu is not None else sums[0]  # not read without the logit
    want = dict(WANT_L1="l1" in measures, WANT_L2="l2" in measures, WANT_ALTI="alti" in measures)
    shape = dict(K=ctx.shares.shape[0], HEAD_DIM=head_dim, STATE=state, ANCHOR=anchor_rows)

    def gated_args(shares: Tensor) -> tuple:
        return (
            mixing, *mixing.stride(),
            left, *left.stride(),
            folded, *folded.stride(),
            shares, *shares.stride(),
            gate, *gate.stride(),
            ctx.skip,
        )  # fmt: skip

    modes = ([0] if any(want.values()) else []) + ([1] if "logit" in measures else [])
    for mode in modes:
        if mode == 1 and wu is None:
            raise ValueError("the logit sums need wu = W_oᵀ u_i")
        if mode == 0 and staged_w:
            _staged_sums(
                layer, gated_args(ctx.staged_shares), sums, out_weight, r0, r1, precision, shape, want, config,
                interpret, workspace,
            )  # fmt: skip
            continue
        args = (
            *gated_args(ctx.shares),
            out_weight, *out_weight.stride(),
            y, *y.stride(),
            x, *x.stride(),
            u, *u.stride(),
            sums, *sums.stride(),
            r0, r1, d_inner, d_model,
        )  # fmt: skip
        common = dict(**shape, **want, PRECISION=_PRECISION[precision], INTERPRET=interpret)
        if config is None:
            grid = lambda meta: (triton.cdiv(r1 - r0, meta["BI"]) * triton.cdiv(r1, meta["BJ"]), bsz)  # noqa: E731
            _autotuned[grid](*args, MODE=mode, **common)
        else:
            grid = (triton.cdiv(r1 - r0, config["BI"]) * triton.cdiv(r1, config["BJ"]), bsz)
            _kernel[grid](*args, MODE=mode, **common, **config)
    return sums


def _staged_sums(
    layer, gated_args, sums, out_weight, r0, r1, precision, shape, want, config, interpret, workspace
) -> None:
    """The ℓ1/ℓ2/ALTI :data:`SUMS` in two launches: ``G`` of every causal tile into a ``[T, BI·BJ, d]`` buffer
    (:func:`_gate_kernel`), then its ``W_o`` product and reductions per block of ``D`` (:func:`_project_kernel`),
    added here; ALTI's pairs ``j = i`` are redone here with the residual, from the same ``G``."""
    bsz, _, d_model = layer.residual.shape
    d_inner = layer.out_gate.shape[-1]
    device = layer.residual.device
    bi, bj = (config["BI"], config["BJ"]) if config is not None else STAGED_TILE[layer.variant]
    tiles = causal_tiles(bsz, r0, r1, bi, bj, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n_d = _project_blocks(d_model, bi * bj, config)
    gated_shape, blocks_shape = (len(tiles), bi * bj, d_inner), (n_d, 4, *sums.shape[1:])
    if workspace is None:
        gated = torch.empty(gated_shape, dtype=dtype, device=device)
        blocks = sums.new_empty(blocks_shape)
    else:
        most_tiles = bsz * workspace.most_tiles(bi, bj)
        gated = workspace.take("gated", gated_shape, dtype, device, most_tiles * bi * bj * d_inner)
        blocks = workspace.take("blocks", blocks_shape, sums.dtype, device, n_d * 4 * bsz * workspace.most_pairs())
    # pairs j > i are never stored (0); every config stores all n_d blocks of the others, zeros past d_model, so that
    # autotuning leaves no candidate's sums behind
    blocks.zero_()
    gate_args = (*gated_args, tiles, gated, *gated.stride(), r0, r1, d_inner)
    project_args = (
        gated, *gated.stride(),
        tiles,
        out_weight, *out_weight.stride(),
        layer.block_output, *layer.block_output.stride(),
        blocks, *blocks.stride(),
        r0, r1, d_inner, d_model, n_d,
    )  # fmt: skip
    precision_id = _PRECISION[precision]
    if config is None:
        _gate_autotuned[lambda meta: (len(tiles), triton.cdiv(d_inner, meta["BC"]))](
            *gate_args, **shape, PRECISION=precision_id, BI=bi, BJ=bj
        )
        _project_autotuned[(len(tiles) * n_d,)](
            *project_args, **want, PRECISION=precision_id, INTERPRET=interpret, BI=bi, BJ=bj
        )
    else:
        launch = {k: config[k] for k in ("num_warps", "num_stages") if k in config}
        _gate[(len(tiles), triton.cdiv(d_inner, config["BC"]))](
            *gate_args, **shape, PRECISION=precision_id, BI=bi, BJ=bj, BC=config["BC"], **launch
        )
        _project[(len(tiles) * n_d,)](
            *project_args, **want, PRECISION=precision_id, INTERPRET=interpret, BI=bi, BJ=bj,
            BK=config.get("BK", config["BC"]), BD=config["BD"], **launch,
        )  # fmt: skip
    for q, wanted in enumerate((want["WANT_L2"], want["WANT_L1"], want["WANT_ALTI"], want["WANT_ALTI"])):
        if wanted:  # the other slots were not written
            sums[q] = blocks[:, q].sum(0)
    if want["WANT_ALTI"]:
        _alti_diagonal(layer, gated, out_weight, sums, r0, r1, bi, bj)


def _project_blocks(d_model: int, pairs: int, config: dict | None = None) -> int:
    """Blocks of ``D`` in step 2's partial sums: enough for the config's block, or autotuned (``config=None``) for the
    smallest candidate block of tiles of ``pairs`` pairs. Autotuning runs configs with larger blocks too, so the
    kernel writes every block, zeros past ``d_model``."""
    smallest = config["BD"] if config is not None else min(c[1] for c in _PROJECT_CANDIDATES[pairs])
    return triton.cdiv(d_model, smallest)


def _alti_diagonal(layer, gated: Tensor, out_weight: Tensor, sums: Tensor, r0: int, r1: int, bi: int, bj: int):
    """ALTI's sums of the pairs ``j = i`` of rows ``[r0, r1)`` with the residual, ``T'_i(x_i) = W_o G[i, i] + x_i``,
    written into ``sums``; ``G[i, i]`` read from the staged buffer (the operands of the kernel's GEMM, exact products
    in float64)."""
    bsz = layer.residual.shape[0]
    device = layer.residual.device
    tiles, first = _tile_layout(bsz, r0, r1, bi, bj, device)
    rows = torch.arange(r0, r1, device=device)
    tile = first[(rows - r0) // bi] + rows // bj  # [rows]
    tile = tile + torch.arange(bsz, device=device)[:, None] * (len(tiles) // bsz)  # [B, rows]
    pair = (rows - r0) % bi * bj + rows % bj
    own = (gated[tile, pair].double() @ out_weight.double().T).float() + layer.residual[:, r0:r1]  # [B, rows, D]
    y = layer.block_output[:, r0:r1]
    local = rows - r0
    sums[2, :, local, rows] = own.abs().sum(-1)
    sums[3, :, local, rows] = (y.abs() - (y - own).abs()).sum(-1)
