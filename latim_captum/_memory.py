"""The memory guard of the functions that take a model: a request's sizes from the model's modules (or a trace) and
the input's shape, checked by the engine (:mod:`latim_captum.maps.memory`) before the forward pass.

Example:
    >>> guard_memory("interactions", model, ids, None, layers=None)       # doctest: +SKIP
    LatimMemoryError: interactions needs about 2.0 GiB (result [1, 2, 16384, 16384] 2.0 GiB, ...), more than ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._validation import check_layers
from .adapters import ModelAdapter, get_adapter
from .maps.memory import Estimate, RequestSizes, check_fits, estimate, host_trace_bytes
from .maps.options import LatimMemoryError
from .ssm import d_inner_of
from .traces import AttentionTrace, LayerTrace, Mamba1SSM, ModelTrace, as_stored

__all__ = ["guard_memory", "forward_memory_error", "ADVICE"]

_ROWS = (
    "one query row in O(N·d) memory (latim_captum.alti_logit_row / alti_rollout_row, or a Captum class's "
    "attribute(position=...))"
)
#: what to do, per front end, when a request does not fit
#: the front ends whose result holds one map per selected layer
PER_LAYER = ("interactions", "captum_rows", "alti_logit_layers")
ADVICE = {
    "trace": "use a shorter input or a smaller batch",
    "interactions": f"ask for fewer layers (layers=[...]), for row ranges of one layer (latim_captum.layer_maps(..., "
    f"rows=(start, stop))), {_ROWS}, smaller row blocks (block_rows=), a smaller batch or a shorter input",
    "captum_rows": "ask for fewer layers (layer=...), a smaller batch or a shorter input",
    "alti_logit": f"ask for {_ROWS}, smaller row blocks (block_rows=), a smaller batch or a shorter input",
    "alti_logit_layers": "ask for fewer layers (layers=[...]), smaller row blocks (block_rows=), a smaller batch or a "
    "shorter input",
    "alti_rollout": f"ask for {_ROWS}, smaller row blocks (block_rows=), a smaller batch or a shorter input",
    "contributions": "contribution vectors hold [B, N, N, D]: reduce them as they are made (latim_captum.interactions "
    "or layer_maps), a smaller batch or a shorter input",
}


def _input_shape(input_ids: Tensor | None, inputs_embeds: Tensor | None) -> tuple[int, int] | None:
    """``(B, N)`` of well-formed inputs; None otherwise (the input checks then say what is wrong)."""
    x = input_ids if inputs_embeds is None else inputs_embeds
    if (input_ids is None) == (inputs_embeds is None) or not isinstance(x, Tensor) or x.dim() < 2 or x.numel() == 0:
        return None
    return int(x.shape[0]), int(x.shape[1])


def _trace_sizes(tr: ModelTrace) -> RequestSizes:
    bsz, n = tr.shape
    layers = as_stored(tr.layers)
    mamba = [layer for layer in layers if isinstance(layer, LayerTrace)]
    d_inner = max((d_inner_of(layer.ssm) for layer in mamba), default=tr.embeddings.shape[-1])
    state = max((layer.ssm.A.shape[-1] for layer in mamba if isinstance(layer.ssm, Mamba1SSM)), default=1)
    heads = sum(layer.weights.shape[1] for layer in layers if isinstance(layer, AttentionTrace))
    return RequestSizes(
        batch=bsz,
        seq=n,
        sublayers=tr.n_layers,
        d_model=tr.embeddings.shape[-1],
        d_inner=d_inner,
        state=state,
        vocab=0,
        attention_heads=heads,
        itemsize=tr.embeddings.element_size(),
    )


def guard_memory(
    front_end: str,
    model: nn.Module | ModelAdapter | ModelTrace,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    *,
    layers: int | Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    block_rows: int | None = None,
    backend: str = "auto",
    embedding_columns: bool = False,
    maps: int | None = None,
    trace_store: str = "device",
) -> None:
    """``LatimMemoryError`` before anything is allocated when ``front_end``'s request (see
    :func:`latim_captum.maps.memory.estimate`) does not fit in the free memory of the model's device.

    ``layers`` selects the per-layer maps of ``"interactions"`` / ``"captum_rows"``; ``maps`` gives their number
    instead (a Captum class's row of an aggregated map: 1). ``trace_store="host"``: the trace's layers go to host
    memory (checked there), one at a time on the device. Malformed arguments pass through unchecked here: the
    argument checks that follow name them.
    """
    if not isinstance(dtype, torch.dtype):
        return  # the dtype check that follows names it
    if isinstance(model, ModelTrace):
        sizes, with_trace, device = _trace_sizes(model), False, model.embeddings.device
    else:
        shape = _input_shape(input_ids, inputs_embeds)
        if shape is None or not isinstance(model, (nn.Module, ModelAdapter)):
            return
        adapter = get_adapter(model)
        widths = adapter.sizes()
        itemsize = torch.empty((), dtype=dtype).element_size() if dtype.is_floating_point else 4
        sizes = RequestSizes(
            batch=shape[0], seq=shape[1], itemsize=itemsize, model_itemsize=adapter.model_dtype.itemsize, **widths
        )
        with_trace, device = True, adapter.device
    if maps is not None:
        n_layers = maps
    else:
        n_layers = len(check_layers(layers, sizes.sublayers)) if front_end in PER_LAYER else 1
    need = estimate(
        front_end,
        sizes,
        layers=n_layers,
        with_trace=with_trace,
        block_rows=block_rows if isinstance(block_rows, int) and block_rows > 0 else None,
        backend=backend if isinstance(backend, str) else "auto",
        device=device,
        embedding_columns=embedding_columns,
        trace_on_host=with_trace and trace_store == "host",
    )
    what = front_end if front_end != "captum_rows" else "this Captum attribution"
    if with_trace and trace_store == "host":
        host = Estimate(trace=host_trace_bytes(sizes))
        check_fits(host, torch.device("cpu"), f"{what}'s host copy of the trace", ADVICE["trace"])
    advice = ADVICE[front_end]
    if front_end == "trace" and trace_store == "device":
        advice += ", or keep it in host memory (trace(..., store='host'), alti_logit_row(..., trace_store='host'))"
    check_fits(need, device, what, advice)


def forward_memory_error(
    adapter: ModelAdapter, input_ids: Tensor | None, inputs_embeds: Tensor | None
) -> LatimMemoryError:
    """The error for a model whose *own* forward pass ran out of memory, before LaTIM computed anything: one sentence
    with the fix. Without mamba-ssm, Hugging Face's PyTorch fallback of the Mamba scan holds far more than the
    kernels do (Mamba-2's chunked scan: tens of GiB at N = 16384), so on CUDA the first fix is the ``mamba`` extra.

    Example:
        >>> raise forward_memory_error(adapter, ids, None) from err                     # doctest: +SKIP
        LatimMemoryError: the model's own forward pass ran out of memory on cuda:0 for a [1, 16384] input, ...
    """
    import importlib.util

    shape = _input_shape(input_ids, inputs_embeds)
    what = f"a [{shape[0]}, {shape[1]}] input" if shape else "this input"
    device = adapter.device
    fix = "use a shorter input or a smaller batch"
    if device.type == "cuda" and importlib.util.find_spec("mamba_ssm") is None:
        fix = (
            "install the mamba extra (pip install 'latim-captum[mamba]': mamba-ssm's kernels; without them Hugging "
            f"Face runs a PyTorch scan that holds far more), or {fix}"
        )
    return LatimMemoryError(
        f"the model's own forward pass ran out of memory on {device} for {what}, before LaTIM computed anything: {fix}"
    )
