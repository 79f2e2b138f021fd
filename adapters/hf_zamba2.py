"""HF ``Zamba2ForCausalLM`` / ``Zamba2Model``: Mamba-2 blocks, some of which also read a shared transformer.

Every block is one residual sublayer ``y = x + Mamba(u)``; ``config.layers_block_type`` says which input ``u`` its
Mamba-2 mixer reads:

* ``"mamba"`` (``Zamba2MambaDecoderLayer``): ``u = RMSNorm(x)``, a plain Mamba-2 sublayer
  (:class:`~latim_captum.traces.LayerTrace`, kind ``"mamba2"``);
* ``"hybrid"`` (``Zamba2HybridLayer``): ``u = RMSNorm(x + W τ(x, e))`` with ``τ`` the shared transformer
  (``Zamba2AttentionDecoderLayer``, weights tied across hybrid layers) over ``concat(x, e)``, ``e`` the input
  embeddings (``original_hidden_states``)::

      a = Attn(LN_1([x ; e]))            (heads of width 2D/H, softmax scale (d_head/2)^-½, optional rotary)
      τ = MLP(LN_2(a))                   (gated: W_down (act(gate) ⊙ up); no residual inside the block)

  a :class:`~latim_captum.traces.SharedBlockTrace` (kind ``"shared+mamba2"``) decomposed over both sources
  (:mod:`latim_captum.shared`).

The per-layer LoRA adapters of the shared block (``linear_{q,k,v}_adapter_list``, ``gate_up_proj_adapter_list``,
picked by the hybrid layer's rank among the hybrid layers) are linear maps without biases: they are folded into the
projections they add to. The Mamba mixer is HF's Mamba-2 (gate applied before the group RMSNorm, Δ clamped below at
``time_step_min``); its conv bias is always applied, whatever ``use_conv_bias`` says. The embeddings are not scaled,
the LM head has no bias. Each hybrid layer's recomputation is verified at three points: the shared block's
``W τ``, the mixer input ``u`` and the mixer output.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
from torch import Tensor, nn

from latim_captum._model_state import CallHooks
from latim_captum.attention import attention_weights, head_values
from latim_captum.traces import LayerTrace, SharedBlockTrace, SharedTransformerTrace

from .base import CapturedLayer
from .hf_common import weight
from .hf_hybrid import HFHybridAdapter, _Verified
from .hf_mamba2 import hf_mamba2_weights
from .mixers import Mamba2Weights, mamba2_layer

__all__ = ["HFZamba2Adapter", "zamba2_mamba_weights"]


def zamba2_mamba_weights(mixer: nn.Module, dtype: torch.dtype) -> Mamba2Weights:
    """The weights of a ``Zamba2MambaMixer`` in ``dtype`` (its conv bias is always used)."""
    return hf_mamba2_weights(mixer, dtype, conv_bias=True)


def _mixer_activation(mixer: nn.Module) -> str:
    """The conv activation the mixer applies (``None`` means none)."""
    return "identity" if mixer.activation is None else str(mixer.activation)


def _linear_matrix(module: nn.Module, in_features: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The matrix ``M`` with ``module(h) = h Mᵀ`` of a bias-free linear module (a LoRA adapter: ``nn.Linear``, an
    ``nn.Sequential`` of them, or ``nn.Identity``)."""
    if isinstance(module, nn.Linear):
        if module.bias is not None:
            raise NotImplementedError("a Zamba2 adapter with a bias is not supported")
        return weight(module.weight, dtype)
    if isinstance(module, nn.Sequential):
        out = torch.eye(in_features, dtype=dtype, device=device)
        for sub in module:
            out = _linear_matrix(sub, out.shape[0], dtype, device) @ out
        return out
    if isinstance(module, nn.Identity):
        return torch.eye(in_features, dtype=dtype, device=device)
    raise NotImplementedError(f"a Zamba2 adapter of type {type(module).__name__} is not supported")


def _with_adapter(linear: nn.Linear, adapter: nn.Module | None, dtype: torch.dtype) -> Tensor:
    """``W + M_adapter``: a shared projection with the hybrid layer's own (unshared) adapter folded in,
    ``[out, in]``."""
    mat = weight(linear.weight, dtype)
    if adapter is not None:
        mat = mat + _linear_matrix(adapter, linear.in_features, dtype, mat.device)
    return mat


def _no_bias(*linears: nn.Linear) -> None:
    for linear in linears:
        if linear.bias is not None:
            raise NotImplementedError("Zamba2's shared attention and hybrid linear have no biases; this one has")


def _rms_scale(x: Tensor, norm: nn.Module) -> Tensor:
    """``rsqrt(mean(x²) + ε)``, ``[..., 1]``."""
    return torch.rsqrt(x.square().mean(-1, keepdim=True) + float(norm.variance_epsilon))


class HFZamba2Adapter(HFHybridAdapter):
    """Adapter for Hugging Face Zamba2 models: one sublayer per block, a plain Mamba-2 or a shared-block hybrid.

    Example:
        >>> from transformers import Zamba2Config, Zamba2ForCausalLM
        >>> cfg = Zamba2Config(vocab_size=50, hidden_size=32, intermediate_size=48, num_attention_heads=4,
        ...                    n_mamba_heads=4, mamba_d_state=8, chunk_size=4, num_hidden_layers=3,
        ...                    layers_block_type=["mamba", "hybrid", "mamba"])
        >>> adapter = HFZamba2Adapter(Zamba2ForCausalLM(cfg))
        >>> adapter.n_layers, adapter.n_sublayers, [adapter.block_kind(b) for b in adapter.blocks]
        (3, 3, ['mamba', 'hybrid', 'mamba'])
    """

    name = "hf-zamba2"
    causal_lm_class = "Zamba2ForCausalLM"
    base_class = "Zamba2Model"
    model_class_names = (causal_lm_class, base_class)

    def block_kind(self, block: nn.Module) -> str:
        """``"hybrid"`` (a shared transformer feeds the Mamba's input) or ``"mamba"``."""
        return "hybrid" if hasattr(block, "shared_transformer") else "mamba"

    def mixer(self, block: nn.Module) -> nn.Module:
        return block.mamba_decoder.mamba if self.block_kind(block) == "hybrid" else block.mamba

    def sublayers_per_block(self, block: nn.Module) -> int:
        return 1

    def add_capture_hooks(self, hooks: CallHooks, captured: list[CapturedLayer]) -> None:
        """The base hooks plus, per hybrid layer, the embeddings and rotary embeddings its shared transformer
        read and the ``W τ`` it added to the Mamba's input, in ``captured[idx].extras``."""
        super().add_capture_hooks(hooks, captured)

        def hybrid_pre(idx: int):
            def hook(_module, args, kwargs):
                original = args[1] if len(args) > 1 else kwargs["original_hidden_states"]
                captured[idx].extras["embeddings"] = original.detach()
                captured[idx].extras["position_embeddings"] = kwargs.get("position_embeddings")

            return hook

        def decoder_pre(idx: int):
            def hook(_module, _args, kwargs):
                captured[idx].extras["shared_output"] = kwargs["transformer_hidden_states"].detach()

            return hook

        for idx, block in enumerate(self.blocks):
            if self.block_kind(block) == "hybrid":
                hooks.pre(block, hybrid_pre(idx), with_kwargs=True)
                hooks.pre(block.mamba_decoder, decoder_pre(idx), with_kwargs=True)

    def mamba_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        mixer = self.mixer(block)
        mask = None if captured.mixer_mask is None else captured.mixer_mask.to(dtype)
        return mamba2_layer(
            captured.mixer_input.to(dtype),
            mask,
            captured.block_input.to(dtype),
            captured.mixer_output.to(dtype),
            zamba2_mamba_weights(mixer, dtype),
            _mixer_activation(mixer),
        )

    def block_traces(self, idx, block, cap, attn_kwargs, mask, dtype) -> list[_Verified | SharedBlockTrace]:
        """A plain Mamba-2 sublayer, or the hybrid layer's :class:`SharedBlockTrace` with its three checks."""
        residual = cap.block_input.to(dtype)
        added = cap.block_output.to(dtype) - residual
        if self.block_kind(block) == "mamba":
            mixer, recomputed = self.mamba_trace(block, cap, dtype)
            # what the block added (x + mixer rounds in the model's dtype), verified against the mixer's own output
            return [_Verified(replace(mixer, mixer_output=added), recomputed)]
        shared, recomputed_shared = self._shared_transformer(idx, block, residual, attn_kwargs, mask, dtype)
        norm = block.mamba_decoder.input_layernorm
        pre_norm = residual + recomputed_shared
        input_scale = weight(norm.weight, dtype) * _rms_scale(pre_norm, norm)  # [B, N, D]
        mixer_input = pre_norm * input_scale
        mixer = self.mixer(block)
        weights = zamba2_mamba_weights(mixer, dtype)
        mixer_mask = None if cap.mixer_mask is None else cap.mixer_mask.to(dtype)
        mamba, recomputed = mamba2_layer(mixer_input, mixer_mask, residual, added, weights, _mixer_activation(mixer))
        d = weights.heads * weights.head_dim
        in_bias = weights.in_proj_bias
        sublayer = SharedBlockTrace(
            layer=idx,
            residual=residual,
            mixer_output=added,
            mask=mask,
            mamba=replace(mamba, layer=idx),
            shared=shared,
            input_scale=input_scale,
            input_weight=weights.in_proj_weight[d : 2 * d],
            input_bias=None if in_bias is None else in_bias[d : 2 * d],
        )
        captured_shared = attn_kwargs["shared_output"].to(dtype)
        return [
            _Verified(mamba, recomputed, in_trace=False),
            _Verified(mamba, recomputed_shared, False, captured_shared, "shared transformer output W τ"),
            _Verified(mamba, mixer_input, False, cap.mixer_input.to(dtype), "Mamba input RMSNorm(x + W τ)"),
            sublayer,
        ]

    def _shared_transformer(
        self, idx: int, block: nn.Module, residual: Tensor, kwargs: dict, mask: Tensor | None, dtype: torch.dtype
    ) -> tuple[SharedTransformerTrace, Tensor]:
        """Recompute ``W τ(x, e)`` in ``dtype`` with its fixed scales and gate; return its trace and output."""
        st = block.shared_transformer
        attn, mlp = st.self_attn, st.feed_forward
        config = self.model.config
        embeddings = kwargs["embeddings"].to(dtype)
        bsz, n, d_model = residual.shape
        # LN_1 over [x ; e] is linear given its rms: each half is one source's share of the input
        ln1 = weight(st.input_layernorm.weight, dtype)
        joint = torch.cat([residual, embeddings], dim=-1)
        scale1 = _rms_scale(joint, st.input_layernorm)
        hidden = joint * scale1 * ln1
        slot = attn.layer_dic[idx]  # this hybrid layer's adapters
        adapters = bool(config.use_shared_attention_adapter)
        _no_bias(attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, block.linear)

        def proj(name: str) -> Tensor:
            adapter = getattr(attn, f"linear_{name}_adapter_list")[slot] if adapters else None
            return _with_adapter(getattr(attn, f"{name}_proj"), adapter, dtype)

        w_q, w_k, w_v = proj("q"), proj("k"), proj("v")
        head_dim = int(attn.head_dim)
        query = (hidden @ w_q.T).view(bsz, n, -1, head_dim).transpose(1, 2)
        key = (hidden @ w_k.T).view(bsz, n, -1, head_dim).transpose(1, 2)
        if config.use_mem_rope:
            rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            cos, sin = (t.to(dtype) for t in kwargs["position_embeddings"])
            query, key = rotary(query, key, cos, sin)
        weights = attention_weights(query, key, float(attn.scaling), mask)

        def values(part: Tensor, cols: slice) -> Tensor:
            return (part @ w_v[:, cols].T).view(bsz, n, -1, head_dim).transpose(1, 2)

        stream_values = values(residual * scale1 * ln1[:d_model], slice(0, d_model))
        embedding_values = values(embeddings * scale1 * ln1[d_model:], slice(d_model, 2 * d_model))
        heads = weights.shape[1]
        w_o = weight(attn.o_proj.weight, dtype)
        mixed = weights @ head_values(stream_values + embedding_values, heads)  # [B, H, N, d_head]
        attn_out = mixed.transpose(1, 2).reshape(bsz, n, -1) @ w_o.T
        # LN_2 (linear given its rms) and the gated MLP with its gate held fixed
        ffn_scale = weight(st.pre_ff_layernorm.weight, dtype) * _rms_scale(attn_out, st.pre_ff_layernorm)
        w_gu = _with_adapter(mlp.gate_up_proj, mlp.gate_up_proj_adapter_list[mlp.layer_dic[idx]], dtype)
        b_gu = weight(mlp.gate_up_proj.bias, dtype)
        inter = w_gu.shape[0] // 2
        projected = (attn_out * ffn_scale) @ w_gu.T
        if b_gu is not None:
            projected = projected + b_gu
        gate = mlp.act_fn(projected[..., :inter])
        w_down, b_down = weight(mlp.down_proj.weight, dtype), weight(mlp.down_proj.bias, dtype)
        tau = (gate * projected[..., inter:]) @ w_down.T
        if b_down is not None:
            tau = tau + b_down
        w_out = weight(block.linear.weight, dtype)
        output = tau @ w_out.T
        trace = SharedTransformerTrace(
            weights=weights,
            stream_values=stream_values,
            embedding_values=embedding_values,
            attn_out_weight=w_o,
            ffn_scale=ffn_scale,
            ffn_gate=gate,
            ffn_up_weight=w_gu[inter:],
            ffn_up_bias=None if b_gu is None else b_gu[inter:],
            ffn_down_weight=w_down,
            ffn_down_bias=b_down,
            out_weight=w_out,
            output=output,
        )
        return trace, output
