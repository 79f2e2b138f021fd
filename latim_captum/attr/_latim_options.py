"""What the three LaTIM Captum classes share: their path options and their per-layer maps (full or one row)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from latim_captum._memory import guard_memory
from latim_captum.activations import ACTIVATIONS
from latim_captum.api import trace
from latim_captum.maps import check_backend, check_precision_name, stack

from ._base import TokenMapAttribution, row_as_map

__all__ = ["path_options", "per_layer_maps", "guard_row_maps"]


def path_options(activation: str, dtype: torch.dtype, backend: str, precision: str) -> dict[str, Any]:
    """The keyword options of a LaTIM class, ``activation``, ``backend`` and ``precision`` checked by name
    (``ValueError``) when the class is made, not at its first call."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
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
    guard_memory(
        "interactions" if position is None else "captum_rows", method.adapter, input_ids, inputs_embeds,
        layers=layers, dtype=opts["dtype"], backend=opts["backend"],
    )  # fmt: skip
    tr = trace(method.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=opts["dtype"])
    n = tr.shape[1]
    rows = (0, n) if position is None else (position, position + 1)
    result = stack(
        tr, (measure,), activation=opts["activation"], layers=layers, rows=rows, backend=opts["backend"],
        precision=opts["precision"],
    )[measure]  # fmt: skip
    return result if position is None else row_as_map(result[:, :, 0], position)


def guard_row_maps(method: TokenMapAttribution, input_ids: Tensor | None, inputs_embeds: Tensor | None) -> None:
    """The memory guard of a row computed alone (O(N·d)) but returned inside one ``[B, N, N]`` map."""
    opts = method.options
    guard_memory("captum_rows", method.adapter, input_ids, inputs_embeds, maps=1, dtype=opts["dtype"],
                 backend=opts["backend"])  # fmt: skip
