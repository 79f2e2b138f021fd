"""LaTIM (ALTI-Logit): every token's share of the target logit, over all layers (eqs 7-8)."""

from __future__ import annotations

import torch
from torch import nn

from latim_captum import catalog
from latim_captum.adapters import ModelAdapter
from latim_captum.api import alti_logit
from latim_captum.single_query import alti_logit_row

from ._base import TokenMapAttribution, TokenMaps, row_as_map
from ._latim_options import guard_row_maps, path_options

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
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`): ``"auto"`` (fast on CUDA, reference elsewhere),
            ``"ref"``, ``"fast"`` or ``"triton"`` (the Triton kernels: the fastest on a GPU); same values.
        precision: the tiled paths' ``W_o`` product, ``"highest"``, ``"tf32"`` or ``"bf16"``.

    ``attribute`` without ``return_matrix`` computes only the query row (:func:`latim_captum.alti_logit_row`): the
    lower layers' ALTI rows up to the query are streamed, so the memory grows as O(N·d), not O(N²).

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

    method_spec = catalog.get("alti_logit")
    default_layer = None
    has_delta = True
    row_capable = True

    def __init__(
        self,
        model: nn.Module | ModelAdapter,
        *,
        activation: str = "silu",
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        precision: str = "highest",
    ) -> None:
        super().__init__(model, **path_options(activation, dtype, backend, precision))
        if self.adapter.lm_head is None:
            raise TypeError(
                f"ALTI-Logit explains a logit and needs a model with an LM head; {type(model).__name__} has none"
            )

    def compute_maps(
        self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target, position=None
    ) -> TokenMaps:
        if position is None:
            res = alti_logit(
                self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, target=target, **self.options
            )
            return TokenMaps(res.scores, res.logits - res.offset)
        guard_row_maps(self, input_ids, inputs_embeds)
        if target is not None and target.dim() == 2:  # one target per position (the LLM front end): this row's
            target = target[:, position]
        res = alti_logit_row(
            self.adapter,
            input_ids,
            inputs_embeds,
            position=position,
            attention_mask=attention_mask,
            target=target,
            **self.options,
        )
        totals = res.scores.new_zeros(res.scores.shape)  # [B, N]: what each row sums to, zero off the query
        totals[:, position] = res.logits - res.offset
        return TokenMaps(row_as_map(res.scores, position), totals)
