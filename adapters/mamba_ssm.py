"""mamba-ssm's ``MambaLMHeadModel`` / ``MixerModel`` with Mamba-1 (``Mamba``) and Mamba-2 (``Mamba2``,
``Mamba2Simple``) mixers.

The module is duck-typed (class names and attributes, no import of ``mamba_ssm``), so it is tested on a CPU with
plain-PyTorch stand-ins; :mod:`latim_captum.adapters` registers it only when ``mamba_ssm`` imports.

Layout (``mamba_ssm.modules.block.Block``)::

    Block_l(hidden, residual) -> (mixer(norm(x^{(l-1)})), x^{(l-1)}),   x^{(l-1)} = residual + hidden

The residual add of a block's mixer output happens inside the *next* block (or the final norm), fused with the
norm when ``fused_add_norm``; ``residual_in_fp32`` keeps ``x`` in float32. So the residual stream entering layer l
is the ``residual`` the block returns, and the block's output is ``y = x^{(l-1)} + mixer output``. The mixer input
is captured with a pre-hook on the mixer, as for every family; the final norm ``backbone.norm_f`` is an RMSNorm or
a LayerNorm (``rms_norm=False``; see :class:`~latim_captum.traces.Readout`).

Example:
    >>> adapter = MambaSSMAdapter(MambaLMHeadModel(MambaConfig(d_model=64, n_layer=2)))  # doctest: +SKIP
    >>> trace = adapter.trace(input_ids=ids)                                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from latim_captum._model_state import CallHooks
from latim_captum.traces import LayerTrace

from .base import CapturedLayer, mro_depth
from .hf_common import HFBackboneAdapter, weight
from .mixers import Mamba1Weights, Mamba2Weights, layer_from_capture, mamba1_layer, mamba2_layer

__all__ = ["MambaSSMAdapter", "mamba_ssm_config_from_hf", "mamba_ssm_state_dict_from_hf"]

MAMBA1_MIXERS = ("Mamba",)
MAMBA2_MIXERS = ("Mamba2", "Mamba2Simple")


class MambaSSMAdapter(HFBackboneAdapter):
    """Adapter for mamba-ssm language models (``mamba_ssm.models.mixer_seq_simple``).

    Raises:
        NotImplementedError: at construction, naming the layer, for blocks with an MLP (``d_intermediate > 0``),
            attention or Mamba-3 mixers, tensor-parallel or learnable-initial-state mixers.
    """

    name = "mamba-ssm"
    model_class_names = ("MambaLMHeadModel", "MixerModel")
    embeddings_attr = "embedding"  # the one name that differs from HF's layout

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        for idx, block in enumerate(self.blocks):
            _check_block(idx, block)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return cls.match_depth(model) is not None

    @classmethod
    def match_depth(cls, model: nn.Module) -> int | None:
        lm_head = mro_depth(model, ["MambaLMHeadModel"])
        if lm_head is not None:
            return lm_head if hasattr(getattr(model, "backbone", None), "embedding") else None
        mixer = mro_depth(model, ["MixerModel"])
        return mixer if mixer is not None and hasattr(model, "embedding") else None

    def forward(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, attention_mask: Tensor | None) -> Any:
        """mamba-ssm models take token ids only and have no padding mask; embeddings go through a hook."""
        if attention_mask is not None and not bool((attention_mask != 0).all()):
            first = (attention_mask == 0).nonzero()[0].tolist()
            raise ValueError(
                f"mamba-ssm models have no padding mask, but attention_mask has a 0 at {first} (batch, position); "
                "trace unpadded sequences one at a time"
            )
        if inputs_embeds is None:
            return self.model(input_ids)
        with CallHooks() as hooks:  # replaces this call's embeddings only, not another thread's
            hooks.post(self.embeddings, lambda _m, _a, _o: inputs_embeds)
            ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            return self.model(ids)

    @staticmethod
    def output_logits(output: Any) -> Tensor | None:
        return getattr(output, "logits", None)

    def block_io(self, args: tuple, kwargs: dict, output: Any) -> tuple[Tensor | None, Tensor]:
        hidden, residual = output
        return residual, residual + hidden

    def mixer_trace(self, block: nn.Module, captured: CapturedLayer, dtype: torch.dtype) -> tuple[LayerTrace, Tensor]:
        mixer = block.mixer
        if type(mixer).__name__ in MAMBA1_MIXERS:
            return layer_from_capture(
                mamba1_layer, captured, _mamba1_weights(mixer, dtype), str(mixer.activation), dtype
            )
        return layer_from_capture(mamba2_layer, captured, _mamba2_weights(mixer, dtype), str(mixer.activation), dtype)


def _check_block(idx: int, block: nn.Module) -> None:
    if getattr(block, "mlp", None) is not None:
        raise NotImplementedError(f"layer {idx}: blocks with an MLP (d_intermediate > 0) are not supported")
    mixer = getattr(block, "mixer", None)
    name = type(mixer).__name__
    if name not in MAMBA1_MIXERS + MAMBA2_MIXERS:
        raise NotImplementedError(
            f"layer {idx}: mixer {name} is not supported (supported: {', '.join(MAMBA1_MIXERS + MAMBA2_MIXERS)})"
        )
    if getattr(mixer, "process_group", None) is not None:
        raise NotImplementedError(f"layer {idx}: tensor-parallel mixers are not supported; gather the weights first")
    if getattr(mixer, "learnable_init_states", False):
        raise NotImplementedError(f"layer {idx}: Mamba2Simple with learnable initial states is not supported")
    if str(getattr(mixer, "activation", "silu")) not in ("silu", "swish"):
        raise NotImplementedError(f"layer {idx}: mixer activation {mixer.activation!r} is not supported")


def _conv(mixer: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    return weight(mixer.conv1d.weight, dtype)[:, 0, :], weight(mixer.conv1d.bias, dtype)


def _mamba1_weights(mixer: nn.Module, dtype: torch.dtype) -> Mamba1Weights:
    conv_w, conv_b = _conv(mixer, dtype)
    return Mamba1Weights(
        in_proj_weight=weight(mixer.in_proj.weight, dtype),
        in_proj_bias=weight(mixer.in_proj.bias, dtype),
        conv_weight=conv_w,
        conv_bias=conv_b,
        x_proj_weight=weight(mixer.x_proj.weight, dtype),
        dt_rank=int(mixer.dt_rank),
        state_size=int(mixer.d_state),
        dt_proj_weight=weight(mixer.dt_proj.weight, dtype),
        dt_proj_bias=weight(mixer.dt_proj.bias, dtype),
        A_log=weight(mixer.A_log, dtype),
        D=weight(mixer.D, dtype),
        out_proj_weight=weight(mixer.out_proj.weight, dtype),
        out_proj_bias=weight(mixer.out_proj.bias, dtype),
    )


def _mamba2_weights(mixer: nn.Module, dtype: torch.dtype) -> Mamba2Weights:
    conv_w, conv_b = _conv(mixer, dtype)
    d_ssm = int(getattr(mixer, "d_ssm", mixer.d_inner))
    rmsnorm = bool(getattr(mixer, "rmsnorm", True))  # Mamba2Simple always has the gated norm
    norm = mixer.norm if rmsnorm else None
    group_size = (getattr(norm, "group_size", None) or d_ssm) if norm is not None else d_ssm
    return Mamba2Weights(
        in_proj_weight=weight(mixer.in_proj.weight, dtype),
        in_proj_bias=weight(mixer.in_proj.bias, dtype),
        conv_weight=conv_w,
        conv_bias=conv_b,
        heads=int(mixer.nheads),
        head_dim=int(mixer.headdim),
        groups=int(mixer.ngroups),
        state_size=int(mixer.d_state),
        dt_bias=weight(mixer.dt_bias, dtype),
        dt_limit=tuple(float(v) for v in mixer.dt_limit),
        A_log=weight(mixer.A_log, dtype),
        D=weight(mixer.D, dtype),
        norm_weight=None if norm is None else weight(norm.weight, dtype),
        norm_eps=1e-5 if norm is None else float(norm.eps),
        norm_groups=d_ssm // int(group_size),
        norm_before_gate=bool(getattr(norm, "norm_before_gate", False)),
        out_proj_weight=weight(mixer.out_proj.weight, dtype),
        out_proj_bias=weight(mixer.out_proj.bias, dtype),
    )


def mamba_ssm_config_from_hf(config: Any) -> dict:
    """Keyword arguments of ``mamba_ssm.models.config_mamba.MambaConfig`` for the same model as a HF
    ``MambaConfig`` / ``Mamba2Config`` (load the weights with :func:`mamba_ssm_state_dict_from_hf`).

    Example:
        >>> MambaLMHeadModel(MambaConfig(**mamba_ssm_config_from_hf(hf_model.config)))  # doctest: +SKIP
    """
    if float(config.layer_norm_epsilon) != 1e-5:
        raise NotImplementedError(f"mamba-ssm LMs use norm ε = 1e-5; the HF config has {config.layer_norm_epsilon}")
    if str(config.hidden_act) not in ("silu", "swish"):
        raise NotImplementedError(f"mamba-ssm mixers always use SiLU; the HF config has {config.hidden_act!r}")
    common = dict(
        d_conv=config.conv_kernel, expand=config.expand, conv_bias=config.use_conv_bias, bias=config.use_bias
    )
    if type(config).__name__ == "Mamba2Config":
        ssm_cfg = dict(
            layer="Mamba2",
            d_state=config.state_size,
            headdim=config.head_dim,
            ngroups=config.n_groups,
            chunk_size=config.chunk_size,
            dt_limit=tuple(float(v) for v in config.time_step_limit),
            rmsnorm=True,
            norm_before_gate=False,
            **common,
        )
    else:
        ssm_cfg = dict(layer="Mamba1", d_state=config.state_size, dt_rank=config.time_step_rank, **common)
    return dict(
        d_model=config.hidden_size,
        d_intermediate=0,
        n_layer=config.num_hidden_layers,
        vocab_size=config.vocab_size,
        ssm_cfg=ssm_cfg,
        rms_norm=True,
        residual_in_fp32=bool(getattr(config, "residual_in_fp32", True)),
        fused_add_norm=True,
        pad_vocab_size_multiple=1,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
    )


def mamba_ssm_state_dict_from_hf(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A HF Mamba / Mamba2 state dict under mamba-ssm's names (only the embedding differs: ``backbone.embeddings``
    → ``backbone.embedding``)."""
    return {key.replace("backbone.embeddings.", "backbone.embedding.", 1): value for key, value in state_dict.items()}
