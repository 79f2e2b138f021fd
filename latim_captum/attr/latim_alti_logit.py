"""LaTIM (ALTI-Logit): every token's share of the target logit, over all layers (eqs 7-8)."""

from __future__ import annotations

import torch
from torch import nn

from latim_captum.adapters import ModelAdapter
from latim_captum.api import alti_logit

from ._base import TokenMapAttribution, TokenMaps

__all__ = ["LatimALTILogit"]


class LatimALTILogit(TokenMapAttribution):
    r"""LaTIM (ALTI-Logit) as a Captum attribution (eqs 7-8): how much each input token adds to the target logit.

    ``C_ij = u_i · x_i^{(0)} δ_ij + Σ_l Σ_k Δ^{(l)}_{ik} R^{(l-1)}_{kj}`` with ``Δ^{(l)}_{ik} = T^{(l)}_i(x_k) · u_i``
    (eq 7), ``u_i`` the target's unembedding row through the final RMSNorm's fixed scale, and ``R`` the ALTI rollout
    of the residual stream. All layers are aggregated, so ``layer`` must be None.

    ``target`` is the token whose logit is explained at ``position`` (an int, B ints, or a ``[B]`` tensor); the
    default is the model's predicted next token there. Scores are signed and, for an exact activation strategy,
    complete: ``Σ_j C_ij = logit_i(target) − offset_i``, where the offset is the part of the logit no token owns
    (projected out-projection biases and the LM-head bias). Captum's completeness is ``Σ attr = F(x) − F(baseline)``;
    here the offset plays the role of ``F(baseline)``, so the convergence delta is

    ``delta = logit(target) − offset − Σ_j C_ij``

    ≈ 0 (rounding) for ``activation="silu_gate"`` on SiLU models and ``"identity"`` on ``hidden_act="linear"`` models,
    and the decomposition error for approximate strategies (``"silu"``, the paper default).

    Args:
        model: a supported Mamba model with an LM head (``*ForCausalLM``).
        activation: the additive ``f`` of eq 19.
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.

    Examples:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from latim_captum import LatimALTILogit
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> method = LatimALTILogit(model, activation="silu_gate")
        >>> attr, delta = method.attribute(torch.tensor([[3, 1, 4, 1, 5]]), return_convergence_delta=True)
        >>> attr.shape, bool(delta.abs().max() < 1e-3)
        (torch.Size([1, 5]), True)
    """

    display_name = "LaTIM (ALTI-Logit)"
    per_layer = False
    default_layer = None
    uses_target = True
    has_delta = True

    def __init__(
        self, model: nn.Module | ModelAdapter, *, activation: str = "silu", dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__(model, activation=activation, dtype=dtype)
        if self.adapter.lm_head is None:
            raise TypeError(
                f"ALTI-Logit explains a logit and needs a model with an LM head; {type(model).__name__} has none"
            )

    def compute_maps(self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target) -> TokenMaps:
        res = alti_logit(
            self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, target=target, **self.options
        )
        return TokenMaps(res.scores, res.logits - res.offset)
