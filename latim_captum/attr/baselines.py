"""The paper's baselines as Captum attributions, beside the LaTIM classes: thin wrappers of
:mod:`latim_captum.baselines` on :class:`~latim_captum.attr._base.TokenMapAttribution`.
"""

from __future__ import annotations

import torch
from torch import nn

from latim_captum import catalog
from latim_captum.adapters import ModelAdapter
from latim_captum.baselines import mamba_attention, mamba_attribution, mamba_lrp

from ._base import TokenMapAttribution

__all__ = ["MambaAttention", "MambaAttribution", "MambaLRP"]


class MambaAttention(TokenMapAttribution):
    r"""Mamba-Attention (Ali et al., 2024): the implicit attention of eq 15 averaged over channels (heads for
    Mamba-2), per layer; conv, D skip and gate excluded. See :func:`latim_captum.baselines.mamba_attention`.

    ``layer`` defaults to the last layer; a list or ``"all"`` stacks a layer dimension. Target-free.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> MambaAttention(model).attribute(torch.tensor([[3, 1, 4, 1, 5]]), layer="all").shape
        torch.Size([1, 2, 5])
    """

    method_spec = catalog.get("mamba_attention")
    map_fn = staticmethod(mamba_attention)
    default_layer = -1
    row_capable = True

    def __init__(
        self, model: nn.Module | ModelAdapter, *, normalize: str = "minmax", dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(model, normalize=normalize, dtype=dtype)


class MambaAttribution(TokenMapAttribution):
    r"""Mamba-Attribution (Ali et al., 2024): gradient-weighted implicit attention rolled out over all layers.
    See :func:`latim_captum.baselines.mamba_attribution` (``gradient="hidden"`` follows the reference code,
    ``"attention"`` the Chefer-style rule). ``target`` defaults to the predicted next token at ``position``.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> MambaAttribution(model).attribute(torch.tensor([[3, 1, 4, 1, 5]]), target=7).shape
        torch.Size([1, 5])
    """

    method_spec = catalog.get("mamba_attribution")
    map_fn = staticmethod(mamba_attribution)
    default_layer = None
    row_capable = True

    def __init__(
        self, model: nn.Module | ModelAdapter, *, gradient: str = "hidden", dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(model, gradient=gradient, dtype=dtype)


class MambaLRP(TokenMapAttribution):
    r"""MambaLRP (Jafari et al., 2024): Gradient×Input through a forward pass with the non-conservative parts
    detached; relevances sum to the target logit minus what additive biases absorb. See
    :func:`latim_captum.baselines.mamba_lrp`. ``target`` defaults to the predicted next token at ``position``.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> MambaLRP(model).attribute(torch.tensor([[3, 1, 4, 1, 5]])).shape
        torch.Size([1, 5])
    """

    method_spec = catalog.get("mamba_lrp")
    map_fn = staticmethod(mamba_lrp)
    default_layer = None
    row_capable = True

    def __init__(self, model: nn.Module | ModelAdapter, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(model, dtype=dtype)
