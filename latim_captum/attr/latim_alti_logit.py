"""LaTIM (ALTI-Logit): every token's share of the target logit, over all layers (eqs 7-8)."""

from __future__ import annotations

import inspect
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from captum.log import log_usage
from torch import Tensor, nn

from latim_captum import catalog
from latim_captum._queries import query_positions
from latim_captum._validation import check_model_inputs
from latim_captum.activations import DEFAULT_ACTIVATION
from latim_captum.adapters import ModelAdapter
from latim_captum.api import alti_logit, trace
from latim_captum.maps import row_total
from latim_captum.single_query import alti_logit_row

from ._base import DEFAULT, TokenMapAttribution, TokenMaps, row_as_map
from ._latim_options import guard_row_maps, path_options

__all__ = ["LatimALTILogit"]


def attribution_tensor(attributions: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The tensor of attributions as :meth:`~TokenMapAttribution.attribute` returns them: itself, or the one element
    of a 1-tuple (Captum's form for tuple inputs). Unlike inputs, float ``[B, N]`` is what a row of scores is.

    Raises:
        ValueError: a tuple of another length.
        TypeError: not a tensor.
    """
    if isinstance(attributions, tuple):
        if len(attributions) != 1:
            raise ValueError(f"attributions must be one tensor or a 1-tuple; got a {len(attributions)}-tuple")
        attributions = attributions[0]
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor or a 1-tuple of one, got {type(attributions).__name__}")
    return attributions


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
    choice). :meth:`compute_convergence_delta` gives it for attributions computed elsewhere; Captum's generic
    "attribute, then delta" pattern passes only ``target`` and the mask, so for attributions this object returned
    the delta reads the ``position`` and ``contrast`` of the call that made them unless given.

    **Contrastive**: ``attribute(ids, target=t, contrast=c)`` decomposes the logit difference ``logit(t) −
    logit(c)`` at the query position (the logit is linear in the unembedding row, so the projection is on
    ``U_t − U_c``); the delta then checks ``Σ_j C_ij = logit(t) − logit(c) − offset``.

    The query position defaults to each example's last real token (per the attention mask): right-padded batches are
    queried where each example's prediction is made, and their padding columns are exactly 0.

    Args:
        model: a supported Mamba model with an LM head (``*ForCausalLM``).
        activation: the additive ``f`` of eq 19.
        dtype: compute dtype, ``torch.float32`` or ``torch.float64``.
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`): ``"auto"`` (the tiles, on every device), ``"ref"``
            (the readable reference), ``"fast"`` or ``"triton"`` (the Triton kernels: the fastest on a GPU); same
            values.
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
        # id(attributions tensor) -> the attribute() options that made it, while the tensor lives: a separate delta
        # of those attributions reads them (keyed by the tensor, so calls in between or in other threads do not mix)
        self._options_of: dict[int, dict[str, Any]] = {}

    def __getstate__(self) -> dict:  # a copy or a pickle knows no attributions of its own yet
        return {**self.__dict__, "_options_of": {}}

    @log_usage(part_of_slo=True)  # Captum's NoiseTunnel calls attribute.__wrapped__
    def attribute(self, inputs, target=None, additional_forward_args=None, **kwargs):  # noqa: D102 (as the base's)
        result = super().attribute(inputs, target, additional_forward_args, **kwargs)
        tensor = attribution_tensor(result[0] if kwargs.get("return_convergence_delta") else result)
        self._options_of[id(tensor)] = dict(kwargs)
        weakref.finalize(tensor, self._options_of.pop, id(tensor), None)
        return result

    attribute.__doc__ = TokenMapAttribution.attribute.__doc__
    attribute.__signature__ = inspect.signature(TokenMapAttribution.attribute)  # for help() and autodoc

    def options_of(self, attributions: Tensor) -> dict[str, Any]:
        """The keyword options of the :meth:`attribute` call of this object that returned ``attributions`` (the
        tensor itself, not a copy or a slice of it); ``{}`` for any other tensor."""
        return dict(self._options_of.get(id(attributions), {}))

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
        position: int | None = DEFAULT,
        contrast: int | Sequence[int] | Tensor | None = DEFAULT,
    ) -> Tensor:
        """Captum's convergence delta of given attributions: ``Σ attributions − (F(x) − F(baseline))``, ``[B]``.

        ``F(x) − F(baseline)`` is ``logit(target) − offset`` at the query position (the logit difference with a
        ``contrast``): the offset, what no token owns, plays ``F(baseline)``. It needs one forward pass, not the
        attributions. Arguments as Integrated Gradients' ``compute_convergence_delta``: ``end_point`` is the input
        (ids or ``inputs_embeds``); ``start_point`` (the baseline) must be None; ``attributions`` one query row per
        example, as :meth:`attribute` returns it without ``return_matrix`` (a whole map's delta per row comes from
        ``attribute(..., return_matrix=True, return_convergence_delta=True)``). ``position`` and ``contrast`` not
        given: for the very tensor an :meth:`attribute` call of this object returned, that call's (so the delta is
        that of the row attributed); otherwise None (the last real token, no contrast). ``target`` and the mask are
        passed as in Captum.

        Example:
            >>> method = LatimALTILogit(model)                                      # doctest: +SKIP
            >>> attr = method.attribute(ids, target=7)                              # doctest: +SKIP
            >>> method.compute_convergence_delta(attr, end_point=ids, target=7)    # ≈ 0  # doctest: +SKIP

        Raises:
            ValueError: a baseline, no ``end_point``, or attributions not shaped as one row per example of it
                (whole maps included).
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
        attr = attribution_tensor(attributions)
        is_embeds = x.dtype.is_floating_point
        made = self.options_of(attr)
        assumed = [name for name, given in (("position", position), ("contrast", contrast)) if given is DEFAULT]
        assumed += [name for name in extra.pop("assumed", ())]
        if assumed and id(attr) not in self._options_of:
            # a copy, slice or detach of the returned tensor has no record of the call that made it
            defaults = {"position": "the last real token", "contrast": "no contrast", "layer": "the last layer"}
            warnings.warn(
                "compute_convergence_delta: no attribute() call of this object returned these attributions (a copy, "
                "slice or .detach() of its result has no record), so the defaults are assumed for "
                + ", ".join(f"{name} ({defaults[name]})" for name in assumed)
                + "; pass them as given to attribute()",
                UserWarning,
                stacklevel=3,
            )
        # a row is shaped like the input ([B, N] ids, [B, N, D] embeds); a [B, N, N] map of embeds with N = D is
        # told apart by the call that made it
        matrix = made.get("return_matrix", False)
        position = made.get("position") if position is DEFAULT else position
        contrast = made.get("contrast") if contrast is DEFAULT else contrast
        mask = self.format_mask(additional_forward_args)
        ids, embeds, mask = check_model_inputs(self.adapter, None if is_embeds else x, x if is_embeds else None, mask)
        whole_maps = "a whole map's delta per row: attribute(..., return_matrix=True, return_convergence_delta=True)"
        if tuple(attr.shape) != tuple(x.shape):
            raise ValueError(
                f"compute_convergence_delta reads one query row per example, shaped like end_point "
                f"{tuple(x.shape)}; got attributions {tuple(attr.shape)} ({whole_maps})"
            )
        if matrix:
            raise ValueError(f"these attributions are whole maps (return_matrix=True), not one row ({whole_maps})")
        bsz, n = x.shape[:2]
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
