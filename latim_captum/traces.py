"""Plain-tensor records of one forward pass: what the decomposition needs and nothing model-specific.

Adapters (``latim_captum.adapters``) fill these from a model; everything downstream (decomposition, aggregation,
front ends) reads only these. All tensors are in the trace's compute dtype (float32 by default, float64 in tests)
and on the model's device. Shapes use B = batch, N = sequence length, D = d_model, d = d_inner (the decomposed
channels), R = Mamba-1 state size, H = Mamba-2 heads, G = groups, S = Mamba-2 state size, K = conv kernel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Mamba1SSM",
    "Mamba2SSM",
    "SSMParams",
    "LayerTrace",
    "AttentionTrace",
    "TokenwiseTrace",
    "ParallelTrace",
    "SublayerTrace",
    "sublayer_kind",
    "Readout",
    "ModelTrace",
]


@dataclass(frozen=True)
class Mamba1SSM:
    """Input-dependent Mamba-1 SSM parameters, held fixed by LaTIM (eq 10).

    ``H_i = exp(Δ_i A) ⊙ H_{i-1} + (Δ_i B_i) φ_i`` per channel, ``v_i = H_i^T C_i``.

    Attributes:
        delta: Δ after softplus, ``[B, N, d]``.
        A: continuous state matrix (negative), ``[d, R]``.
        B: input projection, ``[B, N, R]``.
        C: output projection, ``[B, N, R]``.
    """

    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor


@dataclass(frozen=True)
class Mamba2SSM:
    """Input-dependent Mamba-2 SSM parameters, held fixed by LaTIM (eq 13): one scalar decay per head.

    Head ``h`` reads group ``h // (H / G)`` of B and C, and channel ``c`` belongs to head ``c // head_dim``.

    Attributes:
        delta: Δ after softplus and clamping, ``[B, N, H]``.
        A: scalar decay rate per head (negative), ``[H]``.
        B: ``[B, N, G, S]``.
        C: ``[B, N, G, S]``.
        head_dim: channels per head (``d = H * head_dim``).
    """

    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    head_dim: int


SSMParams = Mamba1SSM | Mamba2SSM


@dataclass(frozen=True)
class LayerTrace:
    """One Mamba block: ``y_i = x_i + W_o (g_i ⊙ v_i) + b_o`` with ``v = SSM(φ) + D φ`` and ``φ = act(conv(W_x h))``.

    The per-position output gate ``g_i`` is ``SiLU(z_i)`` for Mamba-1 (eq 12) and the gated-norm operator
    ``γ_i = w ⊙ SiLU(z_i) ⊙ rsqrt(mean_group(u_i²) + ε)`` for Mamba-2 (eq 24), both held fixed.

    Attributes:
        layer: index of the block in the model.
        residual: block input ``x^{(l-1)}``, ``[B, N, D]`` (the residual stream; token i's own).
        mixer_input: normalised block input ``h = RMSNorm(x)``, ``[B, N, D]``.
        mixer_output: the model's own mixer output, ``[B, N, D]``, upcast to the compute dtype.
        mask: ``[B, N]`` with 1 for tokens and 0 for padding, or None.
        conv_input: ``W_x h_j`` (plus in-projection bias) for the decomposed channels, ``[B, N, d]``.
        conv_weight: depthwise causal conv taps, ``[d, K]``; tap ``K-1`` reads the current token.
        conv_bias: ``[d]`` or None; counted once, on the current token's tap (footnote 3).
        pre_activation: ``ψ`` = conv output before the activation, ``[B, N, d]``.
        activation: the model's conv activation name (``"silu"``, ``"identity"``, ...).
        ssm: the fixed Δ, A, B, C.
        skip: the D skip per channel, ``[d]``.
        out_gate: ``g_i``, ``[B, N, d]``.
        out_weight: ``W_o``, ``[D, d]``.
        out_bias: ``b_o``, ``[D]`` or None (an offset attributed to no token).
    """

    layer: int
    residual: Tensor
    mixer_input: Tensor
    mixer_output: Tensor
    mask: Tensor | None
    conv_input: Tensor
    conv_weight: Tensor
    conv_bias: Tensor | None
    pre_activation: Tensor
    activation: str
    ssm: SSMParams
    skip: Tensor
    out_gate: Tensor
    out_weight: Tensor
    out_bias: Tensor | None

    @property
    def variant(self) -> str:
        """``"mamba1"`` or ``"mamba2"``."""
        return "mamba2" if isinstance(self.ssm, Mamba2SSM) else "mamba1"

    @property
    def block_output(self) -> Tensor:
        """``y_i = x_i + mixer(h)_i``, ``[B, N, D]``."""
        return self.residual + self.mixer_output

    @property
    def offset(self) -> Tensor:
        """Part of the mixer output attributed to no token (the out-projection bias), ``[D]``."""
        if self.out_bias is None:
            return torch.zeros(self.out_weight.shape[0], dtype=self.out_weight.dtype, device=self.out_weight.device)
        return self.out_bias


@dataclass(frozen=True)
class AttentionTrace:
    """One attention sublayer: ``y_i = x_i + Σ_h W_O^h Σ_j A^h_ij v^h_j + b_O`` with ``v^h_j = W_V^h LN(x_j) + b_V``.

    The softmax weights ``A^h`` (causal mask, padding, sliding window already applied) are held fixed, so the
    decomposition ``T_i(x_j) = Σ_h W_O^h A^h_ij v^h_j`` (Kobayashi et al. 2020; the paper's eq 4) is exact given
    them. Rotary embeddings act on queries and keys only, so they live inside ``A``.

    Attributes:
        layer: index of the model block this sublayer belongs to.
        residual: sublayer input ``x``, ``[B, N, D]``.
        mixer_input: ``LN(x)``, ``[B, N, D]``.
        mixer_output: the model's own attention output (multipliers included), ``[B, N, D]``.
        mask: ``[B, N]`` padding mask or None.
        weights: ``A``, ``[B, H, N, N]`` (rows of padded queries are zero).
        values: ``v`` (value bias included), ``[B, H_kv, N, d_head]``; head ``h`` reads kv head
            ``h // (H / H_kv)`` (grouped-query attention).
        out_weight: ``W_O`` with any output multiplier folded in, ``[D, H * d_head]``.
        out_bias: ``b_O`` (multiplier folded in) or None: an offset attributed to no token.
    """

    layer: int
    residual: Tensor
    mixer_input: Tensor
    mixer_output: Tensor
    mask: Tensor | None
    weights: Tensor
    values: Tensor
    out_weight: Tensor
    out_bias: Tensor | None

    @property
    def block_output(self) -> Tensor:
        """``y_i = x_i + attn(LN(x))_i``, ``[B, N, D]``."""
        return self.residual + self.mixer_output

    @property
    def offset(self) -> Tensor:
        """The output-projection bias (no token's), ``[D]``."""
        if self.out_bias is None:
            return self.residual.new_zeros(self.residual.shape[-1])
        return self.out_bias


@dataclass(frozen=True)
class TokenwiseTrace:
    """A sublayer that mixes no tokens (MLP or MoE): ``y_i = x_i + F(LN(x_i))``.

    Its output at i belongs to token i at that point of the residual stream: ``T_i(x_j) = δ_ij F(LN(x_i))``. Its
    ALTI map is therefore the identity and its ALTI-Logit term ``Δ_ii = F(LN(x_i)) · u_i`` is carried back to the
    input tokens by the rollout of the sublayers below, like any contribution of token i.

    Attributes:
        layer: index of the model block this sublayer belongs to.
        residual: sublayer input, ``[B, N, D]``.
        mixer_output: ``F(LN(x_i))`` as the model added it (biases and multipliers included), ``[B, N, D]``.
        mask: ``[B, N]`` padding mask or None.
        kind: ``"mlp"`` or ``"moe"``.
    """

    layer: int
    residual: Tensor
    mixer_output: Tensor
    mask: Tensor | None
    kind: str = "mlp"

    @property
    def block_output(self) -> Tensor:
        return self.residual + self.mixer_output

    @property
    def offset(self) -> Tensor:
        """Zero: the whole output (biases included) is token i's own."""
        return self.residual.new_zeros(self.residual.shape[-1])


@dataclass(frozen=True)
class ParallelTrace:
    """Token mixers run side by side on the same input and summed into one residual update (FalconH1's attention
    and Mamba-2): ``y_i = x_i + Σ_p M_p(LN(x))_i``.

    Contributions add: ``T_i(x_j) = Σ_p T^p_i(x_j)`` and ``offset = Σ_p offset_p``, each part decomposed the way its
    type allows (its multipliers folded into its own trace).

    Attributes:
        layer: index of the model block this sublayer belongs to.
        residual: sublayer input, ``[B, N, D]``.
        mixer_output: what the block added to the residual (the parts' sum as the model rounded it), ``[B, N, D]``.
        mask: ``[B, N]`` padding mask or None.
        parts: the parallel mixers, each a :class:`LayerTrace` or :class:`AttentionTrace` on the same ``residual``.
    """

    layer: int
    residual: Tensor
    mixer_output: Tensor
    mask: Tensor | None
    parts: tuple[LayerTrace | AttentionTrace, ...]

    @property
    def block_output(self) -> Tensor:
        return self.residual + self.mixer_output

    @property
    def offset(self) -> Tensor:
        """``Σ_p offset_p``: the parts' output biases, owned by no token."""
        return sum((part.offset for part in self.parts), self.residual.new_zeros(self.residual.shape[-1]))


#: every sublayer of the residual stream; each has ``layer``, ``residual``, ``mixer_output``, ``mask``,
#: ``block_output`` and ``offset`` (``Σ_j T_i(x_j) + offset = mixer_output_i`` for an exact decomposition)
SublayerTrace = LayerTrace | AttentionTrace | TokenwiseTrace | ParallelTrace


def sublayer_kind(layer: SublayerTrace) -> str:
    """``"mamba1"``, ``"mamba2"``, ``"attention"``, ``"mlp"``, ``"moe"``, or its parts' joined by ``+`` for a
    :class:`ParallelTrace` (``"mamba2+attention"``)."""
    if isinstance(layer, ParallelTrace):
        return "+".join(sublayer_kind(part) for part in layer.parts)
    if isinstance(layer, LayerTrace):
        return layer.variant
    if isinstance(layer, AttentionTrace):
        return "attention"
    return layer.kind


@dataclass(frozen=True)
class Readout:
    """Final norm and unembedding: ``logit_w(i) = U_w · (w_f ⊙ x_i^{(L)} · s_i) + b_w``.

    The final RMSNorm is a fixed per-position scale ``s_i = rsqrt(mean(x_i²) + ε)`` (eq 7's projection goes through
    it), so the logit is linear in the residual stream given ``s``.

    Attributes:
        final_hidden: residual stream after the last block, ``[B, N, D]``.
        norm_weight: ``w_f``, ``[D]``.
        norm_scale: ``s_i``, ``[B, N]``.
        unembedding: ``U``, ``[V, D]``.
        bias: ``[V]`` or None.
        logits: the model's own logits, ``[B, N, V]``, upcast.
        center: the final norm is a LayerNorm: it subtracts the mean first (a linear map, folded into
            :meth:`direction`) and ``s_i`` is the rsqrt of the centred variance.
        norm_bias: the final norm's bias ``β`` or None; ``U_w · β`` is an offset no token owns.
    """

    final_hidden: Tensor
    norm_weight: Tensor
    norm_scale: Tensor
    unembedding: Tensor
    bias: Tensor | None
    logits: Tensor
    center: bool = False
    norm_bias: Tensor | None = None

    def direction(self, target: Tensor) -> Tensor:
        """``U_w ⊙ w_f`` for targets of any shape, ``[..., D]``; centred (``P = I − 11ᵀ/D``) for a LayerNorm."""
        vec = self.unembedding[target] * self.norm_weight
        return vec - vec.mean(-1, keepdim=True) if self.center else vec

    def projection(self, target: Tensor) -> Tensor:
        """The vectors ``u_i = P (U_{w(i)} ⊙ w_f) · s_i`` for per-position targets ``[B, N]``, shape ``[B, N, D]``."""
        return self.direction(target) * self.norm_scale[..., None]

    def target_bias(self, target: Tensor) -> Tensor:
        """``b_{w(i)} + U_{w(i)} · β`` for per-position targets, ``[B, N]`` (zeros without either bias)."""
        out = torch.zeros(target.shape, dtype=self.unembedding.dtype, device=target.device)
        if self.bias is not None:
            out = out + self.bias[target]
        if self.norm_bias is not None:
            out = out + self.unembedding[target] @ self.norm_bias
        return out


@dataclass(frozen=True)
class ModelTrace:
    """A traced forward pass: the embeddings, every sublayer's trace and (for LM heads) the readout.

    ``layers`` lists the sublayers of the residual stream in order: one :class:`LayerTrace` per block for a pure
    Mamba model; for a hybrid, each block gives its token mixer (:class:`LayerTrace` or :class:`AttentionTrace`)
    then its MLP/MoE (:class:`TokenwiseTrace`). Each sublayer's ``layer`` names its model block; ``layers=``
    arguments of the API index this list (see :attr:`kinds`).

    Attributes:
        embeddings: ``x^{(0)}``, ``[B, N, D]``.
        layers: the sublayer traces, in order; ``layers[s].residual == layers[s-1].block_output``.
        readout: final norm + unembedding, or None for a model without an LM head.
        mask: ``[B, N]`` padding mask or None.
        dtype: the compute dtype of every tensor here.
    """

    embeddings: Tensor
    layers: list[SublayerTrace]
    readout: Readout | None
    mask: Tensor | None
    dtype: torch.dtype

    @property
    def n_layers(self) -> int:
        """Number of residual sublayers (= blocks for a pure Mamba model)."""
        return len(self.layers)

    @property
    def kinds(self) -> list[str]:
        """:func:`sublayer_kind` of every sublayer, e.g. ``["mamba2", "mlp", "attention", "mlp"]``."""
        return [sublayer_kind(layer) for layer in self.layers]

    @property
    def activation(self) -> str | None:
        """The conv activation of the Mamba layers (None when the model has none)."""
        flat = (part for layer in self.layers for part in getattr(layer, "parts", (layer,)))
        return next((layer.activation for layer in flat if isinstance(layer, LayerTrace)), None)

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, seq_len)``."""
        return tuple(self.embeddings.shape[:2])  # type: ignore[return-value]
