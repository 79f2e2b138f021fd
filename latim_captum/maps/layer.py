"""One sublayer's maps on any backend: the dispatch between the reference and the tiled paths.

Example:
    >>> maps = layer_maps(tr.layers[0], "silu", ("l2", "alti"))                             # doctest: +SKIP
    >>> maps = layer_maps(tr.layers[0], "silu", ("alti",), backend="triton", precision="tf32")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from latim_captum._validation import check_size
from latim_captum.traces import LayerTrace, SublayerTrace

from .fast import layer_maps_fast
from .options import check_measures, check_precision, resolve_backend
from .ref import layer_maps_ref

__all__ = ["layer_maps"]


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
    ``kernel="torch"`` or ``"triton"``) cover Mamba layers; attention, token-wise, parallel and shared-block (Zamba2
    hybrid) sublayers always take the reference, whatever ``backend`` says. ``precision`` (``"highest"``,
    ``"tf32"``, ``"bf16"``) is that of the tiled paths' ``W_o`` product; ``rows=(start, stop)`` keeps query rows
    ``[start, stop)`` only, in ``[B, stop − start, N]`` maps (memory O(rows·N)); ``kernel_config`` tunes the tiles
    (``anchor_rows``, Triton block sizes and switches, see :func:`~latim_captum.maps.fast.layer_maps_fast`).
    """
    check_measures(measures)
    check_size("block_rows", block_rows)
    resolved = resolve_backend(backend, layer.residual.device)
    check_precision(precision, backend, layer.residual.device)
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
    return layer_maps_ref(
        layer,
        activation,
        measures,
        projection=projection,
        block_rows=block_rows,
        embedding_columns=embedding_columns,
        rows=rows,
    )
