"""A training forward for HF Mamba mixers whose conv activation the fused kernels cannot apply (ReLU; Mamba-1
without activation), run on mamba-ssm's and causal-conv1d's *unfused* kernels.

The fused training paths (``mamba_inner_fn``, ``mamba_split_conv1d_scan_combined``) apply SiLU or nothing inside the
conv. HF's PyTorch path follows ``hidden_act`` but takes 2–4 s a step at the copy task's paper scale (H100), against
~75 ms on the kernels. This forward keeps the kernels and does the activation itself, from the module's own layers::

    Mamba-1:  x, z = in_proj(h);  x = act(conv(x));  Δ_low, B, C = x_proj(x);  Δ = dt_proj.weight Δ_low
              y = selective_scan(x, Δ, A, B, C, D, z, Δ bias, softplus)  (y · SiLU(z) inside);  out_proj(y)
    Mamba-2:  z, xBC, dt = in_proj(h);  xBC = act(conv(xBC))
              out = mamba2_tail(z, xBC, dt) = out_proj(norm(chunk_scan(x, dt, A, B, C, D, dt_bias, dt_limit), z))

``conv`` is causal-conv1d with no activation, ``act`` the mixer's own (``ACT2FN[hidden_act]``, or a
:class:`~latim_captum.tasks.switch.SwitchActivation`), ``norm`` its own gated RMSNorm. On the GPU, Mamba-2's tail is
mamba-ssm's fused ``mamba_split_conv1d_scan_combined`` (scan, gated RMSNorm and out-projection in one kernel, the
SiLU models' own training path) handed the activated ``xBC`` and an identity conv (the current token's tap 1, the
others 0, no activation, no bias), which passes ``xBC`` through unchanged: the step then costs about what the SiLU
model's does, where the separate chunk scan and HF's PyTorch norm made it several times slower.
:class:`ScanOps` holds the kernels; :data:`REFERENCE_OPS` holds plain-PyTorch references of them, with which the
tests compare this forward to HF's own PyTorch forward on a CPU (values and gradients). :data:`DUAL_OPS` needs no
kernels at all (the trainers' ``--kernels dual``): Mamba-2's scan in its quadratic form (:func:`quadratic_scan`), a
few batched products for short sequences, on any device. On the GPU, the trainers
compare the device forward and its gradients with HF's PyTorch ones before training
(:func:`~latim_captum.tasks.models.check_device_forward`).

Example:
    >>> from latim_captum.tasks.models import build_model
    >>> m = build_model("mamba1", layers=1, d_model=16, state=4, vocab=12, act="relu")
    >>> install_unfused_forward_(m, REFERENCE_OPS, on_cpu=True)   # the references stand in for the kernels
    1
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DUAL_OPS",
    "REFERENCE_OPS",
    "ScanOps",
    "install_unfused_forward_",
    "kernel_ops",
    "mamba2_tail_on",
    "quadratic_scan",
    "unfused_mixer_forward",
]

#: the mixer classes this forward reproduces (FalconMamba's extra RMSNorms on Δ, B, C are not in it)
MIXERS: tuple[str, ...] = ("MambaMixer", "Mamba2Mixer")


@dataclass(frozen=True)
class ScanOps:
    """The three kernels of the unfused path (signatures of causal-conv1d and mamba-ssm 2.x).

    Attributes:
        conv: ``(x [B, D, L], weight [D, K], bias [D] | None) -> [B, D, L]``, causal, no activation.
        selective_scan: Mamba-1's ``(u, delta [B, d, L], A [d, N], B, C [B, N, L], D [d], z [B, d, L],
            delta_bias [d]) -> [B, d, L]``: ``softplus(delta + delta_bias)``, the recurrence, ``+ D·u``, ``· SiLU(z)``.
        mamba2_tail: Mamba-2's ``(mixer, z [b, L, d_inner], xBC [b, L, d_inner + 2GN] (activated), dt [b, L, H])
            -> [b, L, d_model]``: ``clamp(softplus(dt + dt_bias))``, the chunked recurrence ``+ D·x``, the mixer's
            gated RMSNorm with ``z`` and its out-projection.
    """

    conv: Callable[..., Tensor]
    selective_scan: Callable[..., Tensor]
    mamba2_tail: Callable[..., Tensor]


def _conv_ref(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    k = weight.shape[-1]
    return F.conv1d(x, weight.unsqueeze(1), bias, padding=k - 1, groups=x.shape[1])[..., : x.shape[-1]]


def _selective_scan_ref(u, delta, A, B, C, D, z, delta_bias) -> Tensor:
    dtype = u.dtype
    u, delta, B, C, z = (t.float() if t.dtype != torch.float64 else t for t in (u, delta, B, C, z))
    delta = F.softplus(delta + delta_bias[..., None].to(delta.dtype))
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[-1])
    ys = []
    for i in range(u.shape[-1]):
        inflow = (delta[:, :, i] * u[:, :, i])[..., None] * B[:, None, :, i]
        state = torch.exp(delta[:, :, i, None] * A) * state + inflow
        ys.append((state * C[:, None, :, i]).sum(-1))
    y = torch.stack(ys, dim=-1) + u * D[:, None].to(u.dtype)
    return (y * F.silu(z)).to(dtype)


def _chunk_scan_ref(x, dt, A, B, C, chunk_size, D, dt_bias, dt_limit) -> Tensor:
    dtype = x.dtype
    x, dt, B, C = (t.float() if t.dtype != torch.float64 else t for t in (x, dt, B, C))
    dt = F.softplus(dt + dt_bias.to(dt.dtype)).clamp(dt_limit[0], dt_limit[1])
    heads, groups = x.shape[2], B.shape[2]
    group_of = torch.arange(heads, device=x.device) // (heads // groups)
    B, C = B[:, :, group_of], C[:, :, group_of]  # [b, L, H, N]
    state = x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[-1])  # [b, H, P, N]
    ys = []
    for i in range(x.shape[1]):
        decay = torch.exp(dt[:, i] * A.to(dt.dtype))[..., None, None]
        state = decay * state + (dt[:, i, :, None] * x[:, i])[..., None] * B[:, i, :, None, :]
        ys.append((state * C[:, i, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) + x * D.to(x.dtype)[:, None]
    return y.to(dtype)


def quadratic_scan(x, dt, A, B, C, chunk_size, D, dt_bias, dt_limit, *, rounding=None) -> Tensor:
    """Mamba-2's scan in its quadratic (masked-attention) dual form over the whole sequence: with
    ``Δ = clamp(softplus(dt + dt_bias))`` and ``a_k = Δ_k A``,

        ``y_i = Σ_{j≤i} (C_i·B_j) exp(Σ_{j<k≤i} a_k) Δ_j x_j + D x_i``,

    the recurrence's exact value (Dao & Gu 2024, the SSD's dual; ``chunk_size`` is not needed: one chunk holds the
    sequence). Memory is ``[b, H, L, L]`` a layer, so it suits short sequences (the copy and alignment tasks' ~100
    tokens), where it is a few batched matrix products with no kernels at all; under autocast the two products run in
    its dtype, the decays in float32. ``rounding`` (``Tensor -> Tensor``) is applied to each product's inputs
    (``benchmarks/tf32_chunk_scan.py`` emulates TF32 with it). Shapes: ``x [b, L, H, P]``, ``dt [b, L, H]``,
    ``A, D, dt_bias [H]``, ``B, C [b, L, G, N]``; returns ``[b, L, H, P]`` in ``x``'s dtype.

    Example:
        >>> x, dt = torch.randn(1, 5, 2, 3), torch.randn(1, 5, 2)
        >>> B, C = torch.randn(1, 5, 1, 4), torch.randn(1, 5, 1, 4)
        >>> args = (x, dt, -torch.ones(2), B, C, 256, torch.ones(2), torch.zeros(2), (0.0, float("inf")))
        >>> torch.allclose(quadratic_scan(*args), _chunk_scan_ref(*args), atol=1e-5)
        True
    """
    round_ = rounding or (lambda t: t)
    b, length, heads = x.shape[:3]
    groups = B.shape[2]
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32  # the decays' and the skip's dtype
    dt = F.softplus(dt.to(wide) + dt_bias.to(wide)).clamp(dt_limit[0], dt_limit[1])  # [b, L, H]
    cb = torch.einsum("bign,bjgn->bgij", round_(C), round_(B))  # [b, G, L, L]: heads of a group share it
    a = (dt * A.to(wide)).transpose(1, 2)  # [b, H, L]
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    # Σ_{j<k≤i} a_k as a cumulative sum over k of a_k·[k > j] (HF's segment_sum), not cum_i − cum_j, whose
    # difference of two large sums cancels; the upper triangle is masked before exp
    segment = a[..., :, None].expand(b, heads, length, length).masked_fill(~causal.tril(-1), 0).cumsum(-2)
    decay = torch.exp(segment.masked_fill(~causal, -torch.inf))  # [b, H, L, L]
    scores = decay * dt.transpose(1, 2)[:, :, None, :]
    scores = (scores.view(b, groups, heads // groups, length, length) * cb[:, :, None]).view(b, heads, length, length)
    y = torch.einsum("bhij,bjhp->bihp", round_(scores), round_(x))
    return (y.to(wide) + x.to(wide) * D.to(wide)[:, None]).to(x.dtype)


def mamba2_tail_on(chunk_scan: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A :attr:`ScanOps.mamba2_tail` from a chunk scan ``(x [b, L, H, P], dt [b, L, H], A [H], B, C [b, L, G, N],
    chunk_size, D [H], dt_bias [H], dt_limit) -> [b, L, H, P]`` (``clamp(softplus(dt + dt_bias))``, the recurrence,
    ``+ D·x``), then the mixer's own gated norm and out-projection."""

    def tail(mixer: nn.Module, z: Tensor, xbc: Tensor, dt: Tensor) -> Tensor:
        inner, heads, groups, n = mixer.intermediate_size, mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
        x, B, C = torch.split(xbc, [inner, groups * n, groups * n], dim=-1)
        b, length = x.shape[:2]
        A = -torch.exp(mixer.A_log.float())
        y = chunk_scan(
            x.reshape(b, length, heads, mixer.head_dim), dt, A, B.reshape(b, length, groups, n),
            C.reshape(b, length, groups, n), mixer.chunk_size, mixer.D, mixer.dt_bias, mixer.time_step_limit,
        )  # fmt: skip
        return mixer.out_proj(mixer.norm(y.reshape(b, length, inner), z).to(z.dtype))

    return tail


#: plain-PyTorch references of the kernels (float32 or float64 arithmetic, as the kernels upcast)
REFERENCE_OPS = ScanOps(
    conv=_conv_ref, selective_scan=_selective_scan_ref, mamba2_tail=mamba2_tail_on(_chunk_scan_ref)
)


def _no_selective_scan(*args) -> Tensor:
    raise ValueError("the quadratic dual form is Mamba-2's (Mamba-1's per-channel decays would need [b, d, L, L, N])")


#: no kernels at all: PyTorch's conv and Mamba-2's scan in its quadratic dual form (:func:`quadratic_scan`), which a
#: GPU without mamba-ssm runs as a few batched products; Mamba-1 is refused
DUAL_OPS = ScanOps(conv=_conv_ref, selective_scan=_no_selective_scan, mamba2_tail=mamba2_tail_on(quadratic_scan))


def kernel_ops() -> ScanOps:
    """The CUDA kernels (``ImportError`` naming what is missing without causal-conv1d and mamba-ssm)."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
    except ImportError as err:
        raise ImportError(f"--kernels unfused needs causal-conv1d and mamba-ssm ({err})") from err

    def conv(x, weight, bias):
        return causal_conv1d_fn(x.contiguous(), weight, bias, activation=None)

    def selective_scan(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan_fn(u, delta, A, B.contiguous(), C.contiguous(), D, z=z, delta_bias=delta_bias,
                                 delta_softplus=True)  # fmt: skip

    def mamba2_tail(mixer, z, xbc, dt):
        # the identity conv passes the activated xBC through: tap K-1 (the current token) is 1, the rest 0
        identity = torch.zeros(xbc.shape[-1], mixer.conv1d.weight.shape[-1], device=xbc.device)
        identity[:, -1] = 1
        limit = tuple(mixer.time_step_limit)
        return mamba_split_conv1d_scan_combined(
            torch.cat([z, xbc, dt], dim=-1), identity, None, mixer.dt_bias, -torch.exp(mixer.A_log.float()),
            D=mixer.D, chunk_size=mixer.chunk_size, seq_idx=None, activation=None,
            rmsnorm_weight=mixer.norm.weight, rmsnorm_eps=mixer.norm.variance_epsilon,
            outproj_weight=mixer.out_proj.weight, outproj_bias=mixer.out_proj.bias, headdim=mixer.head_dim,
            ngroups=mixer.n_groups, norm_before_gate=False,
            **({} if limit == (0.0, float("inf")) else {"dt_limit": limit}),
        )  # fmt: skip

    return ScanOps(conv=conv, selective_scan=selective_scan, mamba2_tail=mamba2_tail)


def unfused_mixer_forward(mixer: nn.Module, hidden_states: Tensor, ops: ScanOps) -> Tensor:
    """One HF ``MambaMixer`` / ``Mamba2Mixer`` forward (no cache, no padding mask) on ``ops``; ``[B, L, D]`` in
    and out, in the input's dtype."""
    dtype = hidden_states.dtype
    conv_bias = mixer.conv1d.bias if getattr(mixer, "use_conv_bias", True) else None
    weight = mixer.conv1d.weight.squeeze(1)
    if type(mixer).__name__ == "MambaMixer":
        A = -torch.exp(mixer.A_log.float())
        x, z = mixer.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # [B, d, L] each
        x = mixer.act(ops.conv(x, weight, conv_bias))
        rank, n = mixer.time_step_rank, mixer.ssm_state_size
        dt_low, B, C = torch.split(mixer.x_proj(x.transpose(1, 2)), [rank, n, n], dim=-1)
        delta = mixer.dt_proj.weight @ dt_low.transpose(1, 2)  # [B, d, L]; the bias goes in with the softplus
        y = ops.selective_scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), mixer.D.float(), z,
                               mixer.dt_proj.bias.float())  # fmt: skip
        return mixer.out_proj(y.transpose(1, 2).to(dtype))
    inner, heads, groups, n = mixer.intermediate_size, mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    projected = mixer.in_proj(hidden_states)
    if projected.shape[-1] != 2 * inner + 2 * groups * n + heads:
        raise ValueError("the unfused Mamba-2 forward covers in_proj = [z | xBC | dt] only (no extra MLP part)")
    z, xbc, dt = projected.split([inner, inner + 2 * groups * n, heads], dim=-1)
    xbc = mixer.act(ops.conv(xbc.transpose(1, 2), weight, conv_bias).transpose(1, 2))
    return ops.mamba2_tail(mixer, z, xbc, dt).to(dtype)


def install_unfused_forward_(model: nn.Module, ops: ScanOps, *, on_cpu: bool = False) -> int:
    """Give each Mamba mixer of ``model`` the unfused forward on ``ops`` for CUDA inputs (and CPU ones with
    ``on_cpu``, for tests); a call with a cache (generation), or on another device, keeps the mixer's own forward.
    An attention mask of ones is no mask; one with padding is refused (``ValueError``): on CUDA in train mode the
    mixer's own forward is the fused kernel, which would apply SiLU whatever the model's activation. Returns the
    number of mixers patched; ``TypeError`` for a mixer class it does not reproduce.

    The patch lives on the instances (``save_pretrained`` writes the same weights and config)."""
    from .models import mamba_mixers

    count = 0
    for module in mamba_mixers(model):
        name = type(module).__name__
        if name not in MIXERS:
            raise TypeError(f"the unfused forward reproduces {', '.join(MIXERS)}, not {name}")
        own = module.forward

        def forward(self, hidden_states, *args, _own=own, **kwargs):
            cache = args[0] if args else kwargs.get("cache", kwargs.get("cache_params"))
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            if cache is None and (hidden_states.is_cuda or on_cpu):
                if mask is not None and not bool((mask == 1).all()):
                    raise ValueError("the unfused training forward takes no padding: train on unpadded batches "
                                     "(an attention mask of ones is fine)")  # fmt: skip
                return unfused_mixer_forward(self, hidden_states, ops)
            return _own(hidden_states, *args, **kwargs)

        module.forward = types.MethodType(forward, module)
        count += 1
    return count
