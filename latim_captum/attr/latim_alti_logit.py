"""LaTIM (ALTI-Logit): every token's share of the target logit, over all layers (eqs 7-8)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from latim_captum import catalog
from latim_captum._queries import query_positions
from latim_captum._validation import check_model_inputs
from latim_captum.activations import DEFAULT_ACTIVATION
from latim_captum.adapters import ModelAdapter
from latim_captum.api import alti_logit, trace
from latim_captum.maps import row_total
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
    (projected out-projection biases and the LM-head bias). Captum's completeness is ``Σ attr = F(x) − F(baseline)``
    and its convergence delta ``Σ attr − (F(x) − F(baseline))``; here the offset plays the role of ``F(baseline)``,
    so the delta is

    ``delta = Σ_j C_ij − (logit(target) − offset)``

    ≈ 0 (rounding) for ``activation="silu_gate"`` (the default) on SiLU models and ``"identity"`` on
    ``hidden_act="linear"`` models, and the decomposition error for approximate strategies (``"silu"``, the paper's
    choice). :meth:`compute_convergence_delta` gives it for attributions computed elsewhere.

    **Contrastive**: ``attribute(ids, target=t, contrast=c)`` decomposes the logit difference ``logit(t) −
    logit(c)`` at the query position (the logit is linear in the unembedding row, so the projection is on
    ``U_t − U_c``); the delta then checks ``Σ_j C_ij = logit(t) − logit(c) − offset``.

    The query position defaults to each example's last real token (per the attention mask): right-padded batches are
    queried where each example's prediction is made, and their padding columns are exactly 0.

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
    supports_contrast = True

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
        if self.adapter.lm_head is None:
            raise TypeError(
                f"ALTI-Logit explains a logit and needs a model with an LM head; {type(model).__name__} has none"
            )

    def compute_maps(
        self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target, position=None, contrast=None
    ) -> TokenMaps:
        if position is None:
            res = alti_logit(
                self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, target=target,
                contrast=contrast, **self.options,
            )  # fmt: skip
            return TokenMaps(res.scores, res.logits - res.offset)
        guard_row_maps(self, input_ids, inputs_embeds)
        if target is not None and target.dim() == 2:  # one target per position (the LLM front end): this row's
            target = target[:, position]
        if contrast is not None and contrast.dim() == 2:
            contrast = contrast[:, position]
        res = alti_logit_row(
            self.adapter,
            input_ids,
            inputs_embeds,
            position=position,
            attention_mask=attention_mask,
            target=target,
            contrast=contrast,
            **self.options,
        )
        totals = res.scores.new_zeros(res.scores.shape)  # [B, N]: what each row sums to, zero off the query
        totals[:, position] = res.logits - res.offset
        return TokenMaps(row_as_map(res.scores, position), totals)

    def compute_convergence_delta(
        self,
        attributions: Tensor | tuple[Tensor, ...],
        start_point: Any = None,
        end_point: Tensor | tuple[Tensor, ...] | None = None,
        target: int | Sequence[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        position: int | None = None,
        contrast: int | Sequence[int] | Tensor | None = None,
    ) -> Tensor:
        """Captum's convergence delta of given attributions: ``Σ attributions − (F(x) − F(baseline))``, ``[B]``.

        ``F(x) − F(baseline)`` is ``logit(target) − offset`` at the query position (the logit difference with a
        ``contrast``): the offset, what no token owns, plays ``F(baseline)``. It needs one forward pass, not the
        attributions. Arguments as Integrated Gradients' ``compute_convergence_delta``: ``end_point`` is the input
        (ids or ``inputs_embeds``); ``start_point`` (the baseline) must be None.

        Example:
            >>> method = LatimALTILogit(model)                                      # doctest: +SKIP
            >>> attr = method.attribute(ids, target=7)                              # doctest: +SKIP
            >>> method.compute_convergence_delta(attr, end_point=ids, target=7)    # ≈ 0  # doctest: +SKIP

        Raises:
            ValueError: a baseline, no ``end_point``, or attributions whose batch does not match it.
        """
        return self._delta(attributions, start_point, end_point, target, additional_forward_args, position, contrast)

    def _delta(self, attributions, start_point, end_point, target, additional_forward_args, position, contrast,
               **extra: Any) -> Tensor:  # fmt: skip
        """:meth:`compute_convergence_delta` with ``extra`` options for :meth:`explained_total`."""
        if start_point is not None:
            raise ValueError(f"{self.get_name()} needs no baseline: start_point must be None")
        if end_point is None:
            raise ValueError("compute_convergence_delta needs end_point, the input the attributions explain")
        x, _ = self.split_inputs(end_point)
        attr, _ = self.split_inputs(attributions) if isinstance(attributions, tuple) else (attributions, False)
        is_embeds = x.dtype.is_floating_point
        mask = self.format_mask(additional_forward_args)
        ids, embeds, mask = check_model_inputs(self.adapter, None if is_embeds else x, x if is_embeds else None, mask)
        bsz, n = x.shape[:2]
        if attr.shape[0] != bsz:
            raise ValueError(f"attributions hold {attr.shape[0]} examples, end_point {bsz}")
        positions = query_positions(position, mask, bsz, n)
        tgt = self.format_target(target, bsz)
        ctr = self.format_contrast(contrast, bsz)
        with torch.no_grad():
            tr = trace(self.adapter, ids, embeds, attention_mask=mask, dtype=self.options["dtype"])
            rows = positions.to(tr.readout.logits.device)
            batch = torch.arange(bsz, device=rows.device)
            targets = tr.readout.logits[batch, rows].argmax(-1) if tgt is None else tgt.to(rows.device)
            total = self.explained_total(tr, rows, targets, None if ctr is None else ctr.to(rows.device), **extra)
        sums = attr.reshape(bsz, -1).sum(-1).to(total)
        return sums - total

    def explained_total(self, tr, rows: Tensor, targets: Tensor, contrast: Tensor | None) -> Tensor:
        """``F(x) − F(baseline)`` of the query rows, ``[B]``: the target logit (difference) minus the offset."""
        total = row_total(tr, rows, targets, contrast)
        return total.logits - total.offset
