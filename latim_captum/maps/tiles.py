"""What the PyTorch and Triton tiles share: the layer context, the causal mixing ``M`` and the tiles' memory sizing.

A tile is ``rows × cols`` query rows × source columns of one layer's maps. Both tile implementations read the layer
in the layouts of :class:`LayerContext` (channel-major, sequence last) and build the same mixing:

* Mamba-1 hidden attention without ``[rows, N, d, R]``: for sources ``s`` before an anchor row ``a``, the decay
  factorises around ``a`` with both factors ≤ 1 (no overflow)::

      M_{i,s,c} = Σ_r [C_{i,r} e^{A_{c,r}(Λ_{i,c} − Λ_{a,c})}] [Δ_{s,c} B_{s,r} e^{A_{c,r}(Λ_{a,c} − Λ_{s,c})}]

  with ``Λ = cumsum(Δ)`` accumulated in float64 (differences of a long fp32 cumsum lose digits). Sources at or after
  the anchor (the band near the diagonal) use eq 15 directly (:func:`mamba1_direct`).
* Mamba-2: ``M`` is per head (``[rows, cols, H]``, :func:`mamba2_head_mixing`), cheap; the taps expand it to channels.

Example:
    >>> ctx = layer_context(trace.layers[0], "silu", direct_budget=2**24, anchor_rows=16)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from latim_captum.decompose import tap_contributions
from latim_captum.ssm import d_inner_of, default_anchor_rows
from latim_captum.traces import LayerTrace, Mamba1SSM

from .memory import DEFAULT_TILE_BYTES, tile_bytes_for
from .options import LatimMemoryError

__all__ = [
    "DEFAULT_TILE_BYTES",
    "LayerContext",
    "layer_context",
    "direct_budget",
    "default_anchor_rows",
    "mamba1_direct",
    "mamba2_head_mixing",
    "mamba2_mixing",
    "add_taps",
    "add_skip",
    "normalise_alti",
    "tile_bytes",
    "auto_block",
    "free_bytes",
    "dominant_flops",
]


@dataclass
class LayerContext:
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


def layer_context(
    layer: LayerTrace,
    activation: str,
    direct_budget: int,
    anchor_rows: int,
    *,
    sequence_contiguous: bool = True,
    staged_channels: bool = False,
) -> LayerContext:
    """The layer's tensors for the tiles. The tap shares ``[K, B, d, N]`` are held with the sequence contiguous in
    memory (``shares``: the PyTorch tiles' slices and the fused Triton kernel's loads) and/or, with
    ``staged_channels``, with the channels contiguous (``staged_shares``, a view of ``[K, B, N, d]``: the layout of
    ``G``'s rows that the staged step 1 writes; otherwise ``staged_shares`` is ``shares``). Each layout costs
    ``K·B·N·d`` values, so only those the launches read are made; without ``sequence_contiguous``, ``shares`` is the
    channel-contiguous view."""
    tap = tap_contributions(layer, activation).transpose(-1, -2)  # [K, B, d, N], channels contiguous
    shares = tap.contiguous() if sequence_contiguous else tap
    lam = torch.cumsum(layer.ssm.delta.to(torch.float64), dim=1)
    return LayerContext(
        layer=layer,
        shares=shares,
        lam=lam,
        gate=layer.out_gate.transpose(1, 2),
        skip=layer.skip,
        direct_budget=direct_budget,
        anchor_rows=anchor_rows,
        staged_shares=tap if staged_channels else shares,
    )


def direct_budget(layer: LayerTrace, budget_bytes: int | None = None) -> int:
    """Elements a Mamba-1 diagonal sub-block (:func:`mamba1_direct`) may hold: a quarter of the tile budget
    (default :data:`DEFAULT_TILE_BYTES`), and at least one ``[d, R]`` slice."""
    itemsize = layer.residual.dtype.itemsize
    return max(d_inner_of(layer.ssm) * layer.ssm.A.shape[-1], (budget_bytes or DEFAULT_TILE_BYTES) // (4 * itemsize))


def mamba1_direct(ctx: LayerContext, r0: int, r1: int, s0: int, s1: int) -> Tensor:
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


def mamba2_mixing(ctx: LayerContext, r0: int, r1: int, s0: int, s1: int) -> Tensor:
    """Causal per-channel ``M[b, c, i, s]`` of Mamba-2 (per head, expanded to its channels), ``[B, d, r, s]``."""
    return mamba2_head_mixing(ctx, r0, r1, s0, s1).repeat_interleave(ctx.layer.ssm.head_dim, dim=1)


def mamba2_head_mixing(ctx: LayerContext, r0: int, r1: int, s0: int, s1: int) -> Tensor:
    """Causal ``M[b, h, i, s] = (C_i · B_s) exp(A_h (Λ_i − Λ_s)) Δ_s`` of Mamba-2 per head (0 for ``s > i``, no D
    skip), ``[B, H, r, s]``: the ``_ref`` of the Triton mixing kernel."""
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


def add_taps(values: Tensor, mixing: Tensor, shares: Tensor, c0: int, c1: int, s0: int) -> None:
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


def add_skip(mixing: Tensor, skip: Tensor, r0: int, r1: int, s0: int, s1: int) -> None:
    """The D skip acts on ``φ_i``: add ``D`` on the diagonal ``s = i`` of a mixing tile, in place."""
    lo, hi = max(r0, s0), min(r1, s1)
    if lo < hi:
        idx = torch.arange(lo, hi, device=mixing.device)
        mixing[:, :, idx - r0, idx - s0] += skip[:, None]


def normalise_alti(scores: Tensor, l1_rows: Tensor) -> Tensor:
    """Complete rows of clipped ALTI proximities divided by their sum; a row with none positive (degenerate) takes
    ``‖T'_i(x_j)‖_1`` (``l1_rows``) instead; rows summing to 0 stay 0."""
    # no host branch on whether any row is degenerate: reading that back would stall the host on the GPU's queue
    scores = torch.where(scores.sum(-1, keepdim=True) <= 0, l1_rows, scores)
    total = scores.sum(-1, keepdim=True)
    return torch.where(total > 0, scores / torch.where(total > 0, total, torch.ones_like(total)), scores)


def tile_bytes(layer: LayerTrace, rows: int, cols: int, precision: str = "highest") -> int:
    """Peak bytes of one ``rows × cols`` PyTorch tile: gated values, mixing, the T tile and reduction temporaries."""
    bsz, _, d_model = layer.residual.shape
    elem = layer.residual.element_size()
    mm_elem = 2 if precision == "bf16" else elem
    return tile_bytes_for(bsz, rows, cols, d_inner_of(layer.ssm), d_model, layer.conv_weight.shape[-1], elem, mm_elem)


def auto_block(layer: LayerTrace, budget_bytes: int | None = None, precision: str = "highest") -> int:
    """Largest square tile side (a multiple of 16 when possible) whose :func:`tile_bytes` fits ``budget_bytes``.

    The default budget is half the device's free memory on CUDA, :data:`DEFAULT_TILE_BYTES` elsewhere.

    Raises:
        LatimMemoryError: not even a 1×1 tile fits.
    """
    n = layer.residual.shape[1]
    if budget_bytes is None:
        budget_bytes = free_bytes(layer.residual.device) // 2
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


def free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device; twice :data:`DEFAULT_TILE_BYTES` elsewhere (the tiles' CPU budget)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return 2 * DEFAULT_TILE_BYTES


def dominant_flops(n: int, d_inner: int, d_model: int, rows: int | None = None) -> float:
    """FLOPs of the ``W_o`` projection of every causal ``(i, j)`` pair: ``2·pairs·d·D`` (the dense-GEMM floor)."""
    rows = n if rows is None else rows
    pairs = rows * (rows + 1) / 2
    return 2.0 * pairs * d_inner * d_model
