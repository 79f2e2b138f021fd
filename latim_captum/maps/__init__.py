"""The engine: traces in, token-to-token maps out.

==================  ==============================================================================================
``options``         backends, precisions, kernels, measures and their checks; :class:`LatimMemoryError`
``ref``             :func:`layer_maps_ref`, the readable reference (row blocks of materialised ``T_i(x_j)``)
``tiles``           what both tile implementations share: layer context, causal mixing, memory sizing
``torch_tiles``     the tiles in PyTorch ops
``sublayer_tiles``  PyTorch tiles of a hybrid's attention and MLP/MoE sublayers
``triton``          the tiles' Triton kernels (``kernels``, ``launch``, ``workspace``; needs ``triton``)
``fast``            :func:`layer_maps_fast`, the tiled path of one Mamba layer (either kernel)
``layer``           :func:`layer_maps`, one sublayer on any backend
``all_layers``      every layer: :func:`stack`, :func:`alti_rollout`, :func:`alti_logit`, :func:`alti_logit_layers`
``rows``            one query row of the rollout and of ALTI-Logit in O(N·d) memory
``memory``          the memory guard: a request's allocations estimated before the forward pass, free memory
==================  ==============================================================================================

Every function here takes a :class:`~latim_captum.traces.ModelTrace` (or one of its layers), never a model; the
model-facing entry points are in :mod:`latim_captum.api`.
"""

from .all_layers import AltiLogit, AltiLogitLayers, alti_logit, alti_logit_layers, alti_rollout, stack
from .fast import layer_maps_fast
from .layer import layer_maps
from .memory import RequestSizes, estimate
from .options import (
    BACKENDS,
    KERNELS,
    MEASURES,
    PRECISIONS,
    LatimMemoryError,
    check_backend,
    check_precision,
    check_precision_name,
    matmul_precision,
    resolve_backend,
)
from .ref import layer_maps_ref
from .rows import logit_row, rollout_row, row_total

__all__ = [
    "BACKENDS",
    "KERNELS",
    "MEASURES",
    "PRECISIONS",
    "AltiLogit",
    "AltiLogitLayers",
    "RequestSizes",
    "LatimMemoryError",
    "alti_logit",
    "alti_logit_layers",
    "alti_rollout",
    "check_backend",
    "check_precision",
    "check_precision_name",
    "estimate",
    "layer_maps",
    "layer_maps_fast",
    "layer_maps_ref",
    "logit_row",
    "matmul_precision",
    "resolve_backend",
    "rollout_row",
    "row_total",
    "stack",
]
