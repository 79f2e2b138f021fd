"""Any per-layer LaTIM measure of the method table as a Captum attribution: ``C^{(l)}_ij = m(T^{(l)}_i(x_j))``.

:class:`LatimMeasure` is the shared base of :class:`~latim_captum.attr.LatimL2` and
:class:`~latim_captum.attr.LatimALTI`; :func:`measure_class` makes the class of a table entry that has no
hand-written one (e.g. ``LatimL1``), so a new per-layer measure needs only its entry in :mod:`latim_captum.catalog`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from latim_captum.activations import DEFAULT_ACTIVATION
from latim_captum.adapters import ModelAdapter
from latim_captum.catalog import MethodSpec

from ._base import TokenMapAttribution, TokenMaps
from ._latim_options import path_options, per_layer_maps

__all__ = ["LatimMeasure", "measure_class"]


class LatimMeasure(TokenMapAttribution):
    """Base of the per-layer LaTIM classes: the map of :attr:`measure` (a measure of :mod:`latim_captum.maps`) at
    each requested layer.

    Args:
        model: a supported Mamba model (HF Mamba / FalconMamba / Mamba-2, mamba-ssm, hybrids).
        activation: the additive ``f`` of eq 19: ``"silu_gate"`` (the default, exact for SiLU models), ``"silu"``
            (the paper's), ``"identity"``, ``"taylor1"``, ``"taylor2"``.
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`): ``"auto"`` (the tiles, on every device), ``"ref"``
            (the readable reference), ``"fast"`` or ``"triton"`` (the Triton kernels: the fastest on a GPU); same
            values.
        precision: the tiled paths' ``W_o`` product, ``"highest"``, ``"tf32"`` or ``"bf16"``.

    ``layer`` defaults to the last layer; a list or ``"all"`` stacks a layer dimension after the batch. Target-free
    (``target`` is validated, then ignored). ``attribute`` without ``return_matrix`` computes only the query row
    (O(N·d·D) per layer).
    """

    #: the measure reduced per layer (``"l1"``, ``"l2"``, ``"alti"``, ...)
    measure: ClassVar[str]
    default_layer = -1
    row_capable = True

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        *,
        activation: str = DEFAULT_ACTIVATION,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        precision: str = "highest",
    ) -> None:
        super().__init__(model, **path_options(activation, dtype, backend, precision))

    def layer_measure(self) -> str:
        """The measure this instance reduces (:attr:`measure`; :class:`~latim_captum.attr.LatimL2` has any ``p``)."""
        return self.measure

    def compute_maps(
        self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target, position=None
    ) -> TokenMaps:
        if mode is not None:
            raise NotImplementedError(f"{type(self).__name__} lists layer mode {mode!r} but does not handle it")
        maps = per_layer_maps(
            self, self.layer_measure(), layers, input_ids, inputs_embeds, attention_mask, position=position
        )
        return TokenMaps(maps)


def measure_class(spec: MethodSpec) -> type[LatimMeasure]:
    """The Captum class of a per-layer LaTIM table entry, named ``spec.captum``.

    Example:
        >>> from latim_captum import catalog
        >>> measure_class(catalog.get("l1")).__name__
        'LatimL1'
    """
    if spec.family != "latim" or not spec.per_layer or spec.captum is None:
        raise ValueError(f"{spec.name!r} is not a per-layer LaTIM entry with a Captum class name")
    doc = (
        f"{spec.label} as a Captum attribution: the ``{spec.measure}`` map of ``T^{{(l)}}_i(x_j)`` at one layer (made "
        f"from the method table entry {spec.name!r}).\n\n" + (LatimMeasure.__doc__ or "").split("\n\n", 1)[1]
    )
    namespace = {"method_spec": spec, "measure": spec.measure, "__doc__": doc, "__module__": "latim_captum.attr"}
    return type(spec.captum, (LatimMeasure,), namespace)
