"""The entry points: :func:`interactions` for maps, :func:`contributions` for raw vectors, :func:`trace` to reuse
one forward pass, :func:`reconstruction_error` for the decomposition error (paper Table 5).

Every function accepts a supported model (see :func:`latim_captum.adapters.get_adapter`) with ``input_ids`` or
``inputs_embeds``, or a :class:`~latim_captum.traces.ModelTrace` from :func:`trace` in place of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._precision import fp32_math
from ._validation import check_layers, check_method, check_model_inputs, check_rows, check_target
from .activations import check_activation
from .adapters import ModelAdapter, get_adapter
from .aggregate import alti_logit_combine, alti_scores, fold_embedding_columns, logit_scores, lp_order, lp_scores
from .decompose import iter_row_blocks, sublayer_block_rows, sublayer_contributions, sublayer_shares
from .traces import LayerTrace, ModelTrace, SublayerTrace, has_embedding_columns

__all__ = [
    "METHODS",
    "BACKENDS",
    "AltiLogit",
    "trace",
    "interactions",
    "contributions",
    "layer_maps",
    "layer_maps_ref",
    "alti_logit",
    "reconstruction_error",
]

METHODS: tuple[str, ...] = ("l1", "l2", "alti", "alti_logit")
#: LaTIM's paths: ``"ref"`` (readable reference), ``"fast"`` (PyTorch tiles, :mod:`latim_captum.fast`), ``"triton"``
#: (the Triton kernels of :mod:`latim_captum.triton_tile`, CUDA), ``"auto"`` (fast on CUDA, ref elsewhere)
BACKENDS: tuple[str, ...] = ("auto", "ref", "fast", "triton")
_COMPUTE_DTYPES = (torch.float32, torch.float64)


def trace(
    model: nn.Module | ModelAdapter,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> ModelTrace:
    """Run ``model`` once and record every layer's LaTIM quantities in ``dtype``.

    Example:
        >>> tr = trace(model, input_ids)                       # doctest: +SKIP
        >>> interactions(tr, method="alti")                    # no second forward pass  # doctest: +SKIP
    """
    if isinstance(model, ModelTrace):
        raise TypeError("trace() takes a model, and this is already a ModelTrace")
    adapter = get_adapter(model)
    if dtype not in _COMPUTE_DTYPES:
        raise TypeError(f"compute dtype must be torch.float32 or torch.float64, got {dtype}")
    input_ids, inputs_embeds, attention_mask = check_model_inputs(adapter, input_ids, inputs_embeds, attention_mask)
    return adapter.trace(input_ids, inputs_embeds, attention_mask, dtype=dtype)


def _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype) -> ModelTrace:
    if isinstance(model, ModelTrace):
        if input_ids is not None or inputs_embeds is not None or attention_mask is not None:
            raise ValueError("pass inputs with a model, not with a ModelTrace (it already holds them)")
        return model
    return trace(model, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=dtype)


def _check_activation(activation: str, tr: ModelTrace) -> None:
    # hybrids may start with an attention sublayer: check against the Mamba layers' activation
    check_activation(activation, tr.activation or "silu")


def layer_maps_ref(
    layer: SublayerTrace,
    activation: str,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block_rows: int | None = None,
    embedding_columns: bool = False,
    rows: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Several ``[B, N, N]`` maps of one sublayer from a single pass over row blocks of ``T_i(x_j)``: the reference.

    A Zamba2 hybrid layer (:class:`~latim_captum.traces.SharedBlockTrace`) has two contribution vectors per source
    token k, from its stream ``x_k`` and from its embedding ``e_k``. By default its maps are per token: ℓp of the
    token's total vector ``T_i(x_k) + T_i(e_k)``; ALTI and logit add the token's two columns (ALTI's proximities are
    normalised jointly over all ``2N`` vectors, so rows still sum to 1; Δ is linear, so both readings agree). With
    ``embedding_columns=True`` its maps keep both, ``[B, N, 2N]`` (stream columns, then embedding columns: what
    the rollout of ALTI-Logit needs); other sublayers are unaffected.

    Args:
        layer: the sublayer trace (Mamba, attention, MLP/MoE, parallel or shared-block).
        activation: activation strategy for Mamba layers (see :mod:`latim_captum.activations`).
        measures: any of ``"l1"``, ``"l2"`` (any ``"l<p>"``, ``"linf"``), ``"alti"``, ``"logit"`` (eq 7's Δ, needs
            ``projection``).
        projection: ``u_i`` per position, ``[B, N, D]`` (for ``"logit"``).
        block_rows: query rows per block (default: from a fixed memory budget).
        embedding_columns: keep the embedding columns of a sublayer that has them.
        rows: only query rows ``[start, stop)``: the maps are then ``[B, stop − start, N]``.
    """
    first, last = check_rows(rows, layer.residual.shape[1])
    with fp32_math():
        return _layer_maps_ref(layer, activation, measures, projection, block_rows, embedding_columns, first, last)


def _layer_maps_ref(
    layer, activation, measures, projection, block_rows, embedding_columns, first, last
) -> dict[str, Tensor]:
    bsz, n, _ = layer.residual.shape
    cols = 2 * n if embedding_columns and has_embedding_columns(layer) else n
    shares = sublayer_shares(layer, activation)
    out = {m: layer.residual.new_zeros(bsz, last - first, cols) for m in measures}
    output = layer.block_output
    for start, stop in iter_row_blocks(last - first, block_rows or sublayer_block_rows(layer)):
        start, stop = first + start, first + stop
        o0, o1 = start - first, stop - first
        contrib = sublayer_contributions(layer, activation, start, stop, shares=shares)
        for m in measures:
            if lp_order(m) is not None:
                vectors = contrib if cols == contrib.shape[2] else fold_embedding_columns(contrib, n, dim=2)
                out[m][:, o0:o1] = lp_scores(vectors, p=lp_order(m))
                continue
            if m == "alti":
                scores = alti_scores(contrib, layer.residual[:, start:stop], output[:, start:stop], start)
            elif m == "logit":
                if projection is None:
                    raise ValueError("measure 'logit' needs a projection")
                scores = logit_scores(contrib, projection[:, start:stop])
            else:
                raise ValueError(f"unknown measure {m!r}")
            out[m][:, o0:o1] = scores if cols == scores.shape[-1] else fold_embedding_columns(scores, n)
    return out


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` naming ``backend`` unless it is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` means the tiled fast path on CUDA and the reference path elsewhere."""
    check_backend(backend)
    if backend == "auto":
        return "fast" if device.type == "cuda" else "ref"
    return backend


def check_precision(precision: str, backend: str, device: torch.device) -> None:
    """``ValueError`` for an unknown ``precision``, or a reduced one on a path that computes in the compute dtype."""
    from .fast import check_precision_name

    check_precision_name(precision)
    if precision != "highest" and resolve_backend(backend, device) == "ref":
        raise ValueError(
            f"precision={precision!r} sets the W_o product of backend='fast' or 'triton'; backend={backend!r} "
            f"takes the reference path on {device.type}, which computes in the compute dtype only"
        )


def layer_maps(
    layer: SublayerTrace,
    activation: str,
    measures: Sequence[str],
    *,
    projection: Tensor | None = None,
    block_rows: int | None = None,
    backend: str = "auto",
    embedding_columns: bool = False,
    precision: str = "highest",
    rows: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Several ``[B, N, N]`` maps of one layer (see :func:`layer_maps_ref` for the measures and
    ``embedding_columns``) on any backend (:data:`BACKENDS`); the same values up to rounding.

    The tiled paths (``"fast"``, ``"triton"``: :func:`latim_captum.fast.layer_maps_fast` with ``kernel="torch"`` or
    ``"triton"``) cover Mamba layers; attention, token-wise, parallel and shared-block (Zamba2 hybrid) sublayers
    always take the reference, whatever ``backend`` says. ``precision`` (``"highest"``, ``"tf32"``, ``"bf16"``) is
    that of the tiled paths' ``W_o`` product; ``rows=(start, stop)`` keeps query rows ``[start, stop)`` only, in
    ``[B, stop − start, N]`` maps (memory O(rows·N)).

    Example:
        >>> maps = layer_maps(tr.layers[0], "silu", ("l2", "alti"))                             # doctest: +SKIP
        >>> maps = layer_maps(tr.layers[0], "silu", ("alti",), backend="triton", precision="tf32")  # doctest: +SKIP
    """
    resolved = resolve_backend(backend, layer.residual.device)
    check_precision(precision, backend, layer.residual.device)
    if isinstance(layer, LayerTrace) and resolved in ("fast", "triton"):
        from .fast import layer_maps_fast

        return layer_maps_fast(
            layer,
            activation,
            measures,
            projection=projection,
            block=block_rows,
            precision=precision,
            rows=rows,
            kernel="triton" if resolved == "triton" else "torch",
        )
    return layer_maps_ref(
        layer,
        activation,
        measures,
        projection=projection,
        block_rows=block_rows,
        embedding_columns=embedding_columns,
        rows=rows,
    )


class AltiLogit(NamedTuple):
    """ALTI-Logit maps with what their rows must sum to.

    Attributes:
        scores: ``C_ij`` (eq 8), ``[B, N, N]``.
        targets: the token ``w(i)`` each row explains, ``[B, N]``.
        logits: the model's logit of ``w(i)`` at i (recomputed in the compute dtype), ``[B, N]``.
        offset: the part of that logit no token owns (projected out-projection biases and the LM-head bias),
            ``[B, N]``. For an exact decomposition ``scores.sum(-1) == logits - offset``.
    """

    scores: Tensor
    targets: Tensor
    logits: Tensor
    offset: Tensor


def alti_logit(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    activation: str = "silu",
    attention_mask: Tensor | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> AltiLogit:
    """ALTI-Logit (eqs 7-8) over all layers, with the logits and offsets its rows sum to.

    ``C_ij = u_i · x_i^{(0)} δ_ij + Σ_l Σ_k (T^{(l)}_i(x_k) · u_i) R^{(l-1)}_{kj}``, with
    ``u_i = U_{w(i)} ⊙ w_f · s_i`` (the unembedding row of the target through the final RMSNorm's fixed scale)
    and ``R`` the ALTI rollout of the residual stream. ``target`` defaults to the model's predicted next token at
    each position. A sublayer that reads the input embeddings (Zamba2's hybrid layers) adds
    ``Δ^x R^{(l-1)} + Δ^e``: its embedding contributions belong to the input tokens directly (see
    :func:`latim_captum.aggregate.alti_logit_combine`).

    Example:
        >>> res = alti_logit(model, input_ids, activation="silu_gate")           # doctest: +SKIP
        >>> torch.allclose(res.scores.sum(-1), res.logits - res.offset)          # doctest: +SKIP
        True
    """
    check_backend(backend)
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype)
    _check_activation(activation, tr)
    check_precision(precision, backend, tr.embeddings.device)
    readout = tr.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    bsz, n = tr.shape
    targets = check_target(target, bsz, n, readout.unembedding.shape[0], readout.logits.argmax(-1))
    projection = readout.projection(targets)  # [B, N, D]
    deltas, alti_maps = [], []
    offset = readout.target_bias(targets)
    for layer in tr.layers:
        maps = layer_maps(
            layer,
            activation,
            ("alti", "logit"),
            projection=projection,
            block_rows=block_rows,
            backend=backend,
            embedding_columns=True,
            precision=precision,
        )
        deltas.append(maps["logit"])
        alti_maps.append(maps["alti"])
        offset = offset + projection @ layer.offset
    direct = (projection * tr.embeddings).sum(-1)
    scores = alti_logit_combine(deltas, alti_maps, direct)
    logits = readout.logits.gather(-1, targets[..., None])[..., 0]
    return AltiLogit(scores=scores, targets=targets, logits=logits, offset=offset)


def interactions(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    method: str = "l2",
    activation: str = "silu",
    layers: int | Sequence[int] | None = None,
    attention_mask: Tensor | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> Tensor:
    """LaTIM token-to-token maps: ``C[b, l, i, j]`` = how much token j contributes to token i at layer l.

    Args:
        model: a supported Mamba model, its adapter, or a :class:`ModelTrace`.
        input_ids: ``[B, N]`` token ids (or ``inputs_embeds``: ``[B, N, D]``).
        method: ``"l2"``/``"l1"`` (eq 5), ``"alti"`` (eq 6), ``"alti_logit"`` (eq 8, all layers aggregated).
        activation: the additive ``f`` of eq 19: ``"silu"`` (paper default), ``"identity"``, ``"taylor1"``,
            ``"taylor2"``, ``"silu_gate"`` (exact for SiLU models).
        layers: indices into ``ModelTrace.layers`` for the per-layer methods (None = all; negatives allowed):
            the residual sublayers, which are the blocks of a pure Mamba model; a hybrid's block ``b`` gives two,
            its mixer (``2b``) then its MLP/MoE (``2b + 1``); ``trace(...).kinds`` names them. Ignored by ALTI-Logit.
        attention_mask: ``[B, N]`` padding mask.
        target: ALTI-Logit target token(s): an int, ``[B]`` or ``[B, N]``; default the predicted next token.
        dtype: compute dtype (float32 or float64), whatever the model's dtype.
        block_rows: query rows per block (memory bound); default from a fixed budget (``"ref"``) or from the
            free device memory (``"fast"``, where it is the side of a square rows × columns tile).
        backend: ``"ref"`` (readable reference, materialises one row block of ``T``), ``"fast"`` (tiled, fused
            reductions, :mod:`latim_captum.fast`), ``"triton"`` (the fast path's Triton kernels, CUDA, float32;
            the fastest on a GPU, compiled and autotuned on first use) or ``"auto"`` (fast on CUDA, ref elsewhere);
            same values.
        precision: the tiled paths' ``W_o`` product: ``"highest"`` (the compute dtype), ``"tf32"`` or ``"bf16"``
            (tensor cores; ~1e-4 and ~1e-3 relative).

    Returns:
        ``[B, len(layers), N, N]`` for per-layer methods, ``[B, N, N]`` for ``"alti_logit"``; lower-triangular.

    Example:
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> maps = interactions(model, torch.tensor([[1, 5, 7, 2]]), method="alti")
        >>> maps.shape
        torch.Size([1, 2, 4, 4])
    """
    check_method(method, METHODS)
    check_backend(backend)
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype)
    _check_activation(activation, tr)
    check_precision(precision, backend, tr.embeddings.device)
    if method == "alti_logit":
        return alti_logit(
            tr, activation=activation, target=target, block_rows=block_rows, backend=backend, precision=precision
        ).scores
    selected = check_layers(layers, tr.n_layers)
    bsz, n = tr.shape
    # filled layer by layer: no second copy of the [B, L, N, N] result (torch.stack would double the peak)
    result = tr.embeddings.new_zeros(bsz, len(selected), n, n)
    for pos, idx in enumerate(selected):
        maps = layer_maps(
            tr.layers[idx], activation, (method,), block_rows=block_rows, backend=backend, precision=precision
        )
        result[:, pos] = maps[method]
    return result


def contributions(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    layer: int,
    activation: str = "silu",
    attention_mask: Tensor | None = None,
    include_residual: bool = False,
    dtype: torch.dtype = torch.float32,
    embedding_columns: bool = False,
) -> Tensor:
    """Raw contribution vectors ``T_i(x_j)`` of one layer (eqs 22 / 25), ``[B, N, N, D]``: for short inputs.

    With ``include_residual=True`` the residual ``x_i`` is added to ``T_i(x_i)`` (ALTI's ``T'``), so for an exact
    strategy ``Σ_j T'_i(x_j) + b_o`` is the block output. For a Zamba2 hybrid layer the vector of token j is
    ``T_i(x_j) + T_i(e_j)`` (its stream and its embedding); ``embedding_columns=True`` keeps them apart,
    ``[B, N, 2N, D]`` (stream columns, then embedding columns).

    Example:
        >>> t = contributions(model, ids, layer=0, activation="silu_gate")      # doctest: +SKIP
        >>> t.sum(2)  # ≈ the mixer output of layer 0 (minus its bias)          # doctest: +SKIP
    """
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be one int index, got {layer!r}")
    (idx,) = check_layers(layer, tr.n_layers)
    layer_trace = tr.layers[idx]
    out = sublayer_contributions(layer_trace, activation)
    if not embedding_columns:
        out = fold_embedding_columns(out, layer_trace.residual.shape[1], dim=2)
    if include_residual:
        n = out.shape[1]
        pos = torch.arange(n, device=out.device)
        out[:, pos, pos] += layer_trace.residual
    return out


def reconstruction_error(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    activation: str = "silu",
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Relative decomposition error per layer (the paper's Table 5 / Figure 4 metric), ``[n_layers]``.

    ``err_l = ‖Σ_j T_i(x_j) + b_o − mixer(h)_i‖_F / ‖mixer(h)_i‖_F`` over every non-padded token i of the batch:
    0 for exact strategies (up to rounding), positive for approximations.

    Example:
        >>> reconstruction_error(model, ids, activation="silu")      # doctest: +SKIP
        tensor([0.0912, 0.1377])
    """
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype)
    errors = []
    for layer in tr.layers:
        shares = sublayer_shares(layer, activation)
        n = layer.residual.shape[1]
        summed = torch.cat(
            [
                sublayer_contributions(layer, activation, start, stop, shares=shares).sum(2)
                for start, stop in iter_row_blocks(n, sublayer_block_rows(layer))
            ],
            dim=1,
        )
        estimate = summed + layer.offset
        reference = layer.mixer_output
        if layer.mask is not None:
            keep = layer.mask.bool()
            estimate, reference = estimate[keep], reference[keep]
        errors.append((estimate - reference).norm() / reference.norm().clamp_min(torch.finfo(reference.dtype).tiny))
    return torch.stack(errors)
