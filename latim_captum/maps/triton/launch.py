"""Launchers of the Triton kernels (:mod:`latim_captum.maps.triton.kernels`): what each launch needs, in which
buffers, on how many query rows.

:func:`tile_sums` is the entry: the per-pair sums of every causal pair of a launch's query rows, from which
:func:`latim_captum.maps.fast.layer_maps_fast` (``kernel="triton"``) finishes the maps (ALTI's row normalisation,
its ℓ1 fallback for degenerate rows and the ``√`` of ℓ2).

Example:
    >>> sums = tile_sums(ctx, 0, 128, ("l2", "alti"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
from torch import Tensor

from latim_captum._precision import round_tf32
from latim_captum.ssm import d_inner_of
from latim_captum.traces import LayerTrace, Mamba1SSM

from ..tiles import LayerContext, mamba1_direct
from .kernels import (
    CANDIDATES,
    MIX_TILE,
    PROJECT_CANDIDATES,
    STAGED_TILE,
    band_kernel,
    fold_kernel,
    fused,
    fused_autotuned,
    gate,
    gate_autotuned,
    mix_kernel,
    project,
    project_autotuned,
    state_padded,
)
from .workspace import Workspace, causal_tiles, tile_layout

__all__ = [
    "VARIANTS",
    "SUMS",
    "DEFAULT_CONFIG",
    "STAGED_MEASURES",
    "STAGED_TILE",
    "CONFIG_SWITCHES",
    "interpreting",
    "check_supported",
    "launch_rows",
    "mamba2_mixing",
    "tile_sums",
]

#: the Mamba layer variants (:attr:`LayerTrace.variant`) the kernels cover
VARIANTS: tuple[str, ...] = ("mamba1", "mamba2")
#: the per-pair sums :func:`tile_sums` returns, in this order along its first dimension
SUMS: tuple[str, ...] = ("sum_sq", "sum_abs", "sum_abs_res", "proximity", "logit")
#: block sizes used without autotuning (the interpreter)
DEFAULT_CONFIG = {"BI": 16, "BJ": 16, "BC": 32, "BD": 64, "num_warps": 4, "num_stages": 2}
#: keys of a kernel config that pick a path rather than block sizes (see :func:`tile_sums`)
CONFIG_SWITCHES: tuple[str, ...] = ("staged", "channel_shares")
_PRECISION_IDS = {"highest": 0, "tf32": 1, "bf16": 2}
#: the measures of the ``W_o`` product: made by the staged launches (the logit has none and is always fused)
STAGED_MEASURES: tuple[str, ...] = ("l1", "l2", "alti")
#: elements of the largest tensor the kernels index (their offsets are int32)
_MAX_ELEMENTS = 2**31 - 1


def interpreting() -> bool:
    """Whether Triton runs its interpreter (``TRITON_INTERPRET=1``: CPU tensors, no compilation)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def mamba2_mixing(ctx: LayerContext, r0: int, r1: int, workspace: Workspace | None = None) -> Tensor:
    """``M[b, h, i, s]`` of a Mamba-2 layer for rows ``[r0, r1)`` and sources ``[0, r1)``, ``[B, H, rows, r1]``
    (:func:`mix_kernel`; equal to :func:`latim_captum.maps.tiles.mamba2_head_mixing` up to rounding), in ``workspace``
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
    bi, bs = MIX_TILE
    grid = (triton.cdiv(r1 - r0, bi), triton.cdiv(r1, bs), bsz * heads)
    mix_kernel[grid](
        ssm.C, *ssm.C.stride(),
        ssm.B, *ssm.B.stride(),
        ctx.lam, *ctx.lam.stride(),
        ssm.A,
        ssm.delta, *ssm.delta.stride(),
        out, *out.stride(),
        r0, r1, heads, heads // groups,
        STATE=state, STATE_P=state_padded(state), BI=bi, BS=bs, num_warps=8,  # 4 warps spill at state 128
    )  # fmt: skip
    return out


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
    if layer.residual.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before triton is imported), not "
            f"{layer.residual.device}"
        )


def row_elements(layer: LayerTrace, anchor: int) -> tuple[int, int]:
    """Elements per query row of one launch: of its largest tensor, and of all it allocates (with temporaries)."""
    bsz, n, _ = layer.residual.shape
    sums = len(SUMS) * bsz * n
    if isinstance(layer.ssm, Mamba1SSM):
        d, state = layer.ssm.A.shape
        folded = bsz * d * state * n // anchor + bsz * d * state  # folded right factors (+ a share of one anchor's)
        direct = bsz * d * anchor
        return max(folded, sums), folded + bsz * d * state + direct + sums
    heads = layer.ssm.A.shape[0]
    # the mixing (one plane per head, written once by mix_kernel: no temporaries) and the sums
    return max(heads, len(SUMS)) * bsz * n, (heads + len(SUMS)) * bsz * n


def staged_row_bytes(layer: LayerTrace, measures: Sequence[str], precision: str) -> int:
    """Bytes per query row of the staged kernels' buffers: ``G`` (``[N, d]``, bf16 with ``precision="bf16"``) and
    the sums per block of ``D``; 0 for measures without the ``W_o`` product (no staged launch)."""
    if not any(m in STAGED_MEASURES for m in measures):
        return 0
    bsz, n, d_model = layer.residual.shape
    bi, bj = STAGED_TILE[layer.variant]
    gated = (n + bj) * d_inner_of(layer.ssm) * (2 if precision == "bf16" else 4)
    blocks = 4 * project_blocks(d_model, bi * bj) * n * 4
    return bsz * (gated + blocks)


def launch_rows(
    layer: LayerTrace,
    budget_bytes: int,
    anchor_rows: int = 16,
    measures: Sequence[str] = ("l2",),
    precision: str = "highest",
) -> int:
    """Query rows per launch whose mixing, factors, sums and staged buffers (:func:`staged_row_bytes`) fit
    ``budget_bytes`` and int32 offsets (Mamba-1: a multiple of ``anchor_rows`` when more than one anchor fits;
    Mamba-2: a multiple of the staged row tile when more than one tile fits).

    Example:
        >>> launch_rows(layer, 2**30)  # doctest: +SKIP
        96
    """
    n = layer.residual.shape[1]
    largest, total = row_elements(layer, anchor_rows)
    row_bytes = total * layer.residual.element_size() + staged_row_bytes(layer, measures, precision)
    rows = max(1, min(n, budget_bytes // row_bytes, _MAX_ELEMENTS // largest))
    mamba1 = isinstance(layer.ssm, Mamba1SSM)
    # Mamba-2: a partial last row tile computes its masked rows all the same (26 rows in tiles of 8 waste 6 of 32)
    step = anchor_rows if mamba1 else STAGED_TILE[layer.variant][0]
    if rows < n and (mamba1 or rows >= step):
        rows = max(step, rows - rows % step)
    return rows


def mamba1_factors(ctx: LayerContext, r0: int, r1: int, anchor_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-1 mixing for rows ``[r0, r1)`` with anchors ``r0, r0 + anchor_rows, …`` (as
    :func:`latim_captum.maps.torch_tiles.gated_tile`): left factors ``[B, rows, d, R]``, folded right factors
    ``[anchors, B, d, R, cols]`` (columns before each anchor; :func:`fold_kernel`, one pass) and eq 15 near the
    anchors ``[B, d, rows, anchor_rows]`` (no D skip: the kernel adds it; :func:`band_kernel`, one pass, for anchors
    that are powers of two, else PyTorch)."""
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
        fold_kernel[grid](
            ctx.lam, *ctx.lam.stride(),
            ssm.A, *ssm.A.stride(),
            ssm.B, *ssm.B.stride(),
            ssm.delta, *ssm.delta.stride(),
            ctx.staged_shares, *ctx.staged_shares.stride(),
            folded, *folded.stride(),
            r0, anchor_rows, d, bsz, cols,
            K=ctx.shares.shape[0], STATE=state, STATE_P=state_padded(state), BC=block_c, BJ=block_j,
        )  # fmt: skip
    direct = ssm.delta.new_empty(bsz, d, r1 - r0, anchor_rows)  # every row of the launch is written
    if anchor_rows & (anchor_rows - 1) == 0:  # a power of two: one Triton pass (tl.arange's sizes)
        block_c = max(1, min(16, 4096 // anchor_rows**2))
        band_kernel[(len(anchors) * bsz, triton.cdiv(d, block_c))](
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
        direct[:, :, a - r0 : b - r0, : b - a] = mamba1_direct(ctx, a, b, a, b)
    return left, folded, direct


def tile_sums(
    ctx: LayerContext,
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
        ctx: the :class:`~latim_captum.maps.tiles.LayerContext` (tap shares ``[K, B, d, N]``, ``Λ``, gate, skip
            and, for Mamba-1, ``anchor_rows``: a multiple of ``BI``).
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
            ``W_o`` product and is always fused. The key ``"channel_shares"`` is the context's layout (see
            :func:`latim_captum.maps.fast.layer_maps_fast`) and is ignored here.
        workspace: buffers of the staged kernels and of Mamba-2's mixing shared by the launches of one layer
            (:class:`Workspace`); default: allocated for this launch.
    """
    layer = ctx.layer
    bsz, _, d_model = layer.residual.shape
    d_inner = ctx.gate.shape[1]
    mamba1 = isinstance(layer.ssm, Mamba1SSM)
    anchor_rows = ctx.anchor_rows if mamba1 else 0
    interpret = interpreting()
    config = dict(config or {})
    staged = config.pop("staged", True)
    config.pop("channel_shares", None)  # read by the context's layout (layer_maps_fast), not here
    if not config:
        config = DEFAULT_CONFIG if interpret else None
    staged_w = staged and any(m in STAGED_MEASURES for m in measures)
    fused_bi = min(c[0] for c in CANDIDATES["mamba1"])
    if config is not None:
        row_blocks = {config["BI"]}
    else:  # the fused launches (logit, or everything unstaged) are autotuned down to BI = fused_bi
        any_fused = "logit" in measures or not staged_w
        row_blocks = ({fused_bi} if any_fused else set()) | ({STAGED_TILE[layer.variant][0]} if staged_w else set())
    if mamba1 and any(anchor_rows % bi for bi in row_blocks):
        raise ValueError(
            f"anchor_rows={anchor_rows} must be a multiple of the kernel's row block BI ({max(row_blocks)}"
            f"{' for the autotuned kernel' if config is None else ''})"
        )
    largest, _ = row_elements(layer, anchor_rows or 1)
    if (r1 - r0) * largest > _MAX_ELEMENTS:
        raise ValueError(f"{r1 - r0} rows per launch overflow int32 offsets; use fewer (see launch_rows)")
    sums = layer.residual.new_zeros(len(SUMS), bsz, r1 - r0, r1)
    if mamba1:
        left, folded, mixing = mamba1_factors(ctx, r0, r1, anchor_rows)
        head_dim, state = 1, layer.ssm.A.shape[-1]
    else:
        mixing = mamba2_mixing(ctx, r0, r1, workspace)  # [B, H, rows, r1]
        left, folded = sums, sums[..., None]  # not read
        head_dim, state = layer.ssm.head_dim, 0
    out_gate = layer.out_gate  # [B, N, d]
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
            out_gate, *out_gate.stride(),
            ctx.skip,
        )  # fmt: skip

    modes = ([0] if any(want.values()) else []) + ([1] if "logit" in measures else [])
    for mode in modes:
        if mode == 1 and wu is None:
            raise ValueError("the logit sums need wu = W_oᵀ u_i")
        if mode == 0 and staged_w:
            staged_sums(
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
        common = dict(**shape, **want, PRECISION=_PRECISION_IDS[precision], INTERPRET=interpret)
        if config is None:
            grid = lambda meta: (triton.cdiv(r1 - r0, meta["BI"]) * triton.cdiv(r1, meta["BJ"]), bsz)  # noqa: E731
            fused_autotuned[grid](*args, MODE=mode, **common)
        else:
            grid = (triton.cdiv(r1 - r0, config["BI"]) * triton.cdiv(r1, config["BJ"]), bsz)
            fused[grid](*args, MODE=mode, **common, **config)
    return sums


def staged_sums(
    layer, gated_args, sums, out_weight, r0, r1, precision, shape, want, config, interpret, workspace
) -> None:
    """The ℓ1/ℓ2/ALTI :data:`SUMS` in two launches: ``G`` of every causal tile into a ``[T, BI·BJ, d]`` buffer
    (:func:`gate_kernel`), then its ``W_o`` product and reductions per block of ``D`` (:func:`project_kernel`),
    added here; ALTI's pairs ``j = i`` are redone here with the residual, from the same ``G``."""
    bsz, _, d_model = layer.residual.shape
    d_inner = layer.out_gate.shape[-1]
    device = layer.residual.device
    bi, bj = (config["BI"], config["BJ"]) if config is not None else STAGED_TILE[layer.variant]
    tiles = causal_tiles(bsz, r0, r1, bi, bj, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n_d = project_blocks(d_model, bi * bj, config)
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
    precision_id = _PRECISION_IDS[precision]
    if config is None:
        gate_autotuned[lambda meta: (len(tiles), triton.cdiv(d_inner, meta["BC"]))](
            *gate_args, **shape, PRECISION=precision_id, BI=bi, BJ=bj
        )
        project_autotuned[(len(tiles) * n_d,)](
            *project_args, **want, PRECISION=precision_id, INTERPRET=interpret, BI=bi, BJ=bj
        )
    else:
        launch = {k: config[k] for k in ("num_warps", "num_stages") if k in config}
        gate[(len(tiles), triton.cdiv(d_inner, config["BC"]))](
            *gate_args, **shape, PRECISION=precision_id, BI=bi, BJ=bj, BC=config["BC"], **launch
        )
        project[(len(tiles) * n_d,)](
            *project_args, **want, PRECISION=precision_id, INTERPRET=interpret, BI=bi, BJ=bj,
            BK=config.get("BK", config["BC"]), BD=config["BD"], **launch,
        )  # fmt: skip
    for q, wanted in enumerate((want["WANT_L2"], want["WANT_L1"], want["WANT_ALTI"], want["WANT_ALTI"])):
        if wanted:  # the other slots were not written
            sums[q] = blocks[:, q].sum(0)
    if want["WANT_ALTI"]:
        alti_diagonal(layer, gated, out_weight, sums, r0, r1, bi, bj)


def project_blocks(d_model: int, pairs: int, config: dict | None = None) -> int:
    """Blocks of ``D`` in step 2's partial sums: enough for the config's block, or autotuned (``config=None``) for the
    smallest candidate block of tiles of ``pairs`` pairs. Autotuning runs configs with larger blocks too, so the
    kernel writes every block, zeros past ``d_model``."""
    smallest = config["BD"] if config is not None else min(c[1] for c in PROJECT_CANDIDATES[pairs])
    return triton.cdiv(d_model, smallest)


def alti_diagonal(layer, gated: Tensor, out_weight: Tensor, sums: Tensor, r0: int, r1: int, bi: int, bj: int):
    """ALTI's sums of the pairs ``j = i`` of rows ``[r0, r1)`` with the residual, ``T'_i(x_i) = W_o G[i, i] + x_i``,
    written into ``sums``; ``G[i, i]`` read from the staged buffer (the operands of the kernel's GEMM, exact products
    in float64)."""
    bsz = layer.residual.shape[0]
    device = layer.residual.device
    tiles, first = tile_layout(bsz, r0, r1, bi, bj, device)
    rows = torch.arange(r0, r1, device=device)
    tile = first[(rows - r0) // bi] + rows // bj  # [rows]
    tile = tile + torch.arange(bsz, device=device)[:, None] * (len(tiles) // bsz)  # [B, rows]
    pair = (rows - r0) % bi * bj + rows % bj
    own = (gated[tile, pair].double() @ out_weight.double().T).float() + layer.residual[:, r0:r1]  # [B, rows, D]
    y = layer.block_output[:, r0:r1]
    local = rows - r0
    sums[2, :, local, rows] = own.abs().sum(-1)
    sums[3, :, local, rows] = (y.abs() - (y - own).abs()).sum(-1)
