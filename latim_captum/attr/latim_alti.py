"""LaTIM (ALTI): contextual mixing with the residual stream, per layer or rolled out over layers (eq 6)."""

from __future__ import annotations

from latim_captum import catalog
from latim_captum.api import alti_rollout
from latim_captum.single_query import alti_rollout_row

from ._base import TokenMaps, row_as_map
from ._latim_options import guard_row_maps
from .latim_measure import LatimMeasure

__all__ = ["LatimALTI"]


class LatimALTI(LatimMeasure):
    r"""LaTIM (ALTI) as a Captum attribution (eq 6).

    ``C_ij = [‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1]_+ / Σ_k [‖y_i‖_1 − ‖y_i − T'_i(x_k)‖_1]_+`` with
    ``T'_i(x_j) = T_i(x_j) + δ_ij x_i`` (the residual is token i's own) and ``y_i`` the block output. Each row is a
    distribution over the input tokens (non-negative, sums to 1). Target-free (``target`` is validated, then ignored).

    ``layer``: ``"rollout"`` (the default) multiplies the per-layer maps, ``R = P^{(L)} ⋯ P^{(1)}``, so row i says
    how much of the last layer's representation at i comes from each input token; an int, a list or ``"all"`` give
    per-layer maps. A Zamba2 hybrid layer also reads the input embeddings: its per-layer map adds each token's
    stream and embedding columns, and the rollout takes ``R ← A^x R + A^e`` (see
    :func:`latim_captum.alti_rollout`).

    Args:
        model: a supported Mamba model.
        activation: the additive ``f`` of eq 19: ``"silu_gate"`` (the default, exact for SiLU models), ``"silu"``
            (the paper's), ``"identity"``, ``"taylor1"``, ``"taylor2"``.
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`): ``"auto"`` (the tiles, on every device), ``"ref"``
            (the readable reference), ``"fast"`` or ``"triton"`` (the Triton kernels: the fastest on a GPU); same
            values.
        precision: the tiled paths' ``W_o`` product, ``"highest"``, ``"tf32"`` or ``"bf16"``.

    ``attribute`` without ``return_matrix`` computes only the query row: ``O(N·d·D)`` per layer for per-layer maps;
    the rollout's row (:func:`latim_captum.alti_rollout_row`) still needs every lower layer's rows up to the query,
    but in O(N) memory per layer instead of ``N × N`` maps.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from latim_captum import LatimALTI
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> attr = LatimALTI(model).attribute(torch.tensor([[3, 1, 4, 1, 5]]))      # rollout, last token
        >>> attr.shape, round(attr.sum().item(), 4)
        (torch.Size([1, 5]), 1.0)
    """

    method_spec = catalog.get("alti")
    measure = "alti"
    default_layer = "rollout"
    layer_modes = ("rollout",)

    def compute_maps(
        self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target, position=None
    ) -> TokenMaps:
        if mode != "rollout":
            return super().compute_maps(
                input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, layers=layers,
                mode=mode, target=target, position=position,
            )  # fmt: skip
        opts = self.options
        if position is not None:
            guard_row_maps(self, input_ids, inputs_embeds)
            row = alti_rollout_row(
                self.adapter, input_ids, inputs_embeds, position=position, attention_mask=attention_mask, **opts
            )
            return TokenMaps(row_as_map(row, position))
        rolled = alti_rollout(self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, **opts)
        return TokenMaps(rolled)
