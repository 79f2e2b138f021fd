"""The entry points: :func:`interactions` for maps, :func:`alti_logit` and :func:`alti_rollout` over all layers
(:func:`alti_logit_layers` for eq 8's terms layer by layer),
:func:`contributions` for raw vectors, :func:`trace` to reuse one forward pass, :func:`reconstruction_error` for the
decomposition error (paper Table 5). The engine behind them is :mod:`latim_captum.maps`.

Every function accepts a supported model (see :func:`latim_captum.adapters.get_adapter`) with ``input_ids`` or
``inputs_embeds``, or a :class:`~latim_captum.traces.ModelTrace` from :func:`trace` in place of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._memory import forward_memory_error, guard_memory
from ._validation import (
    check_compute_dtype,
    check_layers,
    check_method,
    check_model_inputs,
    check_size,
    check_target,
)
from .activations import DEFAULT_ACTIVATION, check_activation
from .adapters import ModelAdapter, get_adapter
from .aggregate import fold_embedding_columns
from .catalog import latim_methods
from .decompose import sublayer_contributions
from .maps import AltiLogit, AltiLogitLayers, LatimMemoryError, check_backend, check_precision
from .maps import alti_logit as _alti_logit_maps
from .maps import alti_logit_layers as _alti_logit_layer_maps
from .maps import alti_rollout as _alti_rollout_maps
from .maps import stack as _stack
from .row_sums import sublayer_row_sums, sublayer_row_sums_ref
from .traces import ModelTrace, check_store

__all__ = [
    "METHODS",
    "trace",
    "interactions",
    "contributions",
    "alti_logit",
    "alti_logit_layers",
    "alti_rollout",
    "reconstruction_error",
    "reconstruction_error_terms",
]

#: the ``method`` names of :func:`interactions`: the LaTIM entries of the method table
METHODS: tuple[str, ...] = tuple(spec.measure for spec in latim_methods())


def trace(
    model: nn.Module | ModelAdapter,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    store: str = "device",
) -> ModelTrace:
    """Run ``model`` once and record every layer's LaTIM quantities in ``dtype``.

    ``store="host"`` moves each layer's trace to (pinned) host memory as soon as it is made; the engine then copies
    one layer at a time back to the device that computed it (:class:`~latim_captum.traces.HostLayers`), so a trace
    larger than the GPU (long inputs: 84 GiB for mamba-130m at N = 131072) still runs, e.g. the single-query
    :func:`~latim_captum.alti_logit_row`, whose memory beyond the trace is O(N·d). ``store="auto"``: on the device,
    or on the host when the memory guard says the device-kept trace does not fit (the trace's ``store`` says which).

    Example:
        >>> tr = trace(model, input_ids)                       # doctest: +SKIP
        >>> interactions(tr, method="alti")                    # no second forward pass  # doctest: +SKIP
        >>> long = trace(model.cuda(), long_ids.cuda(), store="host")   # doctest: +SKIP
    """
    if isinstance(model, ModelTrace):
        raise TypeError("trace() takes a model, and this is already a ModelTrace")
    adapter = get_adapter(model)
    check_compute_dtype(dtype)
    check_store(store, "store", allow_auto=True)
    if store == "auto":
        try:
            return trace(model, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=dtype, store="device")
        except LatimMemoryError:  # refused before anything was allocated
            return trace(model, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=dtype, store="host")
    guard_memory("trace", adapter, input_ids, inputs_embeds, dtype=dtype, trace_store=store)
    input_ids, inputs_embeds, attention_mask = check_model_inputs(adapter, input_ids, inputs_embeds, attention_mask)
    try:
        return adapter.trace(input_ids, inputs_embeds, attention_mask, dtype=dtype, store=store)
    except torch.OutOfMemoryError as err:  # the model's own forward (the guard sized LaTIM's part, not the model's)
        raise forward_memory_error(adapter, input_ids, inputs_embeds) from err


def _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype, store: str = "device") -> ModelTrace:
    if isinstance(model, ModelTrace):
        if input_ids is not None or inputs_embeds is not None or attention_mask is not None:
            raise ValueError("pass inputs with a model, not with a ModelTrace (it already holds them)")
        model.check_current()
        # how to make a trace cannot change a finished one: a request it does not already meet is refused
        if dtype == torch.float64 and model.dtype != torch.float64:
            raise ValueError(f"dtype=torch.float64 asked for, but this ModelTrace was made in {model.dtype}; trace "
                             "the model again with trace(..., dtype=torch.float64)")  # fmt: skip
        if store == "host" and model.store != "host":
            raise ValueError("trace_store='host' asked for, but this ModelTrace keeps its layers on the device; "
                             "trace the model again with trace(..., store='host')")  # fmt: skip
        return model
    return trace(model, input_ids, inputs_embeds, attention_mask=attention_mask, dtype=dtype, store=store)


def _check_activation(activation: str, tr: ModelTrace) -> None:
    # hybrids may start with an attention sublayer: check against the Mamba layers' activation
    check_activation(activation, tr.activation or "silu")


def _checked_trace(
    model,
    input_ids,
    inputs_embeds,
    attention_mask,
    dtype,
    activation: str,
    backend: str,
    precision: str,
    store: str = "device",
) -> ModelTrace:
    """The trace of a call (made here from a model, kept on the device or the host per ``store``; ``"auto"``: on
    the device, or on the host when the memory guard says the device-kept trace does not fit), with ``activation``,
    ``backend`` and ``precision`` checked."""
    check_backend(backend)
    check_store(store, "trace_store", allow_auto=True)
    # with a finished trace, "auto" asks for nothing it must already meet
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype, store)
    _check_activation(activation, tr)
    check_precision(precision, backend, tr.embeddings.device, tr.dtype)
    return tr


def alti_logit(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    contrast: int | Sequence[int] | Tensor | None = None,
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
    :func:`latim_captum.maps.all_layers.alti_logit`).

    Contrastive: with ``contrast`` (a token id, ``[B]`` or ``[B, N]``, forms as ``target``) each row decomposes the
    logit difference ``logit(target) − logit(contrast)`` at its position: the logit is linear in the unembedding row,
    so ``u_i = (U_{w(i)} − U_{c(i)}) ⊙ w_f · s_i`` and the rows sum to the difference (``res.logits``) minus the
    offset, exactly as the plain rows sum to the logit.

    Example:
        >>> res = alti_logit(model, input_ids)                                     # doctest: +SKIP
        >>> torch.allclose(res.scores.sum(-1), res.logits - res.offset)          # doctest: +SKIP
        True
        >>> diff = alti_logit(model, input_ids, target=7, contrast=3)           # logit(7) − logit(3)  # doctest: +SKIP
    """
    check_size("block_rows", block_rows)
    guard_memory("alti_logit", model, input_ids, inputs_embeds, dtype=dtype, block_rows=block_rows, backend=backend)
    tr = _checked_trace(model, input_ids, inputs_embeds, attention_mask, dtype, activation, backend, precision)
    targets, contrast = _logit_targets(tr, target, contrast)
    return _alti_logit_maps(
        tr, targets, contrast=contrast, activation=activation, block_rows=block_rows, backend=backend,
        precision=precision,
    )  # fmt: skip


def _logit_targets(tr: ModelTrace, target, contrast) -> tuple[Tensor, Tensor | None]:
    """``[B, N]`` target ids (default: the predicted next token) and contrast ids (or None), checked."""
    readout = tr.readout
    if readout is None:
        raise ValueError("ALTI-Logit needs a model with an LM head (e.g. MambaForCausalLM, not MambaModel)")
    bsz, n = tr.shape
    vocab = readout.unembedding.shape[0]
    targets = check_target(target, bsz, n, vocab, readout.logits.argmax(-1))
    return targets, None if contrast is None else check_target(contrast, bsz, n, vocab, targets, name="contrast")


def alti_logit_layers(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    layers: int | Sequence[int] | None = None,
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    target: int | Sequence[int] | Tensor | None = None,
    contrast: int | Sequence[int] | Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> AltiLogitLayers:
    """Per-layer ALTI-Logit: eq 8's term of each layer apart, ``C^{(l)} = Δ^{(l)} R^{(l-1)}``, ``[B, L, N, N]``.

    ``C^{(l)}_ij = Σ_k (T^{(l)}_i(x_k) · u_i) R^{(l-1)}_{kj}``: how much input token j adds to the target logit at
    i *through layer l* (carried to layer l by the ALTI rollout of the layers below). Row i of layer l sums to
    ``u_i · (mixer_output^{(l)}_i − offset^{(l)})`` (``res.layer_totals``) for an exact strategy, and eq 8 is their
    sum plus the embedding term: ``alti_logit(...).scores == diag(res.embedding) + res.scores.sum(1)`` over all
    layers. ``layers`` selects (all are computed: the rollout needs those below); other arguments as
    :func:`alti_logit`.

    Example:
        >>> res = alti_logit_layers(model, input_ids, layers=[-1])                  # doctest: +SKIP
        >>> torch.allclose(res.scores.sum(-1), res.layer_totals, atol=1e-4)       # doctest: +SKIP
        True
    """
    check_size("block_rows", block_rows)
    guard_memory("alti_logit_layers", model, input_ids, inputs_embeds, layers=layers, dtype=dtype,
                 block_rows=block_rows, backend=backend)  # fmt: skip
    tr = _checked_trace(model, input_ids, inputs_embeds, attention_mask, dtype, activation, backend, precision)
    targets, contrast = _logit_targets(tr, target, contrast)
    return _alti_logit_layer_maps(
        tr, targets, contrast=contrast, layers=layers, activation=activation, block_rows=block_rows,
        backend=backend, precision=precision,
    )  # fmt: skip


def alti_rollout(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    precision: str = "highest",
) -> Tensor:
    """The ALTI rollout over all layers, ``R^{(L)} = P^{(L)} ⋯ P^{(1)}`` with ``P^{(l)}`` the ALTI map (eq 6) of
    layer l, ``[B, N, N]``.

    Row i says how much of the last layer's representation at i comes from each input token; rows sum to 1. Each
    layer's map is folded in as it is made (memory: two ``[B, N, N]`` maps beyond the trace). One row alone:
    :func:`latim_captum.alti_rollout_row`. Arguments as :func:`interactions`.

    Example:
        >>> r = alti_rollout(model, ids, activation="silu_gate")        # doctest: +SKIP
        >>> torch.allclose(r.sum(-1), torch.ones(1, ids.shape[1]))       # doctest: +SKIP
        True
    """
    check_size("block_rows", block_rows)
    guard_memory("alti_rollout", model, input_ids, inputs_embeds, dtype=dtype, block_rows=block_rows, backend=backend)
    tr = _checked_trace(model, input_ids, inputs_embeds, attention_mask, dtype, activation, backend, precision)
    return _alti_rollout_maps(tr, activation=activation, block_rows=block_rows, backend=backend, precision=precision)


def interactions(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    method: str = "l2",
    activation: str = DEFAULT_ACTIVATION,
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
        method: ``"l2"``/``"l1"`` (eq 5), ``"alti"`` (eq 6), ``"alti_no_residual"`` (eq 6 with the residual left
            out of the proximities), ``"alti_logit"`` (eq 8, all layers aggregated), ``"alti_logit_layers"`` (eq 8's
            term of each layer, :func:`alti_logit_layers`).
        activation: the additive ``f`` of eq 19: ``"silu_gate"`` (the default, exact for SiLU models),
            ``"silu"`` (the paper's approximation), ``"identity"`` (exact without an activation), ``"taylor1"``,
            ``"taylor2"``.
        layers: indices into ``ModelTrace.layers`` for the per-layer methods (None = all; negatives allowed):
            the residual sublayers, which are the blocks of a pure Mamba model; a hybrid's block ``b`` gives two,
            its mixer (``2b``) then its MLP/MoE (``2b + 1``); ``trace(...).kinds`` names them. An error with
            ``"alti_logit"``, which aggregates every layer.
        attention_mask: ``[B, N]`` padding mask.
        target: ALTI-Logit's target token(s) (both forms): an int, ``[B]`` or ``[B, N]``; default the predicted
            next token.
        dtype: compute dtype (float32 or float64), whatever the model's dtype. A :class:`ModelTrace` computes in its
            own dtype: a float64 request for a float32 trace is refused (it cannot be met); a float64 trace with the
            default float32 gives float64 maps.
        block_rows: query rows per block (memory bound); default from a fixed budget (``"ref"``) or from the
            free device memory (``"fast"``, where it is the side of a square rows × columns tile).
        backend: ``"ref"`` (readable reference, materialises one row block of ``T``), ``"fast"`` (tiled, fused
            reductions, :mod:`latim_captum.maps.fast`), ``"triton"`` (the fast path's Triton kernels, CUDA, float32;
            the fastest on a GPU, compiled and autotuned on first use) or ``"auto"`` (``"fast"`` on every device: the
            fastest path measured on a CPU too); same values.
        precision: the tiled paths' ``W_o`` product: ``"highest"`` (the compute dtype), ``"tf32"`` or ``"bf16"``
            (tensor cores; ~1e-4 and ~1e-3 relative).

    Returns:
        ``[B, len(layers), N, N]`` for per-layer methods, ``[B, N, N]`` for ``"alti_logit"``; lower-triangular.

    Raises:
        ValueError: ``target`` given to a method that reads none (ℓp, ALTI), ``layers`` given to ``"alti_logit"``,
            or an unknown method.

    Example:
        >>> from transformers import MambaConfig, MambaForCausalLM
        >>> model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=50))
        >>> maps = interactions(model, torch.tensor([[1, 5, 7, 2]]), method="alti")
        >>> maps.shape
        torch.Size([1, 2, 4, 4])
    """
    check_method(method, METHODS)
    check_size("block_rows", block_rows)
    front_end = method if method in ("alti_logit", "alti_logit_layers") else "interactions"
    if method == "alti_logit" and layers is not None:
        raise ValueError("method 'alti_logit' aggregates every layer, so layers= would change nothing; use "
                         "'alti_logit_layers' for eq 8's term of each layer")  # fmt: skip
    selected = None if method == "alti_logit" else layers
    guard_memory(front_end, model, input_ids, inputs_embeds, layers=selected, dtype=dtype, block_rows=block_rows,
                 backend=backend)  # fmt: skip
    tr = _checked_trace(model, input_ids, inputs_embeds, attention_mask, dtype, activation, backend, precision)
    path = {"activation": activation, "block_rows": block_rows, "backend": backend, "precision": precision}
    if method == "alti_logit":
        return alti_logit(tr, target=target, **path).scores
    if method == "alti_logit_layers":
        return alti_logit_layers(tr, layers=layers, target=target, **path).scores
    if target is not None:
        raise ValueError(f"method {method!r} explains no target token; target= is for ALTI-Logit")
    return _stack(
        tr, (method,), activation=activation, layers=layers, block_rows=block_rows, backend=backend,
        precision=precision,
    )[method]  # fmt: skip


def contributions(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    layer: int,
    activation: str = DEFAULT_ACTIVATION,
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
    guard_memory("contributions", model, input_ids, inputs_embeds, dtype=dtype, embedding_columns=embedding_columns)
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
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> Tensor:
    """Relative decomposition error per layer, ``[n_layers]``: our reading of the paper's Table 5 / Figure 4 metric,
    which it calls the "average difference" between the layer's output and the decomposition without saying how it is
    normalised (its magnitudes match this one's on our models; a per-token mean would read 10-30 % lower).

    ``err_l = ‖Σ_j T_i(x_j) + b_o − mixer(h)_i‖_F / ‖mixer(h)_i‖_F`` over every non-padded token i of the batch:
    0 for exact strategies (up to rounding), positive for approximations. ``Σ_j T_i(x_j)`` is the selective scan of
    the strategy's reassembled conv output (:mod:`latim_captum.row_sums`; ``O(N)`` per layer), or with
    ``backend="ref"`` the sum of the materialised contribution vectors (``O(N²)``, the oracle).

    Example:
        >>> reconstruction_error(model, ids, activation="silu")      # doctest: +SKIP
        tensor([0.0912, 0.1377])
    """
    squared_error, squared_norm = reconstruction_error_terms(
        model,
        input_ids,
        inputs_embeds,
        activation=activation,
        attention_mask=attention_mask,
        dtype=dtype,
        backend=backend,
    )
    return squared_error.sqrt() / squared_norm.sqrt().clamp_min(torch.finfo(squared_norm.dtype).tiny)


def reconstruction_error_terms(
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    *,
    activation: str = DEFAULT_ACTIVATION,
    attention_mask: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """The two sums of :func:`reconstruction_error`, ``(‖Σ_j T_i(x_j) + b_o − mixer(h)_i‖²_F, ‖mixer(h)_i‖²_F)``
    per layer (``[n_layers]`` each): add them over batches and take ``sqrt(Σ err²) / sqrt(Σ norm²)`` for the error
    of a whole dataset, whatever its batching. ``backend``: ``"ref"`` sums the materialised contribution vectors,
    any other (:data:`~latim_captum.maps.BACKENDS`) takes the scan form of :mod:`latim_captum.row_sums`.

    Example:
        >>> err2, norm2 = reconstruction_error_terms(model, ids, activation="silu")      # doctest: +SKIP
    """
    check_backend(backend)
    tr = _as_trace(model, input_ids, inputs_embeds, attention_mask, dtype)
    row_sums = sublayer_row_sums_ref if backend == "ref" else sublayer_row_sums
    squared_errors, squared_norms = [], []
    for layer in tr.layers:
        summed = row_sums(layer, activation)
        estimate = summed + layer.offset
        reference = layer.mixer_output
        if layer.mask is not None:
            keep = layer.mask.bool()
            estimate, reference = estimate[keep], reference[keep]
        squared_errors.append((estimate - reference).square().sum())
        squared_norms.append(reference.square().sum())
    return torch.stack(squared_errors), torch.stack(squared_norms)
