"""Memory-bounded LaTIM maps: tiles of (query rows × source columns), contribution vectors reduced as they are made.

The reference path (:func:`latim_captum.decompose.contributions_ref` + :func:`latim_captum.api.layer_maps`) builds
``M`` per channel for a whole row block and then ``T = [rows, N, D]``. This path never holds more than one
``rows × cols`` tile and arranges the work as batched GEMMs:

* Gated values in channel-major layout ``G[c, i, j] = g_{i,c} v_{i←j,c}`` (eq 21 times the output gate), so that
  the dominant term, ``T[:, i, j] = W_o G[:, i, j]`` (≈ 2·rows·cols·d·D FLOPs), is one ``[D, d] @ [d, rows·cols]``
  GEMM per tile (optionally in TF32 or bf16 with fp32 accumulation, reductions always in the compute dtype).
* Mamba-1 hidden attention without ``[rows, N, d, R]``: for sources ``s`` before the row block start ``a``, the
  decay factorises around ``a`` with both factors ≤ 1 (no overflow)::

      M_{i,s,c} = Σ_r [C_{i,r} e^{A_{c,r}(Λ_{i,c} − Λ_{a,c})}] [Δ_{s,c} B_{s,r} e^{A_{c,r}(Λ_{a,c} − Λ_{s,c})}]

  with ``Λ = cumsum(Δ)`` accumulated in float64 (differences of a long fp32 cumsum lose digits). The conv taps are
  folded into the right factor per source column (``W[j,c,r] = Σ_k B̃_{j+k',c,r} f(ψ^{(k)}_{j+k'})_c``), so a
  tile's gated values are one batched ``[rows, R] @ [R, cols]`` GEMM per channel. Sources inside the row block
  (the diagonal) use the direct formula on small sub-blocks.
* Mamba-2: ``M`` is per head (``[rows, cols, H]``), cheap; the taps expand it to channels.

Reductions per tile: ℓ1/ℓ2 norms, ALTI proximities ``‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1`` (normalised once a row block
is complete), and the logit measure ``Δ_ij = (W_oᵀ u_i) · G[:, i, j]`` (N²·d, no W_o GEMM).

Example:
    >>> maps = layer_maps_fast(trace.layers[0], "silu", ("l2", "alti"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ._precision import fp32_math
from ._validation import check_rows
from .aggregate import lp_order
from .decompose import tap_contributions
from .ssm import d_inner_of
from .traces import LayerTrace, Mamba1SSM

__all__ = [
    "PRECISIONS",
    "check_precision_name",
    "LatimMemoryError",
    "layer_maps_fast",
    "tile_bytes",
    "auto_block",
    "matmul_precision",
]

PRECISIONS: tuple[str, ...] = ("highest", "tf32", "bf16")
#: implementations of the tiles: PyTorch ops, or the Triton kernels of :mod:`latim_captum.triton_tile`
KERNELS: tuple[str, ...] = ("torch", "triton")
MEASURES: tuple[str, ...] = ("l1", "l2", "alti", "logit")
#: bytes a tile may use when the device cannot report its free memory (CPU)
DEFAULT_TILE_BYTES = 256 * 2**20


class LatimMemoryError(MemoryError):
    """A request cannot fit in the device's free memory; the message gives the estimate."""


def check_precision_name(precision: str) -> None:
    """``ValueError`` naming ``precision`` unless it is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Allow TF32 matmuls inside the block only when ``precision == "tf32"`` (never TF32 convolutions); the global
    flags come back afterwards."""
    check_precision_name(precision)
    with fp32_math(tf32_matmul=precision == "tf32"):
        yield


def tile_bytes(layer: LayerTrace, rows: int, cols: int, precision: str = "highest") -> int:
    """Peak bytes of one ``rows × cols`` tile: gated values, mixing, the T tile and reduction temporaries."""
    bsz, _, d_model = layer.residual.shape
    d = d_inner_of(layer.ssm)
    elem = layer.residual.element_size()
    mm_elem = 2 if precision == "bf16" else elem
    pairs = bsz * rows * (cols + layer.conv_weight.shape[-1])
    # G and the mixing / tap temporaries (≈3 copies of [d] per pair), T and |y − T'| ([D] per pair, 2 copies)
    return pairs * (3 * d * elem + d * mm_elem + 2 * d_model * max(elem, mm_elem) + 2 * d_model * elem)


def auto_block(layer: LayerTrace, budget_bytes: int | None = None, precision: str = "highest") -> int:
    """Largest square tile side (a multiple of 16 when possible) whose :func:`tile_bytes` fits ``budget_bytes``.

    The default budget is half the device's free memory on CUDA, :data:`DEFAULT_TILE_BYTES` elsewhere.
    """
    n = layer.residual.shape[1]
    if budget_bytes is None:
        budget_bytes = _free_bytes(layer.residual.device) // 2
    lo, hi = 1, n
    if tile_bytes(layer, 1, 1, precision) > budget_bytes:
        raise LatimMemoryError(
            f"even a 1×1 tile needs {tile_bytes(layer, 1, 1, precision) / 2**20:.1f} MiB, more than the "
            f"{budget_bytes / 2**20:.1f} MiB available"
        )
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tile_bytes(layer, mid, mid, precision) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo if lo < 16 or lo == n else lo - lo % 16


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return 2 * DEFAULT_TILE_BYTES


@dataclass
class _LayerContext:
    """Per-layer tensors in the layouts the tiles read (channel-major, sequence last)."""

    layer: LayerTrace
    shares: Tensor  # [K, B, d, N]
    lam: Tensor  # cumsum Δ in float64: [B, N, d] (Mamba-1) or [B, N, H] (Mamba-2)
    gate: Tensor  # [B, d, N]
    skip: Tensor  # [d]
    direct_budget: int  # elements for the Mamba-1 diagonal sub-blocks
    anchor_rows: int  # Mamba-1 rows sharing one factorisation anchor
    # the tap shares read by the Triton staged step 1 and Mamba-1's fold: channel-contiguous when asked, else shares
    staged_shares: Tensor

    @property
    def mamba1(self) -> bool:
        return isinstance(self.layer.ssm, Mamba1SSM)


def default_anchor_rows(n: int) -> int:
    """Mamba-1 rows per factorisation anchor: ≈ √(N/2), which balances the direct (N·a·d·R) and factor (N²/a·d·R)
    elementwise work, as a power of two in [16, 128]."""
    return int(min(128, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n / 2)))))))


def _context(
    layer: LayerTrace,
    activation: str,
    direct_budget: int,
    anchor_rows: int,
    *,
    sequence_contiguous: bool = True,
    staged_channels: bool = False,
) -> _LayerContext:
    """The layer's tensors for the tiles. The tap shares ``[K, B, d, N]`` are held with the sequence contiguous in
    memory (``shares``: the PyTorch tiles' slices and the fused Triton kernel's loads) and/or, with
    ``staged_channels``, with the channels contiguous (``staged_shares``, a view of ``[K, B, N, d]``: the layout of
    ``G``'s rows that the staged step 1 writes; otherwise ``staged_shares`` is ``shares``). Each layout costs
    ``K·B·N·d`` values, so only those the launches read are made; without ``sequence_contiguous``, ``shares`` is the
    channel-contiguous view."""
    tap = tap_contributions(layer, activation).transpose(-1, -2)  # [K, B, d, N], channels contiguous
    shares = tap.contiguous() if sequence_contiguous else tap
    lam = torch.cumsum(layer.ssm.delta.to(torch.float64), dim=1)
    return _LayerContext(
        layer=layer,
        shares=shares,
        lam=lam,
        gate=layer.out_gate.transpose(1, 2),
        skip=layer.skip,
        direct_budget=direct_budget,
        anchor_rows=anchor_rows,
        staged_shares=tap if staged_channels else shares,
    )


def _mamba1_direct(ctx: _LayerContext, r0: int, r1: int, s0: int, s1: int) -> Tensor:
    """Causal ``M[b, c, i, s]`` for rows ``[r0, r1)`` and sources ``[s0, s1)`` by eq 15 directly, ``[B, d, r, s]``.

    Used only near the diagonal (``s ≥ r0``); rows are processed in sub-blocks that keep ``[t, s, d, R]`` under
    the context's element budget.
    """
    ssm = ctx.layer.ssm
    bsz, _, d = ssm.delta.shape
    state = ssm.A.shape[-1]
    dtype = ssm.delta.dtype
    out = ssm.delta.new_zeros(bsz, d, r1 - r0, s1 - s0)
    step = max(1, ctx.direct_budget // max(1, bsz * (s1 - s0) * d * state))
    src = torch.arange(s0, s1, device=out.device)
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        gap = (ctx.lam[:, a:b, None] - ctx.lam[:, None, s0:s1]).to(dtype)  # [B, t, s, d]
        causal = (src[None, :] <= torch.arange(a, b, device=out.device)[:, None])[None, :, :, None, None]
        log_decay = torch.where(causal, gap[..., None] * ssm.A, torch.full_like(gap[..., None], float("-inf")))
        weighted = torch.exp(log_decay) * ssm.B[:, None, s0:s1, None, :] * ssm.C[:, a:b, None, None, :]
        m = weighted.sum(-1) * ssm.delta[:, None, s0:s1]  # [B, t, s, d]
        out[:, :, a - r0 : b - r0] = m.permute(0, 3, 1, 2)
    return out


def _mamba2_mixing(ctx: _LayerContext, r0: int, r1: int, s0: int, s1: int) -> Tensor:
    """Causal per-channel ``M[b, c, i, s]`` of Mamba-2 (per head, expanded to its channels), ``[B, d, r, s]``."""
    return _mamba2_head_mixing(ctx, r0, r1, s0, s1).repeat_interleave(ctx.layer.ssm.head_dim, dim=1)


def _mamba2_head_mixing(ctx: _LayerContext, r0: int, r1: int, s0: int, s1: int) -> Tensor:
    """Causal ``M[b, h, i, s]`` of Mamba-2 per head (0 for ``s > i``, no D skip), ``[B, H, r, s]``."""
    ssm = ctx.layer.ssm
    heads, groups = ssm.A.shape[0], ssm.B.shape[2]
    dtype = ssm.delta.dtype
    cb = torch.einsum("bign,bsgn->bgis", ssm.C[:, r0:r1], ssm.B[:, s0:s1])  # [B, G, r, s]
    cb = cb.repeat_interleave(heads // groups, dim=1)  # [B, H, r, s]
    gap = (ctx.lam[:, r0:r1, None] - ctx.lam[:, None, s0:s1]).to(dtype).permute(0, 3, 1, 2)  # [B, H, r, s]
    rows = torch.arange(r0, r1, device=gap.device)[:, None]
    src = torch.arange(s0, s1, device=gap.device)[None, :]
    log_decay = torch.where(src <= rows, gap * ssm.A[:, None, None], torch.full_like(gap, float("-inf")))
    return cb * torch.exp(log_decay) * ssm.delta[:, s0:s1].transpose(1, 2)[:, :, None, :]


def _add_taps(values: Tensor, mixing: Tensor, shares: Tensor, c0: int, c1: int, s0: int) -> None:
    """``values[..., j] += Σ_k mixing[..., j + k' − s0] · shares[k, ..., j + k']`` for ``j ∈ [c0, c1)``, in place.

    ``mixing`` covers sources ``[s0, s0 + S)``; tap ``k`` of source ``s = j + (K-1-k)`` reads token ``j``.
    """
    kernel = shares.shape[0]
    s_end = s0 + mixing.shape[-1]
    for k in range(kernel):
        shift = kernel - 1 - k
        j_lo, j_hi = max(c0, s0 - shift), min(c1, s_end - shift)
        if j_lo >= j_hi:
            continue
        src = slice(j_lo + shift - s0, j_hi + shift - s0)
        values[..., j_lo - c0 : j_hi - c0] += mixing[..., src] * shares[k][:, :, None, j_lo + shift : j_hi + shift]


def _gated_tile(ctx: _LayerContext, r0: int, r1: int, c0: int, c1: int) -> Tensor:
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
            mixing = _mamba2_mixing(ctx, r0, r1, c0, s_hi)
            _add_skip(mixing, ctx.skip, r0, r1, c0, s_hi)
            _add_taps(values, mixing, ctx.shares, c0, c1, c0)
    values *= ctx.gate[:, :, r0:r1, None]
    return values


def _mamba1_anchor_rows(ctx: _LayerContext, values: Tensor, a: int, b: int, c0: int, c1: int) -> None:
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
        _add_taps(folded, right.permute(0, 2, 3, 1), ctx.shares, c0, c1, c0)
        ahead = (ctx.lam[:, a:b] - ctx.lam[:, a, None]).to(dtype)  # [B, r, d], ≥ 0
        left = torch.exp(ahead[..., None] * ssm.A) * ssm.C[:, a:b, None, :]  # [B, r, d, R]
        values += left.permute(0, 2, 1, 3) @ folded
    d0 = max(c0, a)
    if s_hi > d0:
        mixing = _mamba1_direct(ctx, a, b, d0, s_hi)
        _add_skip(mixing, ctx.skip, a, b, d0, s_hi)
        _add_taps(values, mixing, ctx.shares, c0, c1, d0)


def _add_skip(mixing: Tensor, skip: Tensor, r0: int, r1: int, s0: int, s1: int) -> None:
    """The D skip acts on ``φ_i``: add ``D`` on the diagonal ``s = i`` of a mixing tile, in place."""
    lo, hi = max(r0, s0), min(r1, s1)
    if lo < hi:
        idx = torch.arange(lo, hi, device=mixing.device)
        mixing[:, :, idx - r0, idx - s0] += skip[:, None]


def _project(gated: Tensor, out_weight: Tensor, precision: str) -> Tensor:
    """``T[b, :, i, j] = W_o G[b, :, i, j]`` as one GEMM, ``[B, D, r, c]`` (bf16 inputs accumulate in fp32)."""
    bsz, d, rows, cols = gated.shape
    flat = gated.reshape(bsz, d, rows * cols)
    if precision == "bf16":
        out = out_weight.to(torch.bfloat16) @ flat.to(torch.bfloat16)
    else:
        out = out_weight @ flat
    return out.view(bsz, -1, rows, cols)


def layer_maps_fast(
    layer: LayerTrace,
    activation: str,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block: int | None = None,
    precision: str = "highest",
    budget_bytes: int | None = None,
    out: dict[str, Tensor] | None = None,
    rows: tuple[int, int] | None = None,
    anchor_rows: int | None = None,
    kernel: str = "torch",
    kernel_config: dict | None = None,
) -> dict[str, Tensor]:
    """The maps of :func:`latim_captum.api.layer_maps` (same values) without materialising ``[rows, N, D]``.

    Args:
        layer: the layer trace.
        activation: activation strategy (see :mod:`latim_captum.activations`).
        measures: any of ``"l1"``, ``"l2"``, ``"alti"``, ``"logit"`` (eq 7's Δ, needs ``projection``).
        projection: ``u_i`` per position, ``[B, N, D]`` (for ``"logit"``).
        block: tile side (rows and columns); default from free memory (:func:`auto_block`).
        precision: ``"highest"`` (compute dtype), ``"tf32"`` or ``"bf16"`` for the ``W_o`` GEMM only.
        budget_bytes: memory for one tile (default: half the free device memory).
        out: preallocated ``[B, N, N]`` maps to fill (e.g. slices of an all-layer result).
        rows: only query rows ``[start, stop)``: the maps are then ``[B, stop − start, N]`` (memory O(rows·N)).
        anchor_rows: Mamba-1 rows per factorisation anchor (default :func:`default_anchor_rows`).
        kernel: ``"torch"`` (tiles of PyTorch ops) or ``"triton"`` (the Triton kernels of
            :mod:`latim_captum.triton_tile`: float32 traces, measures l1/l2/alti/logit, CUDA or
            ``TRITON_INTERPRET=1``). With ``"triton"``, ``block`` is the number of query rows per launch (default
            from ``budget_bytes``), each launch covering every causal column, and Mamba-1's ``anchor_rows`` must be
            a multiple of the kernel's row block (16 when autotuned: the default anchors are).
        kernel_config: Triton block sizes and ``"staged"`` (see :func:`latim_captum.triton_tile.tile_sums`;
            default autotuned and staged).

    Returns:
        ``{measure: [B, N, N]}``, or ``[B, stop − start, N]`` with ``rows``.

    Raises:
        ValueError: ``kernel="triton"`` for what the kernel does not cover (the message says what).
        ImportError: ``kernel="triton"`` without the ``triton`` package.
        TypeError: ``layer`` is not a Mamba sublayer (:class:`~latim_captum.traces.LayerTrace`): attention,
            token-wise, parallel and Zamba2 shared-block sublayers have only the reference path
            (:func:`latim_captum.api.layer_maps_ref`, ``backend="ref"``; ``"auto"`` picks it for them).

    Example:
        >>> maps = layer_maps_fast(layer, "silu_gate", ("l2",), block=64)  # doctest: +SKIP
    """
    if not isinstance(layer, LayerTrace):
        raise TypeError(
            f"the tiled fast path decomposes Mamba sublayers (LayerTrace) only, not {type(layer).__name__}; use "
            "latim_captum.layer_maps_ref or backend='ref' (backend='auto' picks the reference for such sublayers)"
        )
    for m in measures:
        if m not in MEASURES and lp_order(m) is None:
            raise ValueError(f"unknown measure {m!r}; choose from {', '.join(MEASURES)} or any 'l<p>' (p >= 1)")
    if "logit" in measures and projection is None:
        raise ValueError("measure 'logit' needs a projection")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if kernel == "triton":
        triton_tile = _triton_tile()
        triton_tile.check_supported(layer, measures)
    bsz, n, d_model = layer.residual.shape
    start, stop = check_rows(rows, n)
    if anchor_rows is None:
        anchor_rows = default_anchor_rows(n)
    if anchor_rows < 1:
        raise ValueError(f"anchor_rows must be ≥ 1, got {anchor_rows}")
    if block is None:
        if kernel == "triton":
            budget = budget_bytes or _free_bytes(layer.residual.device) // 2
            block = triton_tile.launch_rows(layer, budget, anchor_rows, measures, precision)
        else:
            block = auto_block(layer, budget_bytes, precision)
    if block < 1:
        raise ValueError(f"block must be ≥ 1, got {block}")
    if out is None:
        out = {m: layer.residual.new_zeros(bsz, stop - start, n) for m in measures}
    dtype = layer.residual.dtype
    d = d_inner_of(layer.ssm)
    direct_budget = max(d * layer.ssm.A.shape[-1], (budget_bytes or DEFAULT_TILE_BYTES) // (4 * dtype.itemsize))
    # Triton: the staged step 1 reads the shares channel-contiguous, the fused kernel (the logit; everything when not
    # staged) sequence-contiguous: on the H100 each is markedly slower in the other's layout
    staged = kernel == "triton" and (kernel_config or {}).get("staged", True)
    staged_channels = (
        staged and triton_tile.SHARES_CHANNELS_CONTIGUOUS and any(m in triton_tile.STAGED_MEASURES for m in measures)
    )
    fused = kernel != "triton" or "logit" in measures or not staged_channels
    ctx = _context(
        layer, activation, direct_budget, anchor_rows, sequence_contiguous=fused, staged_channels=staged_channels
    )
    need_t = any(m == "alti" or lp_order(m) is not None for m in measures)
    output = layer.block_output
    workspace = triton_tile.Workspace(start, stop, block) if kernel == "triton" else None
    with torch.no_grad(), matmul_precision(precision):
        for r0 in range(start, stop, block):
            r1 = min(stop, r0 + block)
            o0, o1 = r0 - start, r1 - start  # rows of the output maps
            wu = projection[:, r0:r1] @ layer.out_weight if "logit" in measures else None  # [B, r, d]
            if kernel == "triton":  # every causal column of these rows in one launch: [5, B, r, r1] sums
                sums = triton_tile.tile_sums(
                    ctx, r0, r1, measures, precision=precision, wu=wu, config=kernel_config, workspace=workspace
                )
                for m in measures:
                    if m == "alti":
                        out[m][:, o0:o1, :r1] = _normalise_alti(torch.relu(sums[3]), sums[2])
                    else:
                        out[m][:, o0:o1, :r1] = {"l2": sums[0].sqrt(), "l1": sums[1], "logit": sums[4]}[m]
                continue
            y = output[:, r0:r1].transpose(1, 2)[..., None]  # [B, D, r, 1]
            if "alti" in measures:
                l1_rows = layer.residual.new_zeros(bsz, r1 - r0, n)
                y_abs = y.abs()
            for c0 in range(0, r1, block):
                c1 = min(r1, c0 + block)
                gated = _gated_tile(ctx, r0, r1, c0, c1)
                if wu is not None:
                    out["logit"][:, o0:o1, c0:c1] = torch.einsum("bcij,bic->bij", gated, wu)
                if not need_t:
                    continue
                contrib = _project(gated, layer.out_weight, precision)
                del gated
                for m in measures:
                    if lp_order(m) is not None:
                        out[m][:, o0:o1, c0:c1] = torch.linalg.vector_norm(
                            contrib, ord=lp_order(m), dim=1, dtype=dtype
                        )
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
                out["alti"][:, o0:o1] = _normalise_alti(out["alti"][:, o0:o1], l1_rows)
    return out


def _normalise_alti(scores: Tensor, l1_rows: Tensor) -> Tensor:
    """Complete rows of clipped ALTI proximities divided by their sum; a row with none positive (degenerate) takes
    ``‖T'_i(x_j)‖_1`` (``l1_rows``) instead; rows summing to 0 stay 0."""
    # no host branch on whether any row is degenerate: reading that back would stall the host on the GPU's queue
    scores = torch.where(scores.sum(-1, keepdim=True) <= 0, l1_rows, scores)
    total = scores.sum(-1, keepdim=True)
    return torch.where(total > 0, scores / torch.where(total > 0, total, torch.ones_like(total)), scores)


def _triton_tile():
    """:mod:`latim_captum.triton_tile`, or an ``ImportError`` saying that ``kernel="triton"`` needs triton."""
    try:
        from . import triton_tile
    except ImportError as err:
        raise ImportError(f"kernel='triton' needs the triton package (pip install triton): {err}") from err
    return triton_tile


def dominant_flops(n: int, d_inner: int, d_model: int, rows: int | None = None) -> float:
    """FLOPs of the ``W_o`` projection of every causal ``(i, j)`` pair: ``2·pairs·d·D`` (the dense-GEMM floor)."""
    rows = n if rows is None else rows
    pairs = rows * (rows + 1) / 2
    return 2.0 * pairs * d_inner * d_model


def estimate_output_bytes(bsz: int, n: int, n_maps: int, dtype: torch.dtype) -> int:
    """Bytes of ``n_maps`` ``[B, N, N]`` result maps."""
    return bsz * n * n * n_maps * dtype.itemsize


def check_fits(needed: int, device: torch.device, what: str) -> None:
    """Raise :class:`LatimMemoryError` naming the estimate when ``needed`` bytes exceed the free device memory."""
    if device.type != "cuda":
        return
    free = _free_bytes(device)
    if needed > free:
        raise LatimMemoryError(
            f"{what} needs about {needed / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of "
            f"{device} is free; use fewer layers, a shorter input, or the single-query mode "
            f"(latim_captum.single_query.alti_logit_row)"
        )
