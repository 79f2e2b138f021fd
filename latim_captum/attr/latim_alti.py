"""LaTIM (ALTI): contextual mixing with the residual stream, per layer or rolled out over layers (eq 6)."""

from __future__ import annotations

import torch
from torch import nn

from latim_captum.adapters import ModelAdapter
from latim_captum.aggregate import rollout
from latim_captum.api import interactions, layer_maps, trace

from ._base import TokenMapAttribution, TokenMaps

__all__ = ["LatimALTI"]


class LatimALTI(TokenMapAttribution):
    r"""LaTIM (ALTI) as a Captum attribution (eq 6).

    ``C_ij = [‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1]_+ / Σ_k [‖y_i‖_1 − ‖y_i − T'_i(x_k)‖_1]_+`` with
    ``T'_i(x_j) = T_i(x_j) + δ_ij x_i`` (the residual is token i's own) and ``y_i`` the block output. Each row is a
    distribution over the input tokens (non-negative, sums to 1). Target-free (``target`` is validated, then ignored).

    ``layer``: ``"rollout"`` (the default) multiplies the per-layer maps, ``R = P^{(L)} ⋯ P^{(1)}``, so row i says
    how much of the last layer's representation at i comes from each input token; an int, a list or ``"all"`` give
    per-layer maps. A Zamba2 hybrid layer also reads the input embeddings: its per-layer map adds each token's
    stream and embedding columns, and the rollout takes ``R ← A^x R + A^e`` (see
    :func:`latim_captum.aggregate.rollout`).

    Args:
        model: a supported Mamba model.
        activation: the additive ``f`` of eq 19 (``"silu"``, ``"identity"``, ``"taylor1"``, ``"taylor2"``,
            ``"silu_gate"``).
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from latim_captum import LatimALTI
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> attr = LatimALTI(model).attribute(torch.tensor([[3, 1, 4, 1, 5]]))      # rollout, last token
        >>> attr.shape, round(attr.sum().item(), 4)
        (torch.Size([1, 5]), 1.0)
    """

    display_name = "LaTIM (ALTI)"
    per_layer = True
    default_layer = "rollout"
    layer_modes = ("rollout",)

    def __init__(
        self, model: nn.Module | ModelAdapter, *, activation: str = "silu", dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(model, activation=activation, dtype=dtype)

    def compute_maps(self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target) -> TokenMaps:
        if mode == "rollout":
            activation, dtype = self.options["activation"], self.options["dtype"]
            tr = trace(self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=dtype)
            # embedding columns kept: a Zamba2 hybrid layer's embedding half joins the rollout directly
            maps = [layer_maps(layer, activation, ("alti",), embedding_columns=True)["alti"] for layer in tr.layers]
            return TokenMaps(rollout(maps))
        maps = interactions(
            self.adapter,
            input_ids,
            inputs_embeds,
            method="alti",
            layers=layers,
            attention_mask=attention_mask,
            **self.options,
        )
        return TokenMaps(maps)
