"""A differentiable re-run of a model's forward pass from its weights, with hooks for gradient-based baselines.

The HF mixers call fused kernel functions whose internals cannot be hooked, so gradient methods that need to change
the backward pass (MambaLRP's detach rules) or to differentiate with respect to an internal quantity (the hidden
attention matrix ``M``) re-run the forward here in the compute dtype::

    x^{(l)} = x^{(l-1)} + mixer_l(RMSNorm(x^{(l-1)}))        logits = U (RMSNorm_f(x^{(L)})) (+ b)

Each ``mixer_l`` is the adapters' own computation (:func:`~latim_captum.adapters.mixers.mamba1_forward` /
:func:`~latim_captum.adapters.mixers.mamba2_forward`) on the weights the adapter hands out
(``adapter.mixer_weights(block, dtype)``), the same weights and maths the traces are built and verified from::

    Mamba-1:  [x | z] = W_in h     φ = act(conv(x))     [Δ_low | B | C] = W_xproj φ     Δ = softplus(W_dt Δ_low)
              v = SSM(φ; Δ, A, B, C) + D ⊙ φ            mixer(h) = W_o (v ⊙ SiLU(z))
    Mamba-2:  [z | xBC | dt] = W_in h     [φ | B | C] = act(conv(xBC))     Δ = clamp(softplus(dt + dt_bias))
              v = SSD(φ; Δ, A, B, C) + D ⊙ φ            mixer(h) = W_o (γ ⊙ v)
              γ = w ⊙ SiLU(z) ⊙ rsqrt(mean_group((v ⊙ SiLU(z))²) + ε)

(biases omitted). The gated norm's groups are those of the installed module (``gated_norm_groups``: the whole width
in transformers ≤ 5.17, per ``n_groups`` group later), never the config's.

Two hooks change the computation without changing its value:

* ``lrp=True`` applies the MambaLRP rules (Jafari et al., 2024, Sec. 4): every RMSNorm denominator is detached;
  every SiLU becomes ``x · σ(x).detach()`` (any other activation ``a`` becomes ``x · (a(x)/x).detach()``); the
  input-dependent SSM parameters Δ, B, C (hence ``exp(ΔA)`` and ``ΔB``) are detached; every multiplicative gate
  ``y ⊙ g`` becomes ``½(y ⊙ g) + ½(y ⊙ g).detach()`` (the half rule) so that Gradient×Input splits its relevance
  evenly between the two factors. For Mamba-2 the same rules cover its gated RMSNorm (gate: half rule; group RMS
  denominator: detached), whether the gate comes before or after the norm.
* ``mixing(layer, ssm, phi)`` replaces the SSM's token mixing ``Σ_s M_{i,s} ⊙ φ_s`` (without the D skip), e.g. by
  the explicit matrix ``M`` plus a zero leaf tensor, whose gradient is a target's total derivative with respect to
  ``M`` (Mamba-Attribution's ``gradient="attention"``).

Without ``mixing`` the token mixing is the adapters' chunked scan (:func:`latim_captum.ssm.selective_scan`): it is
differentiable and equals :func:`~latim_captum.ssm.selective_scan_ref` to rounding, in ``⌈N/64⌉`` (Mamba-2) or
about ``3√N`` (Mamba-1) vectorised steps instead of ``N``.

Only the Hugging Face Mamba, FalconMamba and Mamba2 families are covered; other adapters raise
``NotImplementedError``. :func:`replay_logits` with no hook reproduces the model's logits (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from latim_captum._model_state import eval_mode
from latim_captum.adapters import ModelAdapter
from latim_captum.adapters.base import (
    TraceMismatchError,
    check_no_unmerged_adapters,
    mismatch_hint,
    relative_error,
    verification_tolerance,
)
from latim_captum.adapters.hf_common import weight
from latim_captum.adapters.hf_mamba import HFMambaAdapter
from latim_captum.adapters.hf_mamba2 import HFMamba2Adapter
from latim_captum.adapters.mixers import (
    Mamba2Weights,
    half_gate,
    linear,
    lrp_activation,
    mamba1_forward,
    mamba2_forward,
)
from latim_captum.traces import SSMParams

__all__ = ["Mixing", "check_replay", "replay_logits", "supports_replay", "lrp_activation", "half_gate"]

#: ``mixing(layer_index, ssm, phi) -> Σ_s M_{i,s} ⊙ φ_s`` of shape ``[B, N, d]`` (no D skip)
Mixing = Callable[[int, SSMParams, Tensor], Tensor]


def supports_replay(adapter: ModelAdapter) -> bool:
    """Whether :func:`replay_logits` knows the adapter's model family."""
    return isinstance(adapter, (HFMambaAdapter, HFMamba2Adapter))


def _rms_norm(x: Tensor, norm: nn.Module, dtype: torch.dtype, detach: bool) -> Tensor:
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-5)))
    scale = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x * (scale.detach() if detach else scale) * weight(norm.weight, dtype)


def _layer_mixing(mixing: Mixing | None, layer: int) -> Callable[[SSMParams, Tensor], Tensor] | None:
    # the mixer maths knows no layer index; bind it here
    return None if mixing is None else lambda ssm, phi: mixing(layer, ssm, phi)


def replay_logits(
    adapter: ModelAdapter,
    inputs_embeds: Tensor,
    attention_mask: Tensor | None = None,
    *,
    lrp: bool = False,
    mixing: Mixing | None = None,
    block_inputs: list[Tensor] | None = None,
) -> Tensor:
    """Re-run the model from ``inputs_embeds`` (any dtype; the computation runs in its dtype) to logits ``[B, N, V]``.

    Args:
        adapter: a Hugging Face Mamba / FalconMamba / Mamba2 adapter whose model has an LM head.
        inputs_embeds: ``x^{(0)}``, ``[B, N, D]``; make it require grad to differentiate.
        attention_mask: ``[B, N]`` padding mask or None.
        lrp: apply the MambaLRP rules (module docstring).
        mixing: optional replacement of the SSM mixing (module docstring).
        block_inputs: if a list is given, each block's input ``x^{(l-1)}`` is appended to it (graph nodes).

    Raises:
        NotImplementedError: the adapter's model family has no replay.
        ValueError: the model has no LM head.

    Example:
        >>> logits = replay_logits(get_adapter(model), model.backbone.embeddings(ids).double())  # doctest: +SKIP
    """
    if not supports_replay(adapter):
        raise NotImplementedError(
            f"no differentiable replay for {type(adapter).__name__}; gradient baselines support the Hugging Face "
            "Mamba, FalconMamba and Mamba2 families"
        )
    head = adapter.lm_head
    if head is None:
        raise ValueError(f"{type(adapter.model).__name__} has no LM head; the gradient baselines need logits")
    dtype = inputs_embeds.dtype
    mask = None if attention_mask is None else attention_mask.to(dtype)
    activation = adapter.activation_name
    hidden = inputs_embeds
    for idx, block in enumerate(adapter.blocks):
        if block_inputs is not None:
            block_inputs.append(hidden)
        h = _rms_norm(hidden, adapter.pre_norm(block), dtype, detach=lrp)
        weights = adapter.mixer_weights(block, dtype)
        forward = mamba2_forward if isinstance(weights, Mamba2Weights) else mamba1_forward
        mixed = forward(h, mask, weights, activation, lrp=lrp, mixing=_layer_mixing(mixing, idx))
        hidden = hidden + mixed.output
    final = _rms_norm(hidden, adapter.final_norm, dtype, detach=lrp)
    return linear(final, weight(head.weight, dtype), weight(head.bias, dtype))


def check_replay(
    adapter: ModelAdapter, inputs_embeds: Tensor, attention_mask: Tensor | None, replayed: Tensor
) -> None:
    """Fail closed when the replayed logits are not the model's own.

    The replay reads the bare weights (``adapter.mixer_weights``, ``head.weight``): a model whose forward differs
    from them (a PEFT/LoRA-wrapped projection, a forward hook that patches or steers an activation, an unsupported
    variant) would otherwise be explained as a different model, silently. One forward pass of the real model.

    Raises:
        TypeError: the model holds unmerged PEFT adapter layers.
        TraceMismatchError: the replayed logits differ from the model's beyond :func:`verification_tolerance`.
    """
    check_no_unmerged_adapters(adapter.model)
    with torch.no_grad(), eval_mode(adapter.model):
        real = adapter.output_logits(
            adapter.forward(None, inputs_embeds.detach().to(adapter.model_dtype), attention_mask)
        )
    real = real.detach().to(device=replayed.device, dtype=replayed.dtype)
    keep = (slice(None),) if attention_mask is None else (attention_mask.to(replayed.device).bool(),)
    err = relative_error(replayed.detach()[keep], real[keep])
    tol = verification_tolerance(adapter.model_dtype, replayed.device)
    if not err <= tol:  # fail closed: a NaN error is no agreement
        raise TraceMismatchError(
            f"the baseline's forward, rebuilt from the weights, differs from the model's own logits by {err:.2e} "
            f"(relative, tolerance {tol:.0e}): {mismatch_hint(adapter.model)}"
        )
