"""LaTIM (ALTI-Logit per layer): each layer's term of eq 8 apart, as a Captum attribution."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from latim_captum import catalog
from latim_captum.api import alti_logit_layers
from latim_captum.maps.all_layers import layer_share, logit_terms
from latim_captum.maps.placement import layer_device

from ._base import DEFAULT, TokenMaps
from .latim_alti_logit import LatimALTILogit, attribution_tensor

__all__ = ["LatimALTILogitLayers"]


class LatimALTILogitLayers(LatimALTILogit):
    r"""Per-layer ALTI-Logit as a Captum attribution: how much each input token adds to the target logit *through
    layer l*, ``C^{(l)}_ij = Σ_k (T^{(l)}_i(x_k) · u_i) R^{(l-1)}_{kj}`` (eq 8's term of layer l, with ``R^{(l-1)}``
    the ALTI rollout of the layers below).

    Eq 8 (:class:`LatimALTILogit`) is the sum of these terms over all layers plus the embedding term
    ``u_i · x^{(0)}_i`` on the diagonal: apart, they show which layer moves the logit and from which tokens.
    ``layer`` is an int (default: the last), a list or ``"all"``. For an exact strategy a layer's row sums to that
    layer's share of the logit, ``u_i · (mixer_output^{(l)}_i − offset^{(l)})`` read from the model's own sublayer
    output, so one layer has Captum's convergence delta ``Σ_j C^{(l)}_ij − that share`` (a list of layers has no
    single total). ``target`` and ``contrast`` as in :class:`LatimALTILogit`; arguments as there. A separate
    :meth:`compute_convergence_delta` call (Captum's generic "attribute, then delta" pattern) of attributions this
    object returned reads the layer, position and contrast of the call that made them unless given, so the delta is
    that of the row and layer attributed.

    Every layer is computed at each call (the rollout needs those below): the cost is ALTI-Logit's, full maps.

    Example:
        >>> import torch
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> from latim_captum import LatimALTILogitLayers
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> attr, delta = LatimALTILogitLayers(model).attribute(torch.tensor([[3, 1, 4, 1, 5]]), layer=0,
        ...                                                     return_convergence_delta=True)
        >>> attr.shape, bool(delta.abs().max() < 1e-3)
        (torch.Size([1, 5]), True)
    """

    method_spec = catalog.get("alti_logit_layers")
    default_layer = -1
    row_capable = False

    def compute_maps(
        self, *, input_ids, inputs_embeds, attention_mask, layers, mode, target, position=None, contrast=None
    ) -> TokenMaps:
        if mode is not None:
            raise NotImplementedError(f"{type(self).__name__} has no layer mode {mode!r}")
        res = alti_logit_layers(
            self.adapter, input_ids, inputs_embeds, attention_mask=attention_mask, layers=layers, target=target,
            contrast=contrast, **self.options,
        )  # fmt: skip
        # one layer: its share is what each row sums to; several have no single total (attribute() says so)
        return TokenMaps(res.scores, res.layer_totals[:, 0] if len(layers) == 1 else None)

    def compute_convergence_delta(
        self,
        attributions: Tensor | tuple[Tensor, ...],
        start_point: Any = None,
        end_point: Tensor | tuple[Tensor, ...] | None = None,
        target: int | Sequence[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        *,
        position: int | None = DEFAULT,
        contrast: int | Sequence[int] | Tensor | None = DEFAULT,
        layer: int | None = None,
    ) -> Tensor:
        """Captum's delta of one layer's attributions: ``Σ attributions − u · (mixer_output^{(l)} −
        offset^{(l)})`` at the query position, ``[B]`` (one forward pass). Arguments as
        :meth:`LatimALTILogit.compute_convergence_delta`, plus ``layer``: an int, or None for the layer of the
        :meth:`attribute` call of this object that returned ``attributions`` (the default, the last layer, for any
        other tensor).

        Raises:
            ValueError: ``layer`` (given, or from the call that made the attributions) is not one int in range, or as
                :meth:`LatimALTILogit.compute_convergence_delta`.
        """
        made = self.options_of(attribution_tensor(attributions))
        spec = self.resolve_layer(made.get("layer", DEFAULT) if layer is None else layer)
        if spec.stacked or spec.layers is None:
            raise ValueError(
                f"the convergence delta of {self.get_name()} is per layer: pass layer= one int"
                + (" (these attributions are of a list of layers or 'all')" if layer is None else "")
            )
        return self._delta(
            attributions, start_point, end_point, target, additional_forward_args, position, contrast,
            layer=spec.layers[0], assumed=("layer",) if layer is None else (),
        )  # fmt: skip

    def explained_total(self, tr, rows: Tensor, targets: Tensor, contrast: Tensor | None, layer: int = -1) -> Tensor:
        """Layer ``layer``'s share of the logit at the query rows, ``[B]``."""
        direction, _, _ = logit_terms(tr.readout, targets, contrast)
        batch = torch.arange(rows.shape[0], device=rows.device)
        u = direction * tr.readout.norm_scale[batch, rows, None]  # [B, D]
        sub = tr.layers[layer]
        # [B, N]: u_b against every row of the layer (where the layer lives), then the query's row
        share = layer_share(sub, u[:, None].to(layer_device(sub))).to(rows.device)
        return share[batch, rows]
