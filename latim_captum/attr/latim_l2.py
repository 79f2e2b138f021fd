"""LaTIM (ℓp): the norm of each token's contribution vector, per layer (eq 5)."""

from __future__ import annotations

import math

import torch
from torch import nn

from latim_captum.adapters import ModelAdapter
from latim_captum.aggregate import lp_measure
from latim_captum.api import layer_maps, trace

from ._base import TokenMapAttribution, TokenMaps

__all__ = ["LatimL2"]


class LatimL2(TokenMapAttribution):
    r"""LaTIM (ℓp) as a Captum attribution: ``C_ij = ‖T_i(x_j)‖_p`` at one layer (eq 5, ``p = 2`` by default).

    ``T_i(x_j)`` is token j's contribution vector to the mixer output at position i (eqs 16-25). Scores are
    non-negative and target-free (``target`` is validated, then ignored). ``layer`` defaults to the last layer; a
    list or ``"all"`` stacks a layer dimension after the batch.

    Args:
        model: a supported Mamba model (HF Mamba / FalconMamba / Mamba-2, with or without LM head).
        p: the norm's order (``p >= 1``, ``math.inf`` allowed).
        activation: the additive ``f`` of eq 19 (``"silu"``, ``"identity"``, ``"taylor1"``, ``"taylor2"``,
            ``"silu_gate"``).
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from latim_captum import LatimL2
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> ids = torch.tensor([[3, 1, 4, 1, 5]])
        >>> LatimL2(model).attribute(ids).shape                   # last token, last layer
        torch.Size([1, 5])
        >>> LatimL2(model, p=1).attribute(ids, layer="all").shape
        torch.Size([1, 2, 5])
    """

    display_name = "LaTIM (ℓ2)"
    per_layer = True
    default_layer = -1

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        *,
        p: float = 2.0,
        activation: str = "silu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p >= 1):
            raise ValueError(f"p must be a number >= 1 (or math.inf), got {p!r}")
        super().__init__(model, activation=activation, dtype=dtype)
        self.p = float(p)

    def compute_maps(self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target) -> TokenMaps:
        activation, dtype = self.options["activation"], self.options["dtype"]
        tr = trace(self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=dtype)
        measure = lp_measure(self.p)
        per_layer = [layer_maps(tr.layers[idx], activation, (measure,))[measure] for idx in layers]
        return TokenMaps(torch.stack(per_layer, dim=1))

    def __repr__(self) -> str:
        p = "inf" if math.isinf(self.p) else f"{self.p:g}"
        return f"LatimL2(p={p}, activation={self.options['activation']!r})"
