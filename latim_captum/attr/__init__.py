"""Captum attribution classes: LaTIM maps behind Captum's ``Attribution`` interface.

One module per method (like Captum's ``attr/_core``) and a shared base, :class:`TokenMapAttribution`, that turns
any token-to-token map function into a Captum class.
"""

from ._base import DEFAULT, LayerSpec, TokenMapAttribution, TokenMaps
from .baselines import MambaAttention, MambaAttribution, MambaLRP
from .latim_alti import LatimALTI
from .latim_alti_logit import LatimALTILogit
from .latim_l2 import LatimL2
from .llm import LatimLLMAttribution

__all__ = [
    "DEFAULT",
    "LatimALTI",
    "LatimALTILogit",
    "LatimL2",
    "LatimLLMAttribution",
    "LayerSpec",
    "MambaAttention",
    "MambaAttribution",
    "MambaLRP",
    "TokenMapAttribution",
    "TokenMaps",
]
