"""Plain-PyTorch stand-ins for mamba-ssm 2.x's LM (``mamba_ssm`` cannot be imported without CUDA).

Written from mamba-ssm's source (``models/mixer_seq_simple.py``, ``modules/block.py``, ``modules/mamba_simple.py``,
``modules/mamba2.py``, ``ops/triton/layernorm_gated.py``, ``ops/triton/layer_norm.py``) with the same class
names, attribute names, parameter shapes and forward semantics; the CUDA/Triton kernels are replaced by their
pure-PyTorch references (a step-by-step selective scan, ``rms_norm_ref``, the unfused add + norm), which upcast
to float32 (here: to at least float32; ``residual_in_fp32`` still rounds to float32, as in mamba-ssm). Nothing here
uses latim_captum, so the adapter is checked against an independent forward.
"""

from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def _up(t):
    """The kernels' upcast to float32 (float64 kept, so the CPU tests can check exactness to 1e-10)."""
    return t if t is None or t.dtype == torch.float64 else t.float()


@dataclass
class MambaConfig:
    d_model: int = 32
    d_intermediate: int = 0
    n_layer: int = 2
    vocab_size: int = 40
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True


class RMSNorm(nn.Module):
    """``mamba_ssm.ops.triton.layer_norm.RMSNorm`` (its bias is registered as None)."""

    def __init__(self, hidden_size, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x):
        return _norm(x, self.weight, self.bias, self.eps, True)


def _norm(x, weight, bias, eps, is_rms_norm):
    xf = _up(x)
    if not is_rms_norm:
        xf = xf - xf.mean(-1, keepdim=True)
    out = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps) * _up(weight)
    if bias is not None:
        out = out + _up(bias)
    return out.to(x.dtype)


def layer_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, is_rms_norm=False):
    """The fused add + norm: ``residual_out = x + residual`` (fp32 if asked), normalised."""
    residual_out = x + residual if residual is not None else x
    if residual_in_fp32:
        residual_out = residual_out.float()
    out = _norm(residual_out, weight, bias, eps, is_rms_norm).to(x.dtype)
    return (out, residual_out) if prenorm else out


class RMSNormGated(nn.Module):
    """``mamba_ssm.ops.triton.layernorm_gated.RMSNorm``: ``norm(x·SiLU(z))`` or ``norm(x)·SiLU(z)`` by groups."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate

    def forward(self, x, z=None):  # rms_norm_ref
        dtype = x.dtype
        x, z = _up(x), _up(z)
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z)
        group = self.group_size or x.shape[-1]
        xg = x.view(*x.shape[:-1], -1, group)
        out = (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + self.eps)).view(x.shape) * _up(self.weight)
        if z is not None and self.norm_before_gate:
            out = out * F.silu(z)
        return out.to(dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_ref`` for input-dependent B, C (``[b, n, l]``)."""
    dtype_in = u.dtype
    u, delta = _up(u), _up(delta)
    if delta_bias is not None:
        delta = delta + _up(delta_bias)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    x = A.new_zeros((batch, dim, A.shape[1]))
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, _up(B), u)
    ys = []
    for i in range(length):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, _up(C[:, :, i])))
    out = torch.stack(ys, dim=2)
    out = out if D is None else out + u * D[:, None]
    if z is not None:
        out = out * F.silu(_up(z))
    return out.to(dtype_in)


class Mamba(nn.Module):
    """``mamba_ssm.modules.mamba_simple.Mamba`` (the ``selective_scan_fn`` path)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False,
                 layer_idx=None, device=None, dtype=None):  # fmt: skip
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.layer_idx = layer_idx
        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias, **kw)  # fmt: skip
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **kw)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **kw)
        a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

    def forward(self, hidden_states, inference_params=None):
        seqlen = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)  # [b, 2d, l]
        A = -torch.exp(_up(self.A_log))
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2).reshape(-1, self.d_inner))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (self.dt_proj.weight @ dt.t()).view(self.d_inner, -1, seqlen).transpose(0, 1)
        B = B.view(-1, seqlen, self.d_state).transpose(1, 2)
        C = C.view(-1, seqlen, self.d_state).transpose(1, 2)
        y = selective_scan_ref(x, dt, A, B, C, _up(self.D), z=z, delta_bias=_up(self.dt_proj.bias),
                               delta_softplus=True)  # fmt: skip
        return self.out_proj(y.transpose(1, 2))


class Mamba2(nn.Module):
    """``mamba_ssm.modules.mamba2.Mamba2`` (the unfused path, ``mamba_chunk_scan_combined`` as a plain scan)."""

    def __init__(self, d_model, d_state=128, d_conv=4, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_limit=(0.0, float("inf")), bias=False,
                 conv_bias=True, chunk_size=256, layer_idx=None, device=None, dtype=None):  # fmt: skip
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.process_group = None
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.ngroups = ngroups
        self.nheads = self.d_ssm // headdim
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = dt_limit
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **kw)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias, **kw)
        self.act = nn.SiLU()
        self.dt_bias = nn.Parameter(torch.rand(self.nheads, **kw) - 2)
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads, **kw).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **kw)  # fmt: skip
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

    def forward(self, u, seqlen=None, seq_idx=None, cu_seqlens=None, inference_params=None):
        batch, seqlen, _ = u.shape
        zxbcdt = self.in_proj(u)
        A = -torch.exp(_up(self.A_log))
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        z0, x0, z, xbc, dt = torch.split(
            zxbcdt, [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state, self.nheads], dim=-1
        )
        xbc = self.act(self.conv1d(xbc.transpose(1, 2)).transpose(1, 2)[:, : -(self.d_conv - 1)])
        x, B, C = torch.split(xbc, [self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        dt = F.softplus(_up(dt) + _up(self.dt_bias)).clamp(*self.dt_limit)  # [b, l, h]
        rep = self.nheads // self.ngroups
        xh = _up(x).view(batch, seqlen, self.nheads, self.headdim)
        bh = _up(B).view(batch, seqlen, self.ngroups, self.d_state).repeat_interleave(rep, dim=2)
        ch = _up(C).view(batch, seqlen, self.ngroups, self.d_state).repeat_interleave(rep, dim=2)
        state = xh.new_zeros(batch, self.nheads, self.headdim, self.d_state)
        ys = []
        for t in range(seqlen):  # ssd_minimal's recurrence, one step at a time
            state = torch.exp(dt[:, t] * A)[..., None, None] * state + torch.einsum(
                "bh,bhp,bhn->bhpn", dt[:, t], xh[:, t], bh[:, t]
            )
            ys.append(torch.einsum("bhpn,bhn->bhp", state, ch[:, t]))
        y = torch.stack(ys, dim=1)
        d = _up(self.D).view(self.nheads, self.headdim) if self.D_has_hdim else _up(self.D)[:, None]
        y = y + xh * d
        if not self.rmsnorm:
            y = y * F.silu(_up(z).view(batch, seqlen, self.nheads, self.headdim))
        y = y.reshape(batch, seqlen, self.d_ssm).to(u.dtype)
        if self.rmsnorm:
            y = self.norm(y, z)
        if d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)


class Block(nn.Module):
    """``mamba_ssm.modules.block.Block``: returns ``(mixer output, residual)``; the add happens in the next block."""

    def __init__(self, dim, mixer_cls, norm_cls=nn.LayerNorm, fused_add_norm=False, residual_in_fp32=False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.norm = norm_cls(dim)
        self.mixer = mixer_cls(dim)
        self.mlp = None

    def forward(self, hidden_states, residual=None, inference_params=None, **mixer_kwargs):
        if not self.fused_add_norm:
            residual = (hidden_states + residual) if residual is not None else hidden_states
            hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
            if self.residual_in_fp32:
                residual = residual.to(torch.float32)
        else:
            hidden_states, residual = layer_norm_fn(
                hidden_states, self.norm.weight, self.norm.bias, residual=residual, prenorm=True,
                residual_in_fp32=self.residual_in_fp32, eps=self.norm.eps, is_rms_norm=isinstance(self.norm, RMSNorm),
            )  # fmt: skip
        hidden_states = self.mixer(hidden_states, inference_params=inference_params, **mixer_kwargs)
        return hidden_states, residual


class MixerModel(nn.Module):
    def __init__(self, d_model, n_layer, vocab_size, ssm_cfg=None, norm_epsilon=1e-5, rms_norm=False,
                 fused_add_norm=False, residual_in_fp32=False, device=None, dtype=None):  # fmt: skip
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.residual_in_fp32 = residual_in_fp32
        self.embedding = nn.Embedding(vocab_size, d_model, **kw)
        self.fused_add_norm = fused_add_norm
        ssm_cfg = dict(ssm_cfg or {})
        mixer = {"Mamba1": Mamba, "Mamba2": Mamba2}[ssm_cfg.pop("layer", "Mamba1")]
        norm_cls = partial(nn.LayerNorm if not rms_norm else RMSNorm, eps=norm_epsilon, **kw)
        self.layers = nn.ModuleList(
            Block(d_model, partial(mixer, layer_idx=i, **ssm_cfg, **kw), norm_cls, fused_add_norm, residual_in_fp32)
            for i in range(n_layer)
        )
        self.norm_f = (nn.LayerNorm if not rms_norm else RMSNorm)(d_model, eps=norm_epsilon, **kw)

    def forward(self, input_ids, inference_params=None, **mixer_kwargs):
        hidden_states = self.embedding(input_ids)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, inference_params=inference_params, **mixer_kwargs)
        if not self.fused_add_norm:
            residual = (hidden_states + residual) if residual is not None else hidden_states
            return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
        return layer_norm_fn(
            hidden_states, self.norm_f.weight, self.norm_f.bias, eps=self.norm_f.eps, residual=residual,
            prenorm=False, residual_in_fp32=self.residual_in_fp32, is_rms_norm=isinstance(self.norm_f, RMSNorm),
        )  # fmt: skip


class MambaLMHeadModel(nn.Module):
    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        vocab = config.vocab_size
        if vocab % config.pad_vocab_size_multiple:
            vocab += config.pad_vocab_size_multiple - vocab % config.pad_vocab_size_multiple
        self.backbone = MixerModel(
            config.d_model, config.n_layer, vocab, ssm_cfg=config.ssm_cfg,
            rms_norm=config.rms_norm, fused_add_norm=config.fused_add_norm,
            residual_in_fp32=config.residual_in_fp32, device=device, dtype=dtype,
        )  # fmt: skip
        self.lm_head = nn.Linear(config.d_model, vocab, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids, position_ids=None, inference_params=None, num_last_tokens=0, **mixer_kwargs):
        hidden_states = self.backbone(input_ids, inference_params=inference_params, **mixer_kwargs)
        if num_last_tokens > 0:
            hidden_states = hidden_states[:, -num_last_tokens:]
        return namedtuple("CausalLMOutput", ["logits"])(logits=self.lm_head(hidden_states))
