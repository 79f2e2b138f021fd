"""Plain-tensor records of one forward pass: what the decomposition needs and nothing model-specific.

Adapters (``latim_captum.adapters``) fill these from a model; everything downstream (decomposition, aggregation,
front ends) reads only these. All tensors are in the trace's compute dtype (float32 by default, float64 in tests)
and on the model's device. Shapes use B = batch, N = sequence length, D = d_model, d = d_inner (the decomposed
channels), R = Mamba-1 state size, H = Mamba-2 heads, G = groups, S = Mamba-2 state size, K = conv kernel size.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, overload

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
    "SharedTransformerTrace",
    "SharedBlockTrace",
    "SublayerTrace",
    "has_embedding_columns",
    "sublayer_kind",
    "Readout",
    "ModelTrace",
    "HostLayers",
    "TRACE_STORES",
    "as_stored",
    "check_store",
    "parameter_versions",
    "to_host",
]

#: where a trace keeps its sublayers: on the device that computed them, or in host memory (streamed back one at a time)
TRACE_STORES: tuple[str, ...] = ("device", "host")


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


@dataclass(frozen=True)
class SharedTransformerTrace:
    """A transformer block over the residual stream *and* the input embeddings whose output feeds a Mamba layer's
    input (Zamba2's shared block): no residual inside, every gate and normalisation scale held fixed::

        a_j = Σ_h W_O^h Σ_k A^h_jk v^h_k,    v_k = W_V LN_1([x_k ; e_k]) = v^x_k + v^e_k    (LN_1 linear given its rms)
        τ_j = W_down (g_j ⊙ W_up (n_j ⊙ a_j) + b_up) + b_down                                (g_j = act(gate_j) fixed)
        output_j = W τ_j

    so ``W τ_j = Σ_k (τ^x_jk + τ^e_jk) + W c_j`` with ``c_j = W_down (g_j ⊙ b_up) + b_down`` (see
    :func:`latim_captum.shared.shared_input_parts`). Per-layer LoRA adapters of a shared block are folded into
    ``W_V`` and ``W_up``.

    Attributes:
        weights: the softmax weights ``A``, ``[B, H, N, N]`` (causal, padding; rotary inside).
        stream_values: ``v^x_k`` (the stream half of ``LN_1``'s output through ``W_V``), ``[B, H_kv, N, d_head]``.
        embedding_values: ``v^e_k`` (the embedding half), ``[B, H_kv, N, d_head]``.
        attn_out_weight: ``W_O``, ``[D, H * d_head]``.
        ffn_scale: ``n_j``: the pre-MLP RMSNorm as a fixed per-position scale (weight times rsqrt), ``[B, N, D]``.
        ffn_gate: ``g_j = act(gate_j)``, ``[B, N, I]``.
        ffn_up_weight: ``W_up`` (adapter folded in), ``[I, D]``.
        ffn_up_bias: ``b_up`` or None.
        ffn_down_weight: ``W_down``, ``[D, I]``.
        ffn_down_bias: ``b_down`` or None.
        out_weight: ``W``, ``[D, D]``.
        output: ``W τ_j`` as recomputed (checked against the model's), ``[B, N, D]``.
    """

    weights: Tensor
    stream_values: Tensor
    embedding_values: Tensor
    attn_out_weight: Tensor
    ffn_scale: Tensor
    ffn_gate: Tensor
    ffn_up_weight: Tensor
    ffn_up_bias: Tensor | None
    ffn_down_weight: Tensor
    ffn_down_bias: Tensor | None
    out_weight: Tensor
    output: Tensor

    @property
    def bias_path(self) -> Tensor:
        """``W c_j``: the part of ``W τ_j`` that comes from the MLP's biases, no source token's, ``[B, N, D]``."""
        out = self.ffn_gate.new_zeros(*self.ffn_gate.shape[:2], self.ffn_down_weight.shape[0])
        if self.ffn_up_bias is not None:
            out = out + (self.ffn_gate * self.ffn_up_bias) @ self.ffn_down_weight.T
        if self.ffn_down_bias is not None:
            out = out + self.ffn_down_bias
        return out @ self.out_weight.T


@dataclass(frozen=True)
class SharedBlockTrace:
    """A Mamba layer whose input also reads a shared transformer over the stream and the input embeddings
    (Zamba2's hybrid layer): ``y_i = x_i + Mamba(u)_i`` with ``u_j = s_j ⊙ (x_j + W τ_j(x, e))``.

    With the Mamba's gates held fixed (the activation strategy's tap gains, Δ, B, C, the gated norm ``γ``) its
    output is a linear map of its conv inputs, ``Σ_j L_ij(P_j)``, and each conv input splits over source tokens:
    ``P_j = W_x u_j + b_x = Σ_k (P^x_jk + P^e_jk)``. The contributions therefore come from two sources per token
    ``k``: ``T_i(x_k) = Σ_j L_ij(P^x_jk)`` (the residual stream, carried back by the rollout like any sublayer's)
    and ``T_i(e_k) = Σ_j L_ij(P^e_jk)`` (the embedding, which *is* input token k: its rollout is the identity).
    What no source token owns inside ``u_j`` (the MLP biases ``W c_j``), the in-projection bias ``b_x`` and the
    conv bias belong to position j's own stream part ``x_j``, the way LaTIM gives a plain Mamba layer's biases to
    the current token; the out-projection bias is the offset.

    :func:`latim_captum.decompose.sublayer_contributions` gives ``2N`` columns for it: ``T_i(x_k)`` then
    ``T_i(e_k)`` (see :func:`has_embedding_columns`).

    Attributes:
        layer: index of the model block.
        residual: ``x``, ``[B, N, D]``.
        mixer_output: what the block added to the residual (the Mamba output), ``[B, N, D]``.
        mask: ``[B, N]`` padding mask or None.
        mamba: the Mamba mixer on ``u`` (its ``mixer_input``), residual ``x``.
        shared: the shared transformer ``τ`` and its linear ``W``.
        input_scale: ``s_j`` (the Mamba's pre-norm weight times its rsqrt, fixed), ``[B, N, D]``.
        input_weight: ``W_x``: the rows of the Mamba in-projection that make the decomposed conv channels, ``[d, D]``.
        input_bias: ``b_x`` or None.
    """

    layer: int
    residual: Tensor
    mixer_output: Tensor
    mask: Tensor | None
    mamba: LayerTrace
    shared: SharedTransformerTrace
    input_scale: Tensor
    input_weight: Tensor
    input_bias: Tensor | None

    @property
    def block_output(self) -> Tensor:
        return self.residual + self.mixer_output

    @property
    def offset(self) -> Tensor:
        """The Mamba's out-projection bias (no token's), ``[D]``."""
        return self.mamba.offset


#: every sublayer of the residual stream; each has ``layer``, ``residual``, ``mixer_output``, ``mask``,
#: ``block_output`` and ``offset`` (``Σ_j T_i(x_j) + offset = mixer_output_i`` for an exact decomposition; the
#: sum also runs over the embedding columns of a :class:`SharedBlockTrace`)
SublayerTrace = LayerTrace | AttentionTrace | TokenwiseTrace | ParallelTrace | SharedBlockTrace


def has_embedding_columns(layer: SublayerTrace) -> bool:
    """Whether the sublayer's contributions also come straight from the input embeddings: its contribution vectors
    and maps then have ``2N`` columns, ``T_i(x_k)`` (k < N) then ``T_i(e_k)`` (column ``N + k``)."""
    return isinstance(layer, SharedBlockTrace)


def sublayer_kind(layer: SublayerTrace) -> str:
    """``"mamba1"``, ``"mamba2"``, ``"attention"``, ``"mlp"``, ``"moe"``, its parts' joined by ``+`` for a
    :class:`ParallelTrace` (``"mamba2+attention"``), ``"shared+mamba2"`` for a :class:`SharedBlockTrace`."""
    if isinstance(layer, ParallelTrace):
        return "+".join(sublayer_kind(part) for part in layer.parts)
    if isinstance(layer, SharedBlockTrace):
        return f"shared+{layer.mamba.variant}"
    if isinstance(layer, LayerTrace):
        return layer.variant
    if isinstance(layer, AttentionTrace):
        return "attention"
    return layer.kind


def _token_mixers(layer: SublayerTrace) -> tuple:
    if isinstance(layer, ParallelTrace):
        return layer.parts
    if isinstance(layer, SharedBlockTrace):
        return (layer.mamba,)
    return (layer,)


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
    then its MLP/MoE (:class:`TokenwiseTrace`); a Zamba2 block is one :class:`LayerTrace` or
    :class:`SharedBlockTrace`. Each sublayer's ``layer`` names its model block; ``layers=``
    arguments of the API index this list (see :attr:`kinds`).

    Attributes:
        embeddings: ``x^{(0)}``, ``[B, N, D]``.
        layers: the sublayer traces, in order; ``layers[s].residual == layers[s-1].block_output``; a
            :class:`HostLayers` when they are kept in host memory (``trace(..., store="host")``).
        readout: final norm + unembedding, or None for a model without an LM head.
        mask: ``[B, N]`` padding mask or None.
        dtype: the compute dtype of every tensor here.
        source: ``(weak reference to a parameter, its version counter)`` for every parameter of the traced model
            (weak: a trace does not keep a deleted model's weights alive). Where the compute
            dtype is the model's, the trace holds the weights themselves, not copies (a copy would double the
            model's memory), so an in-place edit of the model after tracing (an ablation, a training step) would
            change the maps of this trace; :meth:`check_current` refuses the trace then.
    """

    embeddings: Tensor
    layers: list[SublayerTrace] | HostLayers
    readout: Readout | None
    mask: Tensor | None
    dtype: torch.dtype
    source: tuple[tuple[weakref.ref, int], ...] = field(default=(), repr=False, compare=False)

    def check_current(self) -> None:
        """``RuntimeError`` when a parameter of the traced model was modified in place since the trace was made."""
        params = ((ref(), version) for ref, version in self.source)
        changed = next((p for p, version in params if p is not None and p._version != version), None)
        if changed is not None:
            raise RuntimeError(
                f"the model was modified in place after this trace was made (a parameter of shape "
                f"{tuple(changed.shape)}): its maps would mix the old forward pass with the new weights; trace the "
                "model again"
            )

    @property
    def store(self) -> str:
        """Where the layers are kept, as ``trace(..., store=...)`` names it: ``"host"`` (:class:`HostLayers`) or
        ``"device"``."""
        return "host" if isinstance(self.layers, HostLayers) else "device"

    @property
    def n_layers(self) -> int:
        """Number of residual sublayers (= blocks for a pure Mamba model)."""
        return len(self.layers)

    @property
    def kinds(self) -> list[str]:
        """:func:`sublayer_kind` of every sublayer, e.g. ``["mamba2", "mlp", "attention", "mlp"]``."""
        return [sublayer_kind(layer) for layer in as_stored(self.layers)]

    @property
    def activation(self) -> str | None:
        """The conv activation of the Mamba layers (None when the model has none)."""
        flat = (part for layer in as_stored(self.layers) for part in _token_mixers(layer))
        return next((layer.activation for layer in flat if isinstance(layer, LayerTrace)), None)

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, seq_len)``."""
        return tuple(self.embeddings.shape[:2])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ModelTrace:
        """The same trace with every tensor on ``device``: trace a model where it runs (e.g. a GPU with mamba-ssm's
        kernels), then compute or compare maps elsewhere. The compute dtype is kept.

        Example:
            >>> cpu_trace = trace(model.cuda(), ids.cuda()).to("cpu")        # doctest: +SKIP
            >>> maps = interactions(cpu_trace, method="alti")                 # doctest: +SKIP
        """
        return _moved(self, torch.device(device))


class HostLayers(Sequence):
    """Sublayer traces kept in host memory, each handed out on the device that computed it.

    A long input's trace can outgrow the GPU (Δ, B, C, gates and inputs of every layer: 84 GiB for 24 layers of
    mamba-130m at N = 131072, fp32) while the engine reads one layer at a time. Here each layer lives in pinned host
    memory; indexing or iterating copies that layer to its device (one ``[B, N, d]``-sized copy per layer, far
    cheaper than its maps at the lengths where this matters) and keeps only the last one handed out there, so
    ``for layer in trace.layers`` holds one layer on the GPU at a time (two for a moment: the loop variable still
    points at the previous one while the next is copied). Slices are :class:`HostLayers` too.

    Example:
        >>> tr = trace(model.cuda(), ids.cuda(), store="host")              # doctest: +SKIP
        >>> row = alti_logit_row(tr)                                         # doctest: +SKIP
    """

    def __init__(
        self, layers: Sequence[SublayerTrace], devices: Sequence[torch.device], _slot: dict | None = None
    ) -> None:
        if len(layers) != len(devices):
            raise ValueError(f"{len(layers)} layers but {len(devices)} devices")
        self.host, self.devices = list(layers), [torch.device(d) for d in devices]
        # the one device copy, shared with every slice: (host layer, its device copy)
        self._slot = {} if _slot is None else _slot

    def __len__(self) -> int:
        return len(self.host)

    @overload
    def __getitem__(self, index: int) -> SublayerTrace: ...

    @overload
    def __getitem__(self, index: slice) -> HostLayers: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return HostLayers(self.host[index], self.devices[index], self._slot)
        index = range(len(self.host))[index]  # negative indices; IndexError past the end
        host = self.host[index]
        if self._slot.get("host") is not host:
            self._slot.clear()  # the previous layer's device copy is freed before the next one is made
            self._slot.update(host=host, device=_moved(host, self.devices[index]))
        return self._slot["device"]

    def on_host(self) -> list[SublayerTrace]:
        """The host copies, no device copy made."""
        return list(self.host)


def check_store(store: str, name: str = "store", allow_auto: bool = False) -> None:
    """``ValueError`` naming ``name`` and the choices unless ``store`` is one of :data:`TRACE_STORES` (or ``"auto"``,
    with ``allow_auto``: the device, else the host when the device-kept trace does not fit)."""
    choices = (*TRACE_STORES, "auto") if allow_auto else TRACE_STORES
    if store not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {store!r}")


def as_stored(layers: list[SublayerTrace] | HostLayers) -> list[SublayerTrace]:
    """The sublayers where the trace keeps them, no copy made: for reading types, shapes and small parameters
    (iterating :class:`HostLayers` copies every layer to its device)."""
    return layers.on_host() if isinstance(layers, HostLayers) else list(layers)


def to_host(layer: SublayerTrace) -> SublayerTrace:
    """``layer`` with its tensors copied into pinned host memory (plain host memory without CUDA), so that copies
    back to the GPU run at full bandwidth."""
    return _moved(layer, torch.device("cpu"), pin=torch.cuda.is_available())


def _moved(value: Any, device: torch.device, pin: bool = False) -> Any:
    """``value`` with its tensors on ``device`` (``pin``: a host copy in pinned memory): through trace dataclasses,
    lists, tuples and :class:`HostLayers` (whose layers all go to ``device``); other values as is."""
    if isinstance(value, Tensor):
        if pin and value.device.type != "cpu":
            return torch.empty_like(value, device="cpu", pin_memory=True).copy_(value)
        return value.to(device)
    if isinstance(value, HostLayers):
        return [_moved(layer, device, pin) for layer in value.on_host()]
    if is_dataclass(value) and not isinstance(value, type):
        return type(value)(**{f.name: _moved(getattr(value, f.name), device, pin) for f in fields(value)})
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device, pin) for v in value)
    return value


def parameter_versions(model: torch.nn.Module) -> tuple[tuple[weakref.ref, int], ...]:
    """:attr:`ModelTrace.source` of ``model``: every parameter (weakly) with its in-place version counter.

    Raises:
        ValueError: parameters made under ``torch.inference_mode()`` (inference tensors keep no version counter, so a
            trace could not tell an in-place edit of the model).
    """
    params = list(model.parameters())
    if any(p.is_inference() for p in params):
        raise ValueError(
            f"{type(model).__name__}'s parameters are inference tensors (the model was built or loaded under "
            "torch.inference_mode()); load it outside inference mode (torch.no_grad() is fine)"
        )
    return tuple((weakref.ref(p), p._version) for p in params)
