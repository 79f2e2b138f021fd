"""latim-captum: LaTIM token-to-token interactions for Mamba models, for Captum and Inseq users.

LaTIM (Pitorro & Treviso) decomposes each Mamba-1 / Mamba-2 layer into contribution vectors ``T_i(x_j)`` and turns
them into maps with ℓp norms, ALTI and ALTI-Logit.

Example:
    >>> import torch, latim_captum
    >>> from transformers import MambaConfig, MambaForCausalLM
    >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
    >>> latim_captum.interactions(model, torch.tensor([[3, 1, 4, 1, 5]]), method="l2").shape
    torch.Size([1, 2, 5, 5])
"""

from .activations import ACTIVATIONS
from .api import (
    METHODS,
    alti_logit,
    alti_logit_layers,
    alti_rollout,
    contributions,
    interactions,
    reconstruction_error,
    trace,
)
from .attr import (
    LatimALTI,
    LatimALTILogit,
    LatimALTILogitLayers,
    LatimALTINoResidual,
    LatimL1,
    LatimL2,
    LatimLLMAttribution,
    MambaAttention,
    MambaAttribution,
    MambaLRP,
    TokenMapAttribution,
)
from .baselines import mamba_attention, mamba_attribution, mamba_lrp
from .maps import BACKENDS, PRECISIONS, AltiLogit, AltiLogitLayers, LatimMemoryError, layer_maps, layer_maps_ref
from .single_query import alti_logit_row, alti_rollout_row
from .traces import LayerTrace, Mamba1SSM, Mamba2SSM, ModelTrace, Readout

# Inseq is an optional extra (latim-captum[inseq]): when it is installed, importing the package registers the
# Inseq methods of the method table (latim, latim_alti_logit, latim_alti, latim_l2, ...; Inseq 0.7 has no plugin
# entry points).
try:
    import inseq as _inseq_package
except ImportError:  # the extra is not installed
    _inseq_package = None
if _inseq_package is not None:
    from . import inseq as inseq_methods  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "METHODS",
    "PRECISIONS",
    "AltiLogit",
    "AltiLogitLayers",
    "LatimALTI",
    "LatimALTILogit",
    "LatimALTILogitLayers",
    "LatimALTINoResidual",
    "LatimL1",
    "LatimL2",
    "LatimLLMAttribution",
    "LatimMemoryError",
    "LayerTrace",
    "MambaAttention",
    "MambaAttribution",
    "MambaLRP",
    "Mamba1SSM",
    "Mamba2SSM",
    "ModelTrace",
    "Readout",
    "TokenMapAttribution",
    "alti_logit",
    "alti_logit_layers",
    "alti_logit_row",
    "alti_rollout",
    "alti_rollout_row",
    "contributions",
    "interactions",
    "layer_maps",
    "layer_maps_ref",
    "mamba_attention",
    "mamba_attribution",
    "mamba_lrp",
    "reconstruction_error",
    "trace",
]
