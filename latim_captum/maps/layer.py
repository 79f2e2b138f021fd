"""One sublayer's maps on any backend: the dispatch between the reference and the tiled paths.

Example:
    >>> maps = layer_maps(tr.layers[0], "silu", ("l2", "alti"))                             # doctest: +SKIP
    >>> maps = layer_maps(tr.layers[0], "silu", ("alti",), backend="triton", precision="tf32")  # doctest: +SKIP
    >>> bare = layer_maps(tr.layers[0], "silu", ("alti_no_residual",))["alti_no_residual"]     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from latim_captum._validation import check_size
from latim_captum.traces import AttentionTrace, LayerTrace, ParallelTrace, SublayerTrace, TokenwiseTrace

from .fast import layer_maps_fast
from .options import check_measures, check_precision, resolve_backend
from .ref import layer_maps_ref
from .sublayer_tiles import attention_maps_fast, parallel_maps_fast, parallel_tiled, tokenwise_maps_fast

__all__ = ["NO_RESIDUAL", "layer_maps", "without_residual"]

#: the measure of ALTI without the residual in the proximities
NO_RESIDUAL = "alti_no_residual"


def without_residual(layer: SublayerTrace) -> SublayerTrace:
    """The sublayer with a zero residual stream: its ALTI proximities then compare ``T_i(x_j)`` with the mixer's own
    output ``mixer(h)_i`` (``= Σ_j T_i(x_j) + offset`` for an exact strategy) instead of ``y_i = x_i + mixer(h)_i``
    (token i's residual ``x_i`` is left out of ``T'_i(x_i)`` and of ``y_i``). Only ALTI reads the residual; the
    contributions are unchanged."""
    return dataclasses.replace(layer, residual=torch.zeros_like(layer.residual))


def layer_maps(
    layer: SublayerTrace,
    activation: str,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block_rows: int | None = None,
    backend: str = "auto",
    embedding_columns: bool = False,
    precision: str = "highest",
    rows: tuple[int, int] | None = None,
    kernel_config: dict | None = None,
) -> dict[str, Tensor]:
    """Several ``[B, N, N]`` maps of one layer (see :func:`latim_captum.maps.ref.layer_maps_ref` for the measures
    and ``embedding_columns``) on any backend (:data:`latim_captum.maps.options.BACKENDS`); the same values up to
    rounding.

    The tiled paths (``"fast"``, ``"triton"``: :func:`latim_captum.maps.fast.layer_maps_fast` with
    ``kernel="torch"`` or ``"triton"``) cover Mamba layers; attention and token-wise (MLP/MoE) sublayers take
    PyTorch tiles on either (:mod:`latim_captum.maps.sublayer_tiles`), and so do parallel sublayers of one Mamba
    part beside attention (FalconH1); shared-block (Zamba2) sublayers always take the reference, whatever
    ``backend`` says. ``precision`` (``"highest"``, ``"tf32"``,
    ``"bf16"``) is that of the tiled paths' ``W_o`` product (attention: its value-path products);
    ``rows=(start, stop)`` keeps query rows ``[start, stop)`` only, in ``[B, stop − start, N]`` maps (memory
    O(rows·N)); ``kernel_config`` tunes the tiles (``anchor_rows``, Triton block sizes and switches, see
    :func:`~latim_captum.maps.fast.layer_maps_fast`).
    """
    check_measures(measures)
    check_size("block_rows", block_rows)
    if NO_RESIDUAL in measures:
        rest = tuple(m for m in measures if m != NO_RESIDUAL)
        path = {"block_rows": block_rows, "backend": backend, "precision": precision, "rows": rows,
                "kernel_config": kernel_config}  # fmt: skip
        maps = layer_maps(layer, activation, rest, projection=projection, embedding_columns=embedding_columns,
                          **path) if rest else {}  # fmt: skip
        bare = layer_maps(without_residual(layer), activation, ("alti",), embedding_columns=embedding_columns, **path)
        maps[NO_RESIDUAL] = bare["alti"]
        return maps
    resolved = resolve_backend(backend, layer.residual.device)
    check_precision(precision, backend, layer.residual.device, layer.residual.dtype)
    if isinstance(layer, LayerTrace) and resolved in ("fast", "triton"):
        config = dict(kernel_config or {})
        return layer_maps_fast(
            layer,
            activation,
            measures,
            projection=projection,
            block=block_rows,
            precision=precision,
            rows=rows,
            anchor_rows=config.pop("anchor_rows", None),
            kernel="triton" if resolved == "triton" else "torch",
            kernel_config=config,
        )
    if isinstance(layer, AttentionTrace) and resolved in ("fast", "triton"):  # PyTorch tiles under either name
        return attention_maps_fast(
            layer, measures, projection=projection, block=block_rows, precision=precision, rows=rows
        )
    if isinstance(layer, TokenwiseTrace) and resolved in ("fast", "triton"):
        return tokenwise_maps_fast(layer, measures, projection=projection, rows=rows)
    if isinstance(layer, ParallelTrace) and resolved in ("fast", "triton") and parallel_tiled(layer):
        return parallel_maps_fast(
            layer, activation, measures, projection=projection, block=block_rows, precision=precision, rows=rows
        )
    return layer_maps_ref(
        layer,
        activation,
        measures,
        projection=projection,
        block_rows=block_rows,
        embedding_columns=embedding_columns,
        rows=rows,
    )
