"""Mixer maths shared by every adapter: a Mamba-1 or Mamba-2 mixer recomputed from plain weight tensors.

The Hugging Face and mamba-ssm implementations store the same parameters under different attribute names; their
adapters read the attributes and call :func:`mamba1_layer` / :func:`mamba2_layer`, which know nothing about model
classes.

Mamba-1::

    [x | z] = W_in h (+ b_in)            ψ = conv(x) + b_c        φ = act(ψ)        (padding zeroed)
    [Δ_low | B | C] = W_xproj φ          Δ = softplus(W_dt Δ_low + b_dt)          A = -exp(A_log)
    v = SSM(φ; Δ, A, B, C) + D ⊙ φ       out = W_o (v ⊙ SiLU(z)) (+ b_o)

Mamba-2::

    [z | xBC | dt] = W_in h (+ b_in)     [x | B | C] = act(conv(xBC) + b_c)       (padding zeroed)
    Δ = clamp(softplus(dt + dt_bias), dt_limit)              A = -exp(A_log)  (one scalar per head)
    v = SSD(x; Δ, A, B, C) + D ⊙ x       out = W_o (γ ⊙ v) (+ b_o)                (eq 24)

with ``γ`` from :func:`gated_norm_scale` (gated RMSNorm, gate before or after the norm) or ``SiLU(z)`` (no norm).

:func:`mamba1_forward` / :func:`mamba2_forward` are the one computation of each mixer: the traces
(:func:`mamba1_layer` / :func:`mamba2_layer`) and the gradient baselines' differentiable replay
(:mod:`latim_captum.baselines.replay`) both call them. Two options change the computation without changing its
value: ``lrp=True`` applies the MambaLRP rules (:func:`lrp_activation`, :func:`half_gate`, detached Δ, B, C and
RMS denominators) and ``mixing`` replaces the SSM's token mixing ``Σ_s M_{i,s} ⊙ φ_s``.

Example:
    >>> trace, out = mamba1_layer(h, None, x, y, weights, activation="silu", dtype=torch.float64)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from latim_captum.activations import activation_function, divide_or_zero
from latim_captum.ssm import selective_scan
from latim_captum.traces import LayerTrace, Mamba1SSM, Mamba2SSM, SSMParams

from .base import CapturedLayer
from .hf_common import apply_padding_mask, causal_depthwise_conv

__all__ = [
    "Mamba1Weights",
    "Mamba2Weights",
    "MixerForward",
    "SSMMixing",
    "mamba1_forward",
    "mamba2_forward",
    "mamba1_layer",
    "mamba2_layer",
    "gated_norm_scale",
    "half_gate",
    "lrp_activation",
    "linear",
]

#: ``mixing(ssm, phi) -> Σ_s M_{i,s} ⊙ φ_s`` of shape ``[B, N, d]`` (no D skip): a replacement of the SSM's scan
SSMMixing = Callable[[SSMParams, Tensor], Tensor]


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x Wᵀ (+ b)``."""
    out = x @ w.T
    return out if b is None else out + b


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
    act = activation_function(name)
    # the reference adds ε to the denominator, which moves the forward value by ~1e-6 relative; the ratio taken
    # where x != 0 (0 elsewhere, where x · ratio is 0 anyway) keeps it: x · (a(x) / x) = a(x)
    return lambda x: x * divide_or_zero(act(x), x).detach()


def half_gate(y: Tensor, g: Tensor) -> Tensor:
    """MambaLRP's half rule for ``y ⊙ g``: ``½(y ⊙ g) + ½(y ⊙ g).detach()``.

    Its gradient is ``½ g`` for ``y`` and ``½ y`` for ``g``, so Gradient×Input gives each factor half of ``y ⊙ g``.

    Example:
        >>> y, g = torch.tensor([3.0], requires_grad=True), torch.tensor([2.0], requires_grad=True)
        >>> half_gate(y, g).backward(); (y.grad.item(), g.grad.item())
        (1.0, 1.5)
    """
    out = y * g
    return 0.5 * out + 0.5 * out.detach()


def _activation(name: str, lrp: bool) -> Callable[[Tensor], Tensor]:
    return lrp_activation(name) if lrp else activation_function(name)


def gated_norm_scale(
    v: Tensor,
    z: Tensor,
    norm_weight: Tensor,
    groups: int,
    eps: float,
    norm_before_gate: bool = False,
    lrp: bool = False,
) -> Tensor:
    """``γ`` with ``norm_out = γ ⊙ v`` for Mamba-2's gated RMSNorm over ``groups`` equal channel groups.

    Gate then norm (HF, mamba-ssm default): ``u = v ⊙ SiLU(z)``, ``γ = w ⊙ SiLU(z) ⊙ rsqrt(mean_group(u²) + ε)``.
    Norm then gate (``norm_before_gate=True``): ``γ = w ⊙ SiLU(z) ⊙ rsqrt(mean_group(v²) + ε)``.

    ``lrp=True`` gives the same value with MambaLRP's rules inside ``γ``: the RMS denominator is detached and the
    SiLU is ``z · σ(z).detach()``. With the half rule on ``γ ⊙ v`` (:func:`half_gate`) this is, in either order,
    the rules applied op by op: the gate ``u = v ⊙ SiLU(z)`` by the half rule, the norm with its denominator
    detached, the weight a constant factor (``∂/∂v = ½ γ`` and ``∂/∂SiLU(z) = ½ w ⊙ v ⊙ rsqrt(·)`` both ways).
    """
    gate = _activation("silu", lrp)(z)
    u = v if norm_before_gate else v * gate
    grouped = u.view(*u.shape[:-1], groups, -1)
    inv_rms = torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps)
    if lrp:
        inv_rms = inv_rms.detach()
    return norm_weight * gate * inv_rms.expand_as(grouped).reshape(u.shape)


@dataclass(frozen=True)
class Mamba1Weights:
    """Parameters of one Mamba-1 mixer, already detached and in the compute dtype.

    ``dt_bc_eps`` is FalconMamba's weightless RMSNorm ε on Δ_low, B and C (None: no such norms);
    ``dt_bc_norms`` are a family's own norms on Δ_low, B, C (Jamba's learned RMSNorms), applied instead.
    """

    in_proj_weight: Tensor
    in_proj_bias: Tensor | None
    conv_weight: Tensor  # [d, K]
    conv_bias: Tensor | None
    x_proj_weight: Tensor
    dt_rank: int
    state_size: int
    dt_proj_weight: Tensor
    dt_proj_bias: Tensor
    A_log: Tensor
    D: Tensor
    out_proj_weight: Tensor
    out_proj_bias: Tensor | None
    dt_bc_eps: float | None = None
    dt_bc_norms: tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]] | None = (
        None
    )


@dataclass(frozen=True)
class Mamba2Weights:
    """Parameters of one Mamba-2 mixer, detached and in the compute dtype.

    ``norm_weight`` None means no gated norm (the output gate is ``SiLU(z)``); ``D`` is per head or per channel.
    """

    in_proj_weight: Tensor
    in_proj_bias: Tensor | None
    conv_weight: Tensor  # [conv_dim, K]
    conv_bias: Tensor | None
    heads: int
    head_dim: int
    groups: int
    state_size: int
    dt_bias: Tensor
    dt_limit: tuple[float, float]
    A_log: Tensor
    D: Tensor
    norm_weight: Tensor | None
    norm_eps: float
    norm_groups: int
    norm_before_gate: bool
    out_proj_weight: Tensor
    out_proj_bias: Tensor | None


@dataclass(frozen=True)
class MixerForward:
    """One mixer's forward pass, as :func:`mamba1_forward` / :func:`mamba2_forward` computed it.

    ``output = W_o (out_gate ⊙ v) (+ b_o)`` with ``v = Σ_s M_{i,s} ⊙ φ_s + skip ⊙ φ_i`` and ``φ = act(ψ)`` over the
    decomposed channels (Mamba-2: the x part of xBC).
    """

    conv_input: Tensor  # x before the conv, decomposed channels [B, N, d]
    conv_weight: Tensor  # their taps [d, K]
    conv_bias: Tensor | None  # [d]
    pre_activation: Tensor  # ψ [B, N, d]
    ssm: SSMParams
    skip: Tensor  # D per channel [d]
    out_gate: Tensor  # γ [B, N, d]
    output: Tensor  # [B, N, D]


def _rms(x: Tensor, eps: float) -> Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


def _gated_output(v: Tensor, gamma: Tensor, w_out: Tensor, b_out: Tensor | None, lrp: bool) -> Tensor:
    # the output gate γ ⊙ v is the multiplicative gate the half rule splits (γ already holds the detached parts)
    return linear(half_gate(v, gamma) if lrp else gamma * v, w_out, b_out)


def mamba1_forward(
    h: Tensor,
    mask: Tensor | None,
    w: Mamba1Weights,
    activation: str,
    *,
    lrp: bool = False,
    mixing: SSMMixing | None = None,
) -> MixerForward:
    """One Mamba-1 mixer from its input ``h`` ``[B, N, D]``, in ``h``'s dtype (module docstring's equations).

    Args:
        h: the mixer input (the normed residual); make it require grad to differentiate.
        mask: ``[B, N]`` padding mask in ``h``'s dtype, or None.
        w: the mixer's weights, in ``h``'s dtype.
        activation: the conv activation ``act`` (a HF ``hidden_act`` name).
        lrp: MambaLRP rules: ``act`` and the gate's SiLU by :func:`lrp_activation`, Δ, B, C (and FalconMamba's
            norms on them) computed from a detached ``φ``, the output gate by :func:`half_gate`. Same value.
        mixing: replaces ``selective_scan(ssm, φ)``, the token mixing without the D skip.
    """
    d = w.conv_weight.shape[0]
    projected = linear(apply_padding_mask(h, mask), w.in_proj_weight, w.in_proj_bias)
    x, z = projected[..., :d], projected[..., d:]
    psi = causal_depthwise_conv(x, w.conv_weight, w.conv_bias)
    phi = apply_padding_mask(_activation(activation, lrp)(psi), mask)
    selective = phi.detach() if lrp else phi  # MambaLRP: Δ, B, C are input-dependent but held fixed
    dt_low, b_ssm, c_ssm = torch.split(selective @ w.x_proj_weight.T, [w.dt_rank, w.state_size, w.state_size], -1)
    if w.dt_bc_norms is not None:
        dt_low, b_ssm, c_ssm = (norm(t) for norm, t in zip(w.dt_bc_norms, (dt_low, b_ssm, c_ssm)))
    elif w.dt_bc_eps is not None:
        dt_low, b_ssm, c_ssm = (_rms(t, w.dt_bc_eps) for t in (dt_low, b_ssm, c_ssm))
    delta = F.softplus(linear(dt_low, w.dt_proj_weight, w.dt_proj_bias))
    ssm = Mamba1SSM(delta=delta, A=-torch.exp(w.A_log), B=b_ssm, C=c_ssm)
    gate = _activation("silu", lrp)(z)
    v = (selective_scan(ssm, phi) if mixing is None else mixing(ssm, phi)) + w.D * phi
    output = _gated_output(v, gate, w.out_proj_weight, w.out_proj_bias, lrp)
    return MixerForward(
        conv_input=x,
        conv_weight=w.conv_weight,
        conv_bias=w.conv_bias,
        pre_activation=psi,
        ssm=ssm,
        skip=w.D,
        out_gate=gate,
        output=output,
    )


def mamba2_forward(
    h: Tensor,
    mask: Tensor | None,
    w: Mamba2Weights,
    activation: str,
    *,
    lrp: bool = False,
    mixing: SSMMixing | None = None,
) -> MixerForward:
    """One Mamba-2 mixer from its input ``h`` ``[B, N, D]``, in ``h``'s dtype (module docstring's equations).

    Arguments as :func:`mamba1_forward`; with ``lrp=True`` Δ, B and C are detached and the gated RMSNorm follows
    :func:`gated_norm_scale` (``lrp=True``: group RMS denominator detached) with the half rule on ``γ ⊙ v``.

    Raises:
        NotImplementedError: the in-projection has an extra gated-MLP part (mamba-ssm's ``d_ssm < d_inner``), or
            ``D`` fits neither the heads nor the channels.
    """
    d = w.heads * w.head_dim
    conv_dim = d + 2 * w.groups * w.state_size
    projected = linear(apply_padding_mask(h, mask), w.in_proj_weight, w.in_proj_bias)
    d_mlp = (projected.shape[-1] - 2 * d - 2 * w.groups * w.state_size - w.heads) // 2
    if d_mlp != 0:
        raise NotImplementedError(
            f"Mamba-2 mixer with a gated-MLP part ({d_mlp} channels, d_ssm={d} < d_inner) is not supported"
        )
    z, xbc, dt = torch.split(projected, [d, conv_dim, w.heads], dim=-1)
    psi_all = causal_depthwise_conv(xbc, w.conv_weight, w.conv_bias)
    phi_all = apply_padding_mask(_activation(activation, lrp)(psi_all), mask)
    phi, b_ssm, c_ssm = torch.split(phi_all, [d, w.groups * w.state_size, w.groups * w.state_size], dim=-1)
    low, high = w.dt_limit
    delta = torch.clamp(F.softplus(dt + w.dt_bias), min=low, max=high)
    if lrp:  # MambaLRP: Δ, B, C are input-dependent but held fixed
        delta, b_ssm, c_ssm = delta.detach(), b_ssm.detach(), c_ssm.detach()
    bsz, n = h.shape[:2]
    ssm = Mamba2SSM(
        delta=delta,
        A=-torch.exp(w.A_log),
        B=b_ssm.reshape(bsz, n, w.groups, w.state_size),
        C=c_ssm.reshape(bsz, n, w.groups, w.state_size),
        head_dim=w.head_dim,
    )
    if w.D.numel() == w.heads:
        skip = w.D.repeat_interleave(w.head_dim)
    elif w.D.numel() == d:  # mamba-ssm's D_has_hdim
        skip = w.D.reshape(d)
    else:
        raise NotImplementedError(f"D with {w.D.numel()} entries fits neither {w.heads} heads nor {d} channels")
    v = (selective_scan(ssm, phi) if mixing is None else mixing(ssm, phi)) + skip * phi
    if w.norm_weight is None:
        gamma = _activation("silu", lrp)(z)
    else:
        gamma = gated_norm_scale(v, z, w.norm_weight, w.norm_groups, w.norm_eps, w.norm_before_gate, lrp=lrp)
    output = _gated_output(v, gamma, w.out_proj_weight, w.out_proj_bias, lrp)
    return MixerForward(
        conv_input=xbc[..., :d],
        conv_weight=w.conv_weight[:d],
        conv_bias=None if w.conv_bias is None else w.conv_bias[:d],
        pre_activation=psi_all[..., :d],
        ssm=ssm,
        skip=skip,
        out_gate=gamma,
        output=output,
    )


def _layer_trace(
    fwd: MixerForward,
    h: Tensor,
    mask: Tensor | None,
    residual: Tensor,
    mixer_output: Tensor,
    activation: str,
    w_out: Tensor,
    b_out: Tensor | None,
) -> LayerTrace:
    return LayerTrace(
        layer=-1,
        residual=residual,
        mixer_input=h,
        mixer_output=mixer_output,
        mask=mask,
        conv_input=fwd.conv_input,
        conv_weight=fwd.conv_weight,
        conv_bias=fwd.conv_bias,
        pre_activation=fwd.pre_activation,
        activation=activation,
        ssm=fwd.ssm,
        skip=fwd.skip,
        out_gate=fwd.out_gate,
        out_weight=w_out,
        out_bias=b_out,
    )


def mamba1_layer(
    h: Tensor, mask: Tensor | None, residual: Tensor, mixer_output: Tensor, w: Mamba1Weights, activation: str
) -> tuple[LayerTrace, Tensor]:
    """Trace of one Mamba-1 mixer from its input ``h`` ``[B, N, D]`` (compute dtype) and weights.

    Returns the :class:`LayerTrace` (``layer=-1``) and the recomputed mixer output, for verification.
    """
    fwd = mamba1_forward(h, mask, w, activation)
    trace = _layer_trace(fwd, h, mask, residual, mixer_output, activation, w.out_proj_weight, w.out_proj_bias)
    return trace, fwd.output


def mamba2_layer(
    h: Tensor, mask: Tensor | None, residual: Tensor, mixer_output: Tensor, w: Mamba2Weights, activation: str
) -> tuple[LayerTrace, Tensor]:
    """Trace of one Mamba-2 mixer (only the x channels are decomposed; B, C and Δ are fixed parameters).

    Raises:
        NotImplementedError: as :func:`mamba2_forward`.
    """
    fwd = mamba2_forward(h, mask, w, activation)
    trace = _layer_trace(fwd, h, mask, residual, mixer_output, activation, w.out_proj_weight, w.out_proj_bias)
    return trace, fwd.output


def layer_from_capture(
    layer_fn: Callable[..., tuple[LayerTrace, Tensor]],
    captured: CapturedLayer,
    weights: Mamba1Weights | Mamba2Weights,
    activation: str,
    dtype: torch.dtype,
) -> tuple[LayerTrace, Tensor]:
    """Run :func:`mamba1_layer` / :func:`mamba2_layer` on what the hooks captured, in the compute ``dtype``."""
    mask = None if captured.mixer_mask is None else captured.mixer_mask.to(dtype)
    return layer_fn(
        captured.mixer_input.to(dtype),
        mask,
        captured.block_input.to(dtype),
        captured.mixer_output.to(dtype),
        weights,
        activation,
    )
