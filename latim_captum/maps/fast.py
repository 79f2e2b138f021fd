"""Memory-bounded LaTIM maps of one Mamba layer: tiles of (query rows × source columns), contribution vectors
reduced as they are made, never ``[rows, N, D]``.

The reference engine (:func:`latim_captum.maps.ref.layer_maps_ref`) materialises ``T = [rows, N, D]`` for a row
block. Here the tiles of :mod:`latim_captum.maps.torch_tiles` (``kernel="torch"``) or the Triton kernels of
:mod:`latim_captum.maps.triton` (``kernel="triton"``) build the gated values ``G`` of one tile at a time, project
them through ``W_o`` and reduce them to ℓp, ALTI and logit sums (see those modules for the maths).

Example:
    >>> maps = layer_maps_fast(trace.layers[0], "silu", ("l2", "alti"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from latim_captum._validation import check_rows, check_size
from latim_captum.traces import LayerTrace

from .options import (
    KERNELS,
    TILED_MEASURES,
    check_measures,
    check_precision_name,
    matmul_precision,
    tiled_measures,
)
from .tiles import auto_block, default_anchor_rows, direct_budget, free_bytes, layer_context, normalise_alti
from .torch_tiles import fill_row_block

__all__ = ["layer_maps_fast"]


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
    """The maps of :func:`latim_captum.maps.ref.layer_maps_ref` (same values) without materialising ``[rows, N, D]``.

    Args:
        layer: the layer trace.
        activation: activation strategy (see :mod:`latim_captum.activations`).
        measures: any of ``"l1"``, ``"l2"`` (any ``"l<p>"``), ``"alti"``, ``"logit"`` (eq 7's Δ, needs
            ``projection``).
        projection: ``u_i`` per position, ``[B, N, D]`` (for ``"logit"``).
        block: tile side (rows and columns); default from free memory (:func:`latim_captum.maps.tiles.auto_block`).
        precision: ``"highest"`` (compute dtype), ``"tf32"`` or ``"bf16"`` for the ``W_o`` GEMM only.
        budget_bytes: memory for one tile (default: half the free device memory).
        out: preallocated ``[B, N, N]`` maps to fill (e.g. slices of an all-layer result).
        rows: only query rows ``[start, stop)``: the maps are then ``[B, stop − start, N]`` (memory O(rows·N)).
        anchor_rows: Mamba-1 rows per factorisation anchor (default
            :func:`latim_captum.maps.tiles.default_anchor_rows`).
        kernel: ``"torch"`` (tiles of PyTorch ops) or ``"triton"`` (the Triton kernels: float32 traces, measures
            l1/l2/alti/logit, CUDA or ``TRITON_INTERPRET=1``). With ``"triton"``, ``block`` is the number of query
            rows per launch (default from ``budget_bytes``), each launch covering every causal column, and
            Mamba-1's ``anchor_rows`` must be a multiple of the kernel's row block (16 when autotuned: the default
            anchors are).
        kernel_config: Triton block sizes and the switches ``"staged"`` (default True: ``G`` stored once, then a
            GEMM; False: one fused kernel) and ``"channel_shares"`` (default True: the staged launches read the tap
            shares channel-contiguous, the fused ones sequence-contiguous; False: one sequence-contiguous copy
            serves all). See :func:`latim_captum.maps.triton.tile_sums`; default autotuned and staged.

    Returns:
        ``{measure: [B, N, N]}``, or ``[B, stop − start, N]`` with ``rows``.

    Raises:
        ValueError: ``kernel="triton"`` for what the kernel does not cover (the message says what).
        ImportError: ``kernel="triton"`` without the ``triton`` package.
        TypeError: ``layer`` is not a Mamba sublayer (:class:`~latim_captum.traces.LayerTrace`): attention,
            token-wise and parallel sublayers have tiles of their own (:mod:`latim_captum.maps.sublayer_tiles`),
            Zamba2 shared-block sublayers only the reference (``backend="auto"`` picks the right one for each).

    Example:
        >>> maps = layer_maps_fast(layer, "silu_gate", ("l2",), block=64)  # doctest: +SKIP
    """
    if not isinstance(layer, LayerTrace):
        raise TypeError(
            f"layer_maps_fast decomposes Mamba sublayers (LayerTrace) only, not {type(layer).__name__}; use "
            "latim_captum.layer_maps (backend='auto' picks each sublayer's own path, backend='ref' the reference)"
        )
    check_measures(measures)
    if not tiled_measures(measures):
        raise ValueError(
            f"the tiled paths reduce {', '.join(TILED_MEASURES)} and any 'l<p>', not all of {list(measures)}; use "
            "backend='ref'"
        )
    check_precision_name(precision)
    check_size("block", block)
    check_size("anchor_rows", anchor_rows)
    if "logit" in measures and projection is None:
        raise ValueError("measure 'logit' needs a projection")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    config = dict(kernel_config or {})
    if kernel == "triton":
        triton_path = _triton()
        triton_path.check_supported(layer, measures)
    bsz, n, _ = layer.residual.shape
    start, stop = check_rows(rows, n)
    if anchor_rows is None:
        anchor_rows = default_anchor_rows(n)
    if anchor_rows < 1:
        raise ValueError(f"anchor_rows must be ≥ 1, got {anchor_rows}")
    if block is None:
        if kernel == "triton":
            budget = budget_bytes or free_bytes(layer.residual.device) // 2
            block = triton_path.launch_rows(layer, budget, anchor_rows, measures, precision)
        else:
            block = auto_block(layer, budget_bytes, precision)
    if block < 1:
        raise ValueError(f"block must be ≥ 1, got {block}")
    if out is None:
        out = {m: layer.residual.new_zeros(bsz, stop - start, n) for m in measures}
    # Triton: the staged step 1 reads the shares channel-contiguous, the fused kernel (the logit; everything when not
    # staged) sequence-contiguous; each kernel is markedly slower in the other's layout (docs/performance.md)
    staged = kernel == "triton" and config.get("staged", True)
    staged_channels = (
        staged and config.get("channel_shares", True) and any(m in triton_path.STAGED_MEASURES for m in measures)
    )
    fused = kernel != "triton" or "logit" in measures or not staged_channels
    ctx = layer_context(
        layer, activation, direct_budget(layer, budget_bytes), anchor_rows, sequence_contiguous=fused,
        staged_channels=staged_channels,
    )
    workspace = triton_path.Workspace(start, stop, block) if kernel == "triton" else None
    with torch.no_grad(), matmul_precision(precision):
        for r0 in range(start, stop, block):
            r1 = min(stop, r0 + block)
            wu = projection[:, r0:r1] @ layer.out_weight if "logit" in measures else None  # [B, r, d]
            if kernel == "torch":
                fill_row_block(ctx, out, r0, r1, start, measures, block=block, wu=wu, precision=precision)
                continue
            # every causal column of these rows in one launch: [5, B, r, r1] sums
            sums = triton_path.tile_sums(
                ctx, r0, r1, measures, precision=precision, wu=wu, config=config, workspace=workspace
            )
            o0, o1 = r0 - start, r1 - start
            for m in measures:
                if m == "alti":
                    out[m][:, o0:o1, :r1] = normalise_alti(torch.relu(sums[3]), sums[2])
                else:
                    out[m][:, o0:o1, :r1] = {"l2": sums[0].sqrt(), "l1": sums[1], "logit": sums[4]}[m]
    return out


def _triton() -> ModuleType:
    """:mod:`latim_captum.maps.triton`, or an ``ImportError`` saying that ``kernel="triton"`` needs triton."""
    try:
        from . import triton as triton_path
    except ImportError as err:
        raise ImportError(f"kernel='triton' needs the triton package (pip install triton): {err}") from err
    return triton_path
