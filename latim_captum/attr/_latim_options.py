"""What the three LaTIM Captum classes share: their path options and their per-layer maps (full or one row)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from latim_captum.api import check_backend, layer_maps, trace
from latim_captum.fast import check_precision_name

from ._base import TokenMapAttribution, row_as_map

__all__ = ["path_options", "per_layer_maps"]


def path_options(activation: str, dtype: torch.dtype, backend: str, precision: str) -> dict[str, Any]:
    """The keyword options of a LaTIM class, ``backend`` and ``precision`` checked by name (``ValueError``)."""
    check_backend(backend)
    check_precision_name(precision)
    return {"activation": activation, "dtype": dtype, "backend": backend, "precision": precision}


def per_layer_maps(
    method: TokenMapAttribution,
    measure: str,
    layers: list[int],
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    attention_mask: Tensor | None,
    *,
    position: int | None = None,
) -> Tensor:
    """``[B, L, N, N]`` maps of ``measure`` at ``layers``; with ``position``, only that query row is computed (the
    rest of each map is zero).

    ``T_i(x_j)`` of one row costs ``O(N·d·D)`` per layer, against ``O(N²·d·D)`` for the full map.
    """
    opts = method.options
    tr = trace(method.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=opts["dtype"])
    bsz, n = tr.shape
    rows = (0, n) if position is None else (position, position + 1)
    # filled layer by layer: no second copy of the [B, L, rows, N] result (torch.stack would double the peak)
    result = tr.embeddings.new_zeros(bsz, len(layers), rows[1] - rows[0], n)
    for pos, idx in enumerate(layers):
        result[:, pos] = layer_maps(
            tr.layers[idx], opts["activation"], (measure,), backend=opts["backend"], precision=opts["precision"],
            rows=rows,
        )[measure]  # fmt: skip
    return result if position is None else row_as_map(result[:, :, 0], position)
