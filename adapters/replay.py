"""A differentiable re-run of a model's forward pass from its weights, with hooks for gradient-based baselines.

The HF mixers call fused kernel functions whose internals cannot be hooked, so gradient methods that need to change
the backward pass (MambaLRP's detach rules) or to differentiate with respect to an internal quantity (the hidden
attention matrix ``M``) re-run the forward here in the compute dtype, from the same weights the adapters read::

    x^{(l)} = x^{(l-1)} + mixer_l(RMSNorm(x^{(l-1)}))        logits = U (RMSNorm_f(x^{(L)})) (+ b)

Two hooks change the computation without changing its value:

* ``lrp=True`` applies the MambaLRP rules (Jafari et al., 2024, Sec. 4): every RMSNorm denominator is detached;
  every SiLU becomes ``x · σ(x).detach()`` (any other activation ``a`` becomes ``x · (a(x)/x).detach()``); the
  input-dependent SSM parameters Δ, B, C (hence ``exp(ΔA)`` and ``ΔB``) are detached; every multiplicative gate
  ``y ⊙ g`` becomes ``½(y ⊙ g) + ½(y ⊙ g).detach()`` (the half rule) so that Gradient×Input splits its relevance
  evenly between the two factors. For Mamba-2 the same rules cover its gated RMSNorm (gate: half rule; group RMS
  denominator: detached).
* ``mixing(layer, ssm, phi)`` replaces the SSM's token mixing ``Σ_s M_{i,s} ⊙ φ_s`` (without the D skip), e.g. by
  an explicit matrix ``M`` held as a leaf tensor so that a target's gradient with respect to ``M`` can be read.

Only the Hugging Face Mamba, FalconMamba and Mamba2 families are covered; other adapters raise
``NotImplementedError``. :func:`replay_logits` with no hook reproduces the model's logits (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latim_captum.ssm import selective_scan_ref
from latim_captum.traces import Mamba1SSM, Mamba2SSM, SSMParams

from .base import ModelAdapter
from .hf_common import activation_fn, apply_padding_mask, causal_depthwise_conv, weight
from .hf_mamba import HFMambaAdapter
from .hf_mamba2 import HFMamba2Adapter

__all__ = ["Mixing", "replay_logits", "supports_replay", "lrp_activation", "half_gate"]

#: ``mixing(layer_index, ssm, phi) -> Σ_s M_{i,s} ⊙ φ_s`` of shape ``[B, N, d]`` (no D skip)
Mixing = Callable[[int, SSMParams, Tensor], Tensor]


def supports_replay(adapter: ModelAdapter) -> bool:
    """Whether :func:`replay_logits` knows the adapter's model family."""
    return isinstance(adapter, (HFMambaAdapter, HFMamba2Adapter))


def _stabilize(x: Tensor, eps: float = 1e-6) -> Tensor:
    # MambaLRP's stabiliser: push exact zeros and tiny values away from 0 before dividing
    return x + ((x == 0).to(x.dtype) + x.sign()) * eps


def lrp_activation(name: str) -> Callable[[Tensor], Tensor]:
    """MambaLRP's rule for an elementwise activation ``a``: ``x · (a(x) / x).detach()``, same value, linear backward.

    SiLU gets the closed form ``x · σ(x).detach()``; identity activations are left alone.

    Example:
        >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
        >>> lrp_activation("silu")(x).sum().backward(); torch.allclose(x.grad, torch.sigmoid(x.detach()))
        True
    """
    if name in ("silu", "swish"):
        return lambda x: x * torch.sigmoid(x).detach()
    if name in ("linear", "identity", "none"):
        return lambda x: x
    act = activation_fn(name)
    return lambda x: x * (act(x) / _stabilize(x)).detach()


def half_gate(y: Tensor, g: Tensor) -> Tensor:
    """MambaLRP's half rule for ``y ⊙ g``: ``½(y ⊙ g) + ½(y ⊙ g).detach()``.

    Its gradient is ``½ g`` for ``y`` and ``½ y`` for ``g``, so Gradient×Input gives each factor half of ``y ⊙ g``.
    """
    out = y * g
    return 0.5 * out + 0.5 * out.detach()


def _rms_norm(x: Tensor, norm: nn.Module, dtype: torch.dtype, detach: bool) -> Tensor:
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-5)))
    scale = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x * (scale.detach() if detach else scale) * weight(norm.weight, dtype)


def _linear(x: Tensor, layer: nn.Linear, dtype: torch.dtype) -> Tensor:
    out = x @ weight(layer.weight, dtype).T
    return out if layer.bias is None else out + weight(layer.bias, dtype)


def _mamba1_mixer(
    adapter: HFMambaAdapter, mixer: nn.Module, h: Tensor, mask: Tensor | None, layer: int, lrp: bool, mixing
) -> Tensor:
    dtype = h.dtype
    d = mixer.intermediate_size
    x, z = _linear(apply_padding_mask(h, mask), mixer.in_proj, dtype).split([d, d], dim=-1)
    conv_w = weight(mixer.conv1d.weight, dtype)[:, 0, :]
    conv_b = weight(mixer.conv1d.bias, dtype) if mixer.use_conv_bias else None
    psi = causal_depthwise_conv(x, conv_w, conv_b)
    act = lrp_activation(adapter.activation_name) if lrp else activation_fn(adapter.activation_name)
    phi = apply_padding_mask(act(psi), mask)
    params = phi.detach() if lrp else phi
    dt_low, b_ssm, c_ssm = torch.split(
        params @ weight(mixer.x_proj.weight, dtype).T,
        [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
        dim=-1,
    )
    if adapter.normalises_dt_bc:
        eps = float(mixer.rms_eps)
        dt_low, b_ssm, c_ssm = (
            t * torch.rsqrt(t.square().mean(-1, keepdim=True) + eps) for t in (dt_low, b_ssm, c_ssm)
        )
    delta = F.softplus(_linear(dt_low, mixer.dt_proj, dtype))
    ssm = Mamba1SSM(delta=delta, A=-torch.exp(weight(mixer.A_log, dtype)), B=b_ssm, C=c_ssm)
    mixed = mixing(layer, ssm, phi) if mixing is not None else selective_scan_ref(ssm, phi)
    v = mixed + weight(mixer.D, dtype) * phi
    gate = lrp_activation("silu")(z) if lrp else F.silu(z)
    u = half_gate(v, gate) if lrp else v * gate
    return _linear(u, mixer.out_proj, dtype)


def _mamba2_mixer(
    adapter: HFMamba2Adapter, mixer: nn.Module, h: Tensor, mask: Tensor | None, layer: int, lrp: bool, mixing
) -> Tensor:
    dtype = h.dtype
    d, heads, groups, state = mixer.intermediate_size, mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    z, xbc, dt = _linear(apply_padding_mask(h, mask), mixer.in_proj, dtype).split([d, mixer.conv_dim, heads], -1)
    conv_w = weight(mixer.conv1d.weight, dtype)[:, 0, :]
    conv_b = weight(mixer.conv1d.bias, dtype) if mixer.use_conv_bias else None
    act = lrp_activation(adapter.activation_name) if lrp else activation_fn(adapter.activation_name)
    phi_all = apply_padding_mask(act(causal_depthwise_conv(xbc, conv_w, conv_b)), mask)
    phi, b_ssm, c_ssm = torch.split(phi_all, [d, groups * state, groups * state], dim=-1)
    low, high = (float(v) for v in mixer.time_step_limit)
    delta = torch.clamp(F.softplus(dt + weight(mixer.dt_bias, dtype)), min=low, max=high)
    if lrp:
        delta, b_ssm, c_ssm = delta.detach(), b_ssm.detach(), c_ssm.detach()
    bsz, n = h.shape[:2]
    ssm = Mamba2SSM(
        delta=delta,
        A=-torch.exp(weight(mixer.A_log, dtype)),
        B=b_ssm.reshape(bsz, n, groups, state),
        C=c_ssm.reshape(bsz, n, groups, state),
        head_dim=mixer.head_dim,
    )
    mixed = mixing(layer, ssm, phi) if mixing is not None else selective_scan_ref(ssm, phi)
    v = mixed + weight(mixer.D, dtype).repeat_interleave(mixer.head_dim) * phi
    gate = lrp_activation("silu")(z) if lrp else F.silu(z)
    u = half_gate(v, gate) if lrp else v * gate
    grouped = u.view(bsz, n, groups, -1)
    inv_rms = torch.rsqrt(grouped.square().mean(-1, keepdim=True) + float(mixer.norm.variance_epsilon))
    normed = (grouped * (inv_rms.detach() if lrp else inv_rms)).view(bsz, n, d) * weight(mixer.norm.weight, dtype)
    return _linear(normed, mixer.out_proj, dtype)


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
    mixer_fn = _mamba2_mixer if isinstance(adapter, HFMamba2Adapter) else _mamba1_mixer
    hidden = inputs_embeds
    for idx, block in enumerate(adapter.blocks):
        if block_inputs is not None:
            block_inputs.append(hidden)
        h = _rms_norm(hidden, block.norm, dtype, detach=lrp)
        hidden = hidden + mixer_fn(adapter, adapter.mixer(block), h, mask, idx, lrp, mixing)
    final = _rms_norm(hidden, adapter.final_norm, dtype, detach=lrp)
    return _linear(final, head, dtype)
