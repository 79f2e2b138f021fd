"""Captum attribution classes: LaTIM maps behind Captum's ``Attribution`` interface.

One module per method (like Captum's ``attr/_core``) and a shared base, :class:`TokenMapAttribution`, that turns
any token-to-token map function into a Captum class. Every entry of the method table (:mod:`latim_captum.catalog`)
that names a Captum class has one here: written by hand for the paper's methods, made by
:func:`~latim_captum.attr.latim_measure.measure_class` for any other per-layer LaTIM measure (``LatimL1``).
"""

from latim_captum import catalog

from ._base import DEFAULT, LayerSpec, TokenMapAttribution, TokenMaps
from .baselines import MambaAttention, MambaAttribution, MambaLRP
from .latim_alti import LatimALTI
from .latim_alti_logit import LatimALTILogit
from .latim_alti_logit_layers import LatimALTILogitLayers
from .latim_l2 import LatimL2
from .latim_measure import LatimMeasure, measure_class
from .llm import LatimLLMAttribution

_WRITTEN = {
    cls.__name__: cls
    for cls in (LatimALTI, LatimALTILogit, LatimALTILogitLayers, LatimL2, MambaAttention, MambaAttribution, MambaLRP)
}
#: the Captum class of every table entry that names one, by class name
CAPTUM_CLASSES: dict[str, type[TokenMapAttribution]] = {
    spec.captum: _WRITTEN.get(spec.captum) or measure_class(spec) for spec in catalog.METHOD_TABLE if spec.captum
}
LatimL1 = CAPTUM_CLASSES["LatimL1"]
LatimALTINoResidual = CAPTUM_CLASSES["LatimALTINoResidual"]

__all__ = [
    "CAPTUM_CLASSES",
    "DEFAULT",
    "LatimALTI",
    "LatimALTILogit",
    "LatimALTILogitLayers",
    "LatimALTINoResidual",
    "LatimL1",
    "LatimL2",
    "LatimLLMAttribution",
    "LatimMeasure",
    "LayerSpec",
    "MambaAttention",
    "MambaAttribution",
    "MambaLRP",
    "TokenMapAttribution",
    "TokenMaps",
]
