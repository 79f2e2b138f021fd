"""HF ``FalconH1ForCausalLM`` / ``FalconH1Model``: a parallel hybrid. Every block runs a Mamba-2 mixer and a rotary
GQA attention side by side on the same normed input, sums them, then applies an MLP::

    h  = LN_1(x)
    x' = x + m_ssm_out · Mamba(h) + m_attn_out · Attn(m_attn_in · h)
    y  = x' + MLP(LN_2(x'))

so a block is two residual sublayers: a :class:`~latim_captum.traces.ParallelTrace` of the two mixers (``2b``,
``T_i(x_j) = T^Mamba_i(x_j) + T^Attn_i(x_j)``), then the MLP (``2b + 1``, read as ``y − x'``). Every µP multiplier
is accounted for:

* ``embedding_multiplier`` scales the embeddings before the first block (the trace's embeddings are the scaled ones);
* ``ssm_in_multiplier`` and the per-channel-group ``ssm_multipliers`` (the mixer's ``mup_vector`` over
  ``[z | x | B | C | dt]``) are folded into the in-projection's rows (``W_in ← mup ⊙ W_in · m_in``,
  ``b_in ← mup ⊙ b_in``); ``ssm_out_multiplier`` into ``W_o``/``b_o``;
* ``attention_in_multiplier`` scales the attention's input (its trace's ``mixer_input`` is ``m_attn_in · h``),
  ``key_multiplier`` the keys (folded into the softmax scale: rotary is linear in ``k``),
  ``attention_out_multiplier`` is folded into ``W_O``/``b_O``;
* ``mlp_multipliers`` act inside the MLP (its output is read from the block);
* ``lm_head_multiplier`` scales the logits (folded into the readout's unembedding).

The optional gated RMSNorm (``mamba_rms_norm``, before or after the gate) is the shared Mamba-2 gate ``γ``; without
it the gate is ``SiLU(z)``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from latim_captum._model_state import CallHooks
from latim_captum.traces import LayerTrace, ParallelTrace, TokenwiseTrace

from .base import CapturedLayer
from .hf_common import gated_norm_groups, weight
from .hf_hybrid import _AFTER_FFN, HFHybridAdapter, _scaled, _Verified, attention_trace
from .mixers import Mamba2Weights, mamba2_layer

__all__ = ["HFFalconH1Adapter", "falcon_h1_mamba_trace"]


def falcon_h1_mamba_trace(mixer: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
    """Recompute a ``FalconH1Mixer`` from its captured input (multipliers folded into ``W_in``/``b_in``); returns the
    trace (``layer`` unset: -1, output before ``ssm_out_multiplier``) and the recomputed output."""
    mup = weight(mixer.mup_vector, dtype).reshape(-1)
    w_in = weight(mixer.in_proj.weight, dtype) * (mup[:, None] * float(mixer.ssm_in_multiplier))
    b_in = weight(mixer.in_proj.bias, dtype)
    has_norm = bool(mixer.mamba_rms_norm)
    limit = mixer.time_step_limit if mixer.time_step_limit is not None else (0.0, float("inf"))
    weights = Mamba2Weights(
        in_proj_weight=w_in,
        in_proj_bias=None if b_in is None else b_in * mup,
        conv_weight=weight(mixer.conv1d.weight, dtype)[:, 0, :],
        conv_bias=weight(mixer.conv1d.bias, dtype) if mixer.use_conv_bias else None,
        heads=int(mixer.num_heads),
        head_dim=int(mixer.head_dim),
        groups=int(mixer.n_groups),
        state_size=int(mixer.ssm_state_size),
        dt_bias=weight(mixer.dt_bias, dtype),
        dt_limit=tuple(float(v) for v in limit),
        A_log=weight(mixer.A_log, dtype),
        D=weight(mixer.D, dtype),
        norm_weight=weight(mixer.norm.weight, dtype) if has_norm else None,
        norm_eps=float(mixer.norm.variance_epsilon) if has_norm else 0.0,
        norm_groups=gated_norm_groups(mixer.norm, int(mixer.norm.weight.shape[0])) if has_norm else 1,
        norm_before_gate=bool(mixer.norm.norm_before_gate) if has_norm else False,
        out_proj_weight=weight(mixer.out_proj.weight, dtype),
        out_proj_bias=weight(mixer.out_proj.bias, dtype),
    )
    mask = None if captured.mixer_mask is None else captured.mixer_mask.to(dtype)
    return mamba2_layer(
        captured.mixer_input.to(dtype),
        mask,
        captured.block_input.to(dtype),
        captured.mixer_output.to(dtype),
        weights,
        str(mixer.activation),
    )


class HFFalconH1Adapter(HFHybridAdapter):
    """Adapter for Hugging Face FalconH1 models (parallel attention + Mamba-2 blocks).

    Example:
        >>> from transformers import FalconH1Config, FalconH1ForCausalLM
        >>> cfg = FalconH1Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        ...                      num_attention_heads=4, num_key_value_heads=2, mamba_d_ssm=64, mamba_n_heads=4,
        ...                      mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_chunk_size=4)
        >>> adapter = HFFalconH1Adapter(FalconH1ForCausalLM(cfg))
        >>> adapter.n_layers, adapter.n_sublayers
        (2, 4)
    """

    name = "hf-falcon-h1"
    causal_lm_class = "FalconH1ForCausalLM"
    base_class = "FalconH1Model"
    model_class_names = (causal_lm_class, base_class)

    def block_kind(self, block: nn.Module) -> str:
        return "mamba"

    def mixer(self, block: nn.Module) -> nn.Module:
        return block.mamba

    def ffn_kind(self, block: nn.Module) -> str:
        return "mlp"

    @property
    def logits_multiplier(self) -> float:
        return float(self.backbone.lm_head_multiplier)

    def add_capture_hooks(self, hooks: CallHooks, captured: list[CapturedLayer]) -> None:
        """The base hooks (with the MLP norm's input ``x'``, the residual after both mixers) plus, per block, the
        attention's rotary embeddings and output, in ``captured[idx].extras``."""
        super().add_capture_hooks(hooks, captured)

        def attn_pre(idx: int):
            def hook(_module, _args, kwargs):
                captured[idx].extras["position_embeddings"] = kwargs.get("position_embeddings")

            return hook

        def attn_post(idx: int):
            def hook(_module, _args, output):
                captured[idx].extras["output"] = output[0].detach()

            return hook

        for idx, block in enumerate(self.blocks):
            hooks.pre(block.self_attn, attn_pre(idx), with_kwargs=True)
            hooks.post(block.self_attn, attn_post(idx))

    def block_traces(self, idx, block, cap, attn_kwargs, mask, dtype) -> list[_Verified | TokenwiseTrace]:
        """The parallel mixers (each verified against its own output, and their sum against what the block added to
        the residual) then the MLP."""
        ssm, ssm_recomputed = falcon_h1_mamba_trace(block.mamba, cap, dtype)
        ssm_scale = float(block.ssm_out_multiplier)
        ssm, ssm_recomputed = _scaled(ssm, ssm_scale), ssm_recomputed * ssm_scale
        attn = block.self_attn
        attn_scale = float(block.attn_out_multiplier)
        attn_trace, attn_recomputed = attention_trace(
            attn,
            cap.mixer_input.to(dtype) * float(block.attention_in_multiplier),
            cap.block_input,
            attn_kwargs["output"].to(dtype) * attn_scale,
            mask,
            dtype,
            position_embeddings=attn_kwargs.get("position_embeddings"),
            output_multiplier=attn_scale,
            scaling=float(attn.scaling) * float(attn.key_multiplier),
        )
        residual = cap.block_input.to(dtype)
        after_mixers = attn_kwargs["after_mixer"].to(dtype)
        parallel = ParallelTrace(
            layer=idx,
            residual=residual,
            mixer_output=after_mixers - residual,
            mask=mask,
            parts=(replace(ssm, layer=idx), replace(attn_trace, layer=idx)),
        )
        mlp = TokenwiseTrace(
            layer=idx, residual=after_mixers, mixer_output=cap.block_output.to(dtype) - after_mixers, mask=mask
        )
        # each part is verified on its own, and x + their sum against x'; the parallel sublayer carries the block's sum
        parts_sum = residual + ssm.mixer_output + attn_trace.mixer_output.to(dtype)
        mlp_added = after_mixers + attn_kwargs["ffn_output"].to(dtype)  # the MLP's multipliers act inside it
        return [
            _Verified(ssm, ssm_recomputed, False),
            _Verified(attn_trace, attn_recomputed, False),
            _Verified(parallel, parts_sum, False, after_mixers, "residual after the parallel mixers, x + M + A"),
            _Verified(mlp, mlp_added, False, cap.block_output.to(dtype), _AFTER_FFN),
            parallel,
            mlp,
        ]
