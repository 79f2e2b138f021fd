"""Shared structure of the Hugging Face Mamba/attention hybrids (Jamba, Bamba, ...).

A hybrid block is two sublayers of the residual stream::

    x' = x + M(LN_1(x))          M: a Mamba mixer (decomposed by LaTIM) or attention (decomposed given A)
    y  = x' + F(LN_2(x'))        F: an MLP or MoE (token-wise: T_i(x'_j) = δ_ij F(LN_2(x'_i)))

so the trace lists, per block ``b``, the mixer sublayer (index ``2b``) then the MLP/MoE sublayer (``2b + 1``). The MLP
output is recovered as ``y − x'`` from the block's own input and output, so the residual chain of the trace is the
model's to rounding and ALTI-Logit's rows still sum to the logit. Families subclass :class:`HFHybridAdapter` and say
where the mixer/attention live and which multipliers apply.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from latim_captum._model_state import CallHooks
from latim_captum._precision import fp32_math
from latim_captum.attention import attention_output, attention_weights
from latim_captum.traces import (
    AttentionTrace,
    LayerTrace,
    ModelTrace,
    SublayerTrace,
    TokenwiseTrace,
    parameter_versions,
)

from .base import (
    CapturedLayer,
    ResidualChain,
    check_recomputed,
    check_store,
    execution_device,
    kept,
    moved_capture,
    onloaded,
    stored,
    verification_tolerance,
    warn_left_padding_once,
)
from .hf_common import HFBackboneAdapter, weight

__all__ = ["HFHybridAdapter", "attention_trace"]


def _linear(x: Tensor, layer: nn.Linear, dtype: torch.dtype) -> Tensor:
    out = x @ weight(layer.weight, dtype).T
    return out if layer.bias is None else out + weight(layer.bias, dtype)


def attention_trace(
    attn: nn.Module,
    hidden: Tensor,
    residual: Tensor,
    mixer_output: Tensor,
    mask: Tensor | None,
    dtype: torch.dtype,
    *,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    sliding_window: int | None = None,
    output_multiplier: float = 1.0,
    scaling: float | None = None,
) -> tuple[AttentionTrace, Tensor]:
    """Recompute a Llama-style attention module (``q_proj``/``k_proj``/``v_proj``/``o_proj``, ``head_dim``,
    ``scaling``, optional rotary through its module's ``apply_rotary_pos_emb``) in ``dtype``.

    Args:
        attn: the attention module.
        hidden: its input ``LN(x)``, ``[B, N, D]``.
        residual: the sublayer's residual input ``x``.
        mixer_output: what the model added to the residual (multipliers included).
        mask: ``[B, N]`` padding mask in ``dtype`` or None.
        dtype: compute dtype.
        position_embeddings: the ``(cos, sin)`` the module received, or None for attention without rotary.
        sliding_window: the module's window, if any.
        output_multiplier: a scale the model applies to the attention output (folded into ``W_O`` and ``b_O``).
        scaling: the softmax scale of ``q·k`` (default the module's ``scaling``; FalconH1 folds its key multiplier
            in, rotary being linear in ``k``).

    Returns:
        The trace and the recomputed attention output (multiplier included).
    """
    h = hidden.to(dtype)
    bsz, n, _ = h.shape
    head_dim = int(attn.head_dim)
    query = _linear(h, attn.q_proj, dtype).view(bsz, n, -1, head_dim).transpose(1, 2)
    key = _linear(h, attn.k_proj, dtype).view(bsz, n, -1, head_dim).transpose(1, 2)
    value = _linear(h, attn.v_proj, dtype).view(bsz, n, -1, head_dim).transpose(1, 2)
    if position_embeddings is not None:
        rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        cos, sin = (t.to(dtype) for t in position_embeddings)
        query, key = rotary(query, key, cos, sin)
    scale = float(attn.scaling) if scaling is None else scaling
    weights = attention_weights(query, key, scale, mask, sliding_window=sliding_window)
    out_w = weight(attn.o_proj.weight, dtype) * output_multiplier
    out_b = weight(attn.o_proj.bias, dtype)
    trace = AttentionTrace(
        layer=-1,
        residual=residual.to(dtype),
        mixer_input=h,
        mixer_output=mixer_output.to(dtype),
        mask=mask,
        weights=weights,
        values=value,
        out_weight=out_w,
        out_bias=None if out_b is None else out_b * output_multiplier,
    )
    return trace, attention_output(trace)


def _scaled(trace: LayerTrace | AttentionTrace, scale: float) -> LayerTrace | AttentionTrace:
    """The same mixer with its output scaled (folded into ``W_o`` and ``b_o``, so ``T`` scales with it)."""
    return replace(
        trace,
        mixer_output=trace.mixer_output * scale,
        out_weight=trace.out_weight * scale,
        out_bias=None if trace.out_bias is None else trace.out_bias * scale,
    )


def _warn_left_padding(model: nn.Module, attention_mask: Tensor | None) -> None:
    """Warn, once per model class, that a hybrid's own outputs depend on left padding (an upstream property).

    HF hybrids zero padded positions before their Mamba in-projection, so its bias reaches the real tokens through
    the convolution: the model's logits move (2-9 % measured) when a sequence is left-padded. LaTIM explains the
    padded forward pass as it is, faithfully, so its maps follow those logits.
    """
    warn_left_padding_once(
        model,
        attention_mask,
        "with left padding: Hugging Face hybrid models' own logits change with left padding (their Mamba "
        "in-projection bias reaches real tokens through the convolution; 2-9 % measured), and LaTIM explains the "
        "padded forward pass as it is; attribute unpadded sequences one at a time for the unpadded model's maps "
        "(docs/hybrids.md, 'Padding')",
    )


_AFTER_MIXER = "residual after the mixer, x' = x + M(LN(x)) (the MLP norm's input)"
_AFTER_FFN = "block output, y = x' + F(LN(x')) (F: the MLP/MoE modules' own output)"


@dataclass
class _Verified:
    """A token-mixing sublayer's trace with its independently recomputed output, checked by :meth:`trace`;
    ``in_trace=False`` for a part that is verified on its own but listed inside a combined sublayer. ``reference``
    replaces the trace's ``mixer_output`` as what ``recomputed`` must match (an intermediate tensor of the block,
    named by ``what`` in the error)."""

    trace: SublayerTrace
    recomputed: Tensor
    in_trace: bool = True
    reference: Tensor | None = None
    what: str = "mixer output"


def _on(value, device: torch.device):
    """``value`` (a tensor, a tuple of them such as rotary ``(cos, sin)``, or None) on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_on(v, device) for v in value)
    return value


def _unwrap(sub: _Verified | SublayerTrace) -> SublayerTrace:
    return sub.trace if isinstance(sub, _Verified) else sub


class HFHybridAdapter(HFBackboneAdapter):
    """Adapter base for HF hybrids laid out as ``<Family>ForCausalLM.model.layers[i]`` with a ``mamba`` or
    ``self_attn`` mixer and a ``feed_forward`` per block.

    Subclasses set ``causal_lm_class``/``base_class`` and implement :meth:`mamba_trace`; override the structural
    accessors where a family names things differently.
    """

    backbone_attr = "model"
    embeddings_attr = "embed_tokens"
    final_norm_attr = "final_layernorm"

    # -- structure ---------------------------------------------------------------------------------------------
    def sublayers_per_block(self, block: nn.Module) -> int:
        """Residual sublayers a block adds to the trace: two here (mixer, then MLP/MoE); single-sublayer blocks
        (NemotronH) override this together with :meth:`block_traces`."""
        return 2

    @property
    def n_sublayers(self) -> int:
        """Residual sublayers of the whole trace: the sum of :meth:`sublayers_per_block` (``2 * n_layers`` for
        mixer + MLP blocks)."""
        return sum(self.sublayers_per_block(block) for block in self.blocks)

    def block_kind(self, block: nn.Module) -> str:
        """``"mamba"`` or ``"attention"``."""
        return "mamba" if getattr(block, "mamba", None) is not None else "attention"

    def mixer(self, block: nn.Module) -> nn.Module:
        return block.mamba if self.block_kind(block) == "mamba" else block.self_attn

    def feed_forward(self, block: nn.Module) -> nn.Module:
        return block.feed_forward

    def feed_forward_modules(self, block: nn.Module) -> tuple[nn.Module, ...]:
        """The modules whose outputs, summed and times :meth:`residual_multiplier`, the block adds to ``x'``."""
        return (self.feed_forward(block),)

    def feed_forward_norm(self, block: nn.Module) -> nn.Module:
        """The norm in front of the MLP/MoE: its input is the block's residual after the mixer, ``x'``."""
        return block.pre_ff_layernorm

    def ffn_kind(self, block: nn.Module) -> str:
        """``"moe"`` for a sparse mixture of experts, else ``"mlp"``."""
        return "moe" if "moe" in type(self.feed_forward(block)).__name__.lower() else "mlp"

    def residual_multiplier(self, block: nn.Module) -> float:
        """Scale ``block`` applies to each sublayer's output before adding it to the residual (Granite)."""
        return 1.0

    @property
    def logits_multiplier(self) -> float:
        """Scale the LM head applies to its logits (Granite's ``1 / logits_scaling``)."""
        return 1.0

    def readout(self, final_hidden: Tensor, logits: Tensor | None, dtype: torch.dtype):
        """The base readout with the logits multiplier folded into the unembedding (and bias)."""
        scale = self.logits_multiplier
        if scale == 1.0 or logits is None:
            return super().readout(final_hidden, logits, dtype)
        out = super().readout(final_hidden, logits / scale, dtype)
        if out is None:
            return None
        return replace(
            out,
            unembedding=out.unembedding * scale,
            bias=None if out.bias is None else out.bias * scale,
            logits=logits.detach().to(device=out.unembedding.device, dtype=dtype),
        )

    # -- per sublayer --------------------------------------------------------------------------------------------
    def mamba_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        """Recompute a block's Mamba mixer; the trace's ``mixer_output`` is what the block adds to the residual."""
        raise NotImplementedError

    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        return self.mamba_trace(block, captured, dtype)

    def attention_trace(
        self, block: nn.Module, captured: CapturedLayer, kwargs: dict, mask: Tensor | None, dtype: torch.dtype
    ) -> tuple[AttentionTrace, Tensor]:
        """Recompute a block's attention from its captured input and keyword arguments (rotary ``cos, sin``)."""
        attn = self.mixer(block)
        return attention_trace(
            attn,
            captured.mixer_input,
            captured.block_input,
            captured.mixer_output,
            mask,
            dtype,
            position_embeddings=kwargs.get("position_embeddings"),
            sliding_window=getattr(attn, "sliding_window", None),
        )

    def mixer_sublayer(
        self, block: nn.Module, cap: CapturedLayer, attn_kwargs: dict, mask: Tensor | None, dtype: torch.dtype
    ) -> tuple[LayerTrace | AttentionTrace, Tensor]:
        """The block's token-mixing sublayer (Mamba or attention) with the residual multiplier folded in, and the
        recomputed output to verify."""
        if self.block_kind(block) == "mamba":
            mixer, recomputed = self.mamba_trace(block, cap, dtype)
        else:
            mixer, recomputed = self.attention_trace(block, cap, attn_kwargs, mask, dtype)
        scale = self.residual_multiplier(block)
        if scale != 1.0:
            mixer, recomputed = _scaled(mixer, scale), recomputed * scale
        return mixer, recomputed

    def block_traces(
        self,
        idx: int,
        block: nn.Module,
        cap: CapturedLayer,
        attn_kwargs: dict,
        mask: Tensor | None,
        dtype: torch.dtype,
    ) -> list[_Verified | TokenwiseTrace]:
        """The block's sublayers in residual order: its mixer (to verify), then the MLP/MoE read as ``y − x'``.

        The mixer's own check does not see how the block adds its output to the residual (a multiplier, a norm after
        the mixer, a hook on the block), so ``x' = x + M`` is checked against the MLP norm's captured input and
        ``y = x' + F`` against the block's output, ``F`` the MLP/MoE modules' own output."""
        mixer, recomputed = self.mixer_sublayer(block, cap, attn_kwargs, mask, dtype)
        after_mixer = mixer.block_output
        block_output = cap.block_output.to(dtype)
        added = block_output - after_mixer
        ffn = TokenwiseTrace(layer=idx, residual=after_mixer, mixer_output=added, mask=mask, kind=self.ffn_kind(block))
        ffn_added = after_mixer + attn_kwargs["ffn_output"].to(dtype) * self.residual_multiplier(block)
        return [
            _Verified(mixer, recomputed),
            _Verified(mixer, after_mixer, False, attn_kwargs["after_mixer"].to(dtype), _AFTER_MIXER),
            _Verified(ffn, ffn_added, False, block_output, _AFTER_FFN),
            ffn,
        ]

    # -- tracing ------------------------------------------------------------------------------------------------
    def add_capture_hooks(self, hooks: CallHooks, captured: list[CapturedLayer]) -> None:
        """The base hooks plus each attention module's keyword arguments (rotary embeddings), in
        ``captured[idx].extras``."""
        super().add_capture_hooks(hooks, captured)

        def attn_pre(idx: int):
            def hook(_module, _args, kwargs):
                captured[idx].extras.update(
                    {k: v for k, v in kwargs.items() if k == "position_embeddings" and v is not None}
                )

            return hook

        for idx, block in enumerate(self.blocks):
            if self.block_kind(block) == "attention":
                hooks.pre(self.mixer(block), attn_pre(idx), with_kwargs=True)
        self.add_after_mixer_hooks(hooks, captured)

    def add_after_mixer_hooks(self, hooks: CallHooks, captured: list[CapturedLayer]) -> None:
        """Record each two-sublayer block's ``x'`` (the input of :meth:`feed_forward_norm`) and the sum of its
        :meth:`feed_forward_modules`' outputs in ``captured[idx].extras["after_mixer"]`` and ``["ffn_output"]``."""

        def ffn_norm_pre(idx: int):
            def hook(_module, args):
                captured[idx].extras["after_mixer"] = args[0].detach()

            return hook

        def ffn_post(idx: int):
            def hook(_module, _args, output):
                out = (output[0] if isinstance(output, tuple) else output).detach()
                extras = captured[idx].extras
                extras["ffn_output"] = out if "ffn_output" not in extras else extras["ffn_output"] + out

            return hook

        for idx, block in enumerate(self.blocks):
            if self.sublayers_per_block(block) == 2:
                hooks.pre(self.feed_forward_norm(block), ffn_norm_pre(idx))
                for module in self.feed_forward_modules(block):
                    hooks.post(module, ffn_post(idx))

    def trace(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        verify: bool = True,
        store: str = "device",
    ) -> ModelTrace:
        """Run the model once; return a :class:`ModelTrace` with the sublayers of :meth:`block_traces` for every block.

        Each mixer is recomputed in ``dtype`` and checked against the model's output on the non-padded tokens
        (padded queries of attention layers are not defined by the model). ``store`` as in
        :meth:`ModelAdapter.trace`.
        """
        check_store(store)
        _warn_left_padding(self.model, attention_mask)
        source = parameter_versions(self.model)
        captured, logits = self.capture(input_ids, inputs_embeds, attention_mask)
        mask = None if attention_mask is None else attention_mask.to(device=self.device, dtype=dtype)
        layers: list[SublayerTrace] = []
        devices: list[torch.device] = []
        chain = ResidualChain(self.model, verification_tolerance(self.model_dtype, self.device), attention_mask)
        with torch.no_grad(), fp32_math():
            for idx, (block, cap) in enumerate(zip(self.blocks, captured)):
                device = execution_device(block)  # a sharded model's block is recomputed where it runs
                kwargs = {k: _on(v, device) for k, v in cap.extras.items()}  # this call's attention arguments
                with onloaded(block):
                    sublayers = self.block_traces(
                        idx, block, moved_capture(cap, device), kwargs, _on(mask, device), dtype
                    )
                for sub in sublayers:
                    if verify and isinstance(sub, _Verified):
                        reference = sub.trace.mixer_output if sub.reference is None else sub.reference
                        tol = verification_tolerance(self.model_dtype, device)
                        check_recomputed(self.model, idx, sub.recomputed, reference, mask, tol, sub.what)
                listed = [_unwrap(sub) for sub in sublayers if not isinstance(sub, _Verified) or sub.in_trace]
                for sub in listed if verify else ():
                    chain.add(idx, sub)
                layers.extend(kept(replace(sub, layer=idx), store) for sub in listed)
                devices.extend(device for _ in listed)
            if verify:
                chain.finish(captured[-1].block_output)
            readout = self.readout(captured[-1].block_output, logits, dtype)
        return ModelTrace(
            embeddings=captured[0].block_input.to(dtype), layers=stored(layers, devices, store), readout=readout,
            mask=mask, dtype=dtype, source=source,
        )  # fmt: skip
