"""Every ``@triton.jit`` kernel of the tiled path, with its autotuning candidates.

Two ways to the ℓ1/ℓ2/ALTI sums. **Staged** (default): :func:`gate_kernel` builds ``G`` of every causal tile once
into a ``[tiles, BI·BJ, d]`` buffer, and :func:`project_kernel` is a plain GEMM ``G W_oᵀ`` per tile and block of
``D`` whose epilogue reduces ``T``; the blocks' sums are added, and ALTI's pairs ``j = i`` redone with the residual,
by the launcher. **Fused** (:func:`tile_kernel`): no buffer, but ``G`` is rebuilt for every block of ``D``.
Mamba-1's tap-folded right factors come from :func:`fold_kernel` in either case, its band near the anchors from
:func:`band_kernel`, and Mamba-2's mixing from :func:`mix_kernel`.

One program of the fused kernel owns ``BI`` query rows × ``BJ`` source columns of one sequence, loops over
``d_model`` in blocks of ``BD`` and, inside, over ``d_inner`` in chunks of ``BC`` channels, and never stores ``G``
nor ``T``::

    G[i, j, c] = g_{i,c} Σ_k (M_c[i, s] + δ_{i,s} D_c) f(ψ_s^{(k)})_c,    s = j + K − 1 − k      (eq 21 × gate)
    T[i, j, o] = Σ_c G[i, j, c] W_o[o, c]                     (tl.dot, fp32 accumulation; TF32/bf16 inputs on request)

The epilogue of each ``D`` block adds (sums over ``D`` are additive across blocks)::

    Σ_o T²,   Σ_o |T|,   Σ_o |T'|,   Σ_o (|y_i| − |y_i − T'|),    T'[i, j] = T[i, j] + δ_ij x_i

(ℓ2, ℓ1, ALTI's ℓ1 fallback and its proximity). The logit measure ``Δ_ij = Σ_c (W_oᵀ u_i)_c G[i, j, c]`` needs no
``W_o`` product: the same kernel with ``MODE=1`` reduces ``G`` against ``W_oᵀ u_i`` instead.

The mixing ``M`` has the numerics (``Λ = cumsum Δ`` in float64) of :mod:`latim_captum.maps.tiles`:

* Mamba-2: per head, ``M_{h(c)}[i, s]`` for all sources ``s < r1`` (``[B, H, rows, r1]``), ``C·B`` as a ``tl.dot``,
  the decay and ``Δ`` in the epilogue.
* Mamba-1: per channel, around anchors every ``ANCHOR`` rows (one per row tile). Sources before the tile's anchor
  ``a`` factorise, with the taps folded into the right factor (``[anchors, B, d, R, cols]``), so that in the kernel
  ``Σ_k M_c[i, s] f(ψ_s^{(k)})_c = Σ_r left[i, c, r] folded_a[c, r, j]``; sources in ``[a, a + ANCHOR)`` use eq 15
  directly (``[B, d, rows, ANCHOR]``) and go through the taps like Mamba-2's.

Measured configurations and timings are in ``docs/performance.md``; the launchers are in
:mod:`latim_captum.maps.triton.launch`.
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

__all__ = [
    "CANDIDATES",
    "GATE_CANDIDATES",
    "PROJECT_CANDIDATES",
    "STAGED_TILE",
    "MIX_TILE",
    "state_padded",
    "autotune_configs",
    "autotune_options",
    "prune",
    "prune_project",
    "candidate",
    "tile_kernel",
    "gate_kernel",
    "project_kernel",
    "fold_kernel",
    "band_kernel",
    "mix_kernel",
    "fused",
    "fused_autotuned",
    "gate",
    "gate_autotuned",
    "project",
    "project_autotuned",
]

#: rows × sources of one program of :func:`mix_kernel` (tl.dot needs ≥ 16 on each side; 8 warps: no register
#: spills at a state size of 128)
MIX_TILE = (64, 64)

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
def tile_kernel(
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
def gate_kernel(
    mix_ptr, sm_b, sm_h, sm_i, sm_s,  # as tile_kernel
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
def project_kernel(
    g_ptr, st_t, st_p, st_c,  # [T, BI·BJ, d] gated values of gate_kernel
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
def fold_kernel(
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
def band_kernel(
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
    :func:`latim_captum.maps.tiles.mamba1_direct` (no D skip)::

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


#: autotuning candidates of the fused kernel (BI, BJ, BC, BD, num_warps, num_stages) per variant: 8 warps, the fp32
#: accumulator [BI·BJ, BD] at most 16K elements, and no or few register spills on sm_90 (how they were chosen:
#: docs/performance.md). Large BD rebuild each chunk of G fewer times per tile, at the price of smaller tiles
CANDIDATES = {
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
def mix_kernel(
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

    (:func:`latim_captum.maps.tiles.mamba2_head_mixing` is its ``_ref``: the same operations, ``Λ`` differences in
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


def autotune_options() -> dict:
    """What every autotuner here is made with beyond its configs: ``cache_results=True`` where this Triton has it
    (3.2 and later), so the timings of each key are written to Triton's cache directory and a new process (or a
    user's next script) reuses the configuration an earlier one chose instead of tuning again at its first call."""
    return {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


def autotune_configs() -> list[triton.Config]:
    """Every fused-kernel candidate of both variants (:func:`prune` keeps a launch's own)."""
    return [
        triton.Config({"BI": bi, "BJ": bj, "BC": bc, "BD": bd}, num_warps=warps, num_stages=stages)
        for bi, bj, bc, bd, warps, stages in sorted(set(CANDIDATES["mamba2"] + CANDIDATES["mamba1"]))
    ]


def candidate(config: triton.Config) -> tuple[int, ...]:
    """``(BI, BJ, BC, BD, num_warps, num_stages)`` of a fused-kernel config, as in :data:`CANDIDATES`."""
    meta = config.kwargs
    return meta["BI"], meta["BJ"], meta["BC"], meta["BD"], config.num_warps, config.num_stages


def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The variant's candidates; Mamba-1 row tiles must not straddle an anchor (``BI`` divides ``ANCHOR``); the
    logit launch has no ``D`` blocks (one config per ``BI, BJ, BC``)."""
    variant = "mamba1" if kwargs.get("STATE", 0) else "mamba2"
    anchor = kwargs.get("ANCHOR", 0)
    kept, seen = [], set()
    for config in configs:
        meta = config.kwargs
        shape = (meta["BI"], meta["BJ"], meta["BC"]) if kwargs.get("MODE") == 1 else id(config)
        if candidate(config) not in CANDIDATES[variant] or (anchor and anchor % meta["BI"]) or shape in seen:
            continue
        seen.add(shape)
        kept.append(config)
    return kept


def state_padded(state: int) -> int:
    """Mamba-1's state size padded to a power of two ≥ 16 (``tl.dot``'s smallest contraction); 0 for Mamba-2."""
    return max(16, triton.next_power_of_2(state)) if state else 0


fused = triton.heuristics(
    {
        "EVEN_C": lambda a: a["d_inner"] % a["BC"] == 0,
        "EVEN_D": lambda a: a["d_model"] % a["BD"] == 0,
        "STATE_P": lambda a: state_padded(a["STATE"]),
    }
)(tile_kernel)
fused_autotuned = triton.autotune(
    configs=autotune_configs(),
    key=["d_inner", "d_model", "K", "HEAD_DIM", "STATE", "ANCHOR", "MODE", "WANT_ALTI", "PRECISION"],
    prune_configs_by={"early_config_prune": prune},
    **autotune_options(),
)(fused)


#: pairs per tile of the staged kernels (query rows × source columns) per variant: Mamba-2, one GEMM tile of
#: BI·BJ = 128 rows (two Hopper warpgroups of 64); Mamba-1, 16 × 16, the smallest tile whose factor product is one
#: batched tl.dot (a Mamba-1 anchor must be a multiple of BI)
STAGED_TILE: dict[str, tuple[int, int]] = {"mamba2": (8, 16), "mamba1": (16, 16)}
#: staged step 1 (gated values): (BC, num_warps); step 2 (GEMM + sums): (BK, BD, num_warps, num_stages) per pairs
#: per tile. None spills for sm_90 with 128 pairs and BD = 128; the BD = 256 ones spill a little with ALTI's
#: epilogue, none without; 256 pairs keep the accumulator at 32K elements or less
GATE_CANDIDATES = ((16, 4), (32, 4), (32, 8), (64, 4))
PROJECT_CANDIDATES = {
    128: ((32, 128, 8, 3), (32, 128, 8, 4), (64, 128, 8, 3), (32, 256, 8, 3), (16, 256, 8, 4)),
    256: ((32, 64, 8, 3), (32, 128, 8, 3), (16, 128, 8, 4), (64, 64, 8, 2)),
}

gate = triton.heuristics(
    {"EVEN_C": lambda a: a["d_inner"] % a["BC"] == 0, "STATE_P": lambda a: state_padded(a["STATE"])}
)(gate_kernel)
gate_autotuned = triton.autotune(
    configs=[triton.Config({"BC": bc}, num_warps=warps) for bc, warps in GATE_CANDIDATES],
    key=["d_inner", "K", "HEAD_DIM", "STATE", "ANCHOR", "PRECISION", "BI", "BJ"],
    **autotune_options(),
)(gate)
project = triton.heuristics(
    {"EVEN_K": lambda a: a["d_inner"] % a["BK"] == 0, "EVEN_D": lambda a: a["d_model"] % a["BD"] == 0}
)(project_kernel)


def prune_project(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """The step-2 candidates of the tile's number of pairs."""
    kept = PROJECT_CANDIDATES[kwargs["BI"] * kwargs["BJ"]]
    return [c for c in configs if (c.kwargs["BK"], c.kwargs["BD"], c.num_warps, c.num_stages) in kept]


project_autotuned = triton.autotune(
    configs=[
        triton.Config({"BK": bk, "BD": bd}, num_warps=warps, num_stages=stages)
        for bk, bd, warps, stages in sorted(set(sum(PROJECT_CANDIDATES.values(), ())))
    ],
    key=["d_inner", "d_model", "WANT_L1", "WANT_L2", "WANT_ALTI", "PRECISION", "BI", "BJ"],
    prune_configs_by={"early_config_prune": prune_project},
    **autotune_options(),
)(project)
