"""What fits on one GPU: the longest input each kind of request admits, from the memory guard's own arithmetic.

The memory guard (:mod:`latim_captum.maps.memory`) refuses a request before anything is allocated when::

    trace + max(forward pass, result + work)  >  free memory of the model's device

This module turns that inequality around. For a model (a shape is enough: a model on the meta device, or one of
``latim bench speed``'s published shapes), and for a GPU of a given size, :func:`largest_length` finds the largest
``N`` (batch 1) that the guard lets through. It searches by bisection, since every term grows with ``N``. The GPU's
memory counts the weights as well, so ``free = GPU memory − weights``; give the memory a process can have (the card's
total less the CUDA context, ~0.5 GiB, and anything else resident), since that is what the guard reads.

A hybrid's attention sublayers are estimated by reference row blocks whose row count steps down as ``N`` grows, so
at short lengths (a few thousand tokens for a 9B hybrid) its estimate is not monotone in ``N``. The length found is
admitted, but a few tokens more may be too, and a few fewer may not.

The guard's estimate counts the large allocations only, and on CUDA the tiles are sized to what is left. So the
length found is an upper bound: above it the call is refused, and at it the tiles get little room and run slowly.
One term runs the other way. The forward pass of a Mamba-1 model counts HF's PyTorch scan (``[B, d, N, R]``, three
of them), which mamba-ssm's kernels do not allocate. Where that term sets the limit, a model running on the kernels
could take somewhat longer inputs than the guard admits. Measured peaks for these shapes are in
``docs/performance.md`` ("What fits on one GPU").

Requests (:data:`REQUESTS`):

* ``maps``: per-layer ℓ2 / ALTI maps of every layer (``interactions``), ``[B, L, N, N]``;
* ``alti_logit``: ALTI-Logit, every row (``alti_logit``), ``[B, N, N]``;
* ``row``: one ALTI-Logit row with the trace on the GPU (``alti_logit_row``; O(N·d) beyond the trace);
* ``row_host``: the same, with the trace's layers in host memory, one on the GPU at a time
  (``trace_store="host"``, which ``"auto"`` picks when ``row`` does not fit). The host must hold the trace.

Example:
    >>> import torch
    >>> from latim_captum.bench_speed import build_model
    >>> from latim_captum.plan import largest_length, model_memory
    >>> shape = model_memory(build_model("falcon_mamba_7b", False, torch.bfloat16, torch.device("meta")))
    >>> round(shape.weight_bytes / 2**30, 1)                 # 7.27 B parameters in bf16
    13.5
    >>> largest_length(shape, "maps", gpu_bytes=80 * 2**30)  # all 64 layers' maps on an 80 GiB GPU
    4810
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .adapters import get_adapter
from .maps.memory import Estimate, RequestSizes, estimate, host_trace_bytes

__all__ = [
    "REQUESTS",
    "ModelMemory",
    "largest_length",
    "markdown",
    "model_memory",
    "plan",
    "request_estimate",
    "shape_of",
]

#: request name → (front end of the guard, trace kept on the host, what it is in words)
REQUESTS: dict[str, tuple[str, bool, str]] = {
    "maps": ("interactions", False, "ℓ2 / ALTI maps of every layer"),
    "alti_logit": ("alti_logit", False, "ALTI-Logit, every row"),
    "row": ("trace", False, "one ALTI-Logit row, trace on the GPU"),
    "row_host": ("trace", True, "one ALTI-Logit row, trace in host memory"),
}

#: no input is longer than this (2^24 tokens); the bisection's upper end
_MAX_LENGTH = 1 << 24


@dataclass(frozen=True)
class ModelMemory:
    """What a model's memory needs depend on: its widths (:meth:`ModelAdapter.sizes`), its weights' bytes and
    dtype's width. ``name`` labels reports."""

    name: str
    widths: dict[str, int]
    weight_bytes: int
    model_itemsize: int


def model_memory(model: nn.Module, name: str | None = None) -> ModelMemory:
    """The widths and weight bytes of ``model``, which may live on the meta device (shapes without values).

    ``weight_bytes``: every parameter and buffer, at its own dtype's width (tied weights counted once)."""
    adapter = get_adapter(model, shapes_only=True)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return ModelMemory(
        name=name or type(model).__name__,
        widths=adapter.sizes(),
        weight_bytes=int(weight_bytes),
        model_itemsize=adapter.model_dtype.itemsize,
    )


def _check_request(request: str) -> tuple[str, bool, str]:
    if request not in REQUESTS:
        raise ValueError(f"unknown request {request!r}; choose one of {', '.join(REQUESTS)}")
    return REQUESTS[request]


def request_estimate(
    shape: ModelMemory, request: str, length: int, *, batch: int = 1, dtype: torch.dtype = torch.float32
) -> tuple[Estimate, int]:
    """``(GPU estimate, host bytes)`` of ``request`` at ``length`` tokens, as the guard computes them on CUDA with
    ``backend="auto"``; the host bytes are the host-kept trace (0 unless ``request == "row_host"``)."""
    front_end, on_host, _ = _check_request(request)
    if length < 1 or batch < 1:
        raise ValueError(f"length and batch must be ≥ 1, got length={length}, batch={batch}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = RequestSizes(
        batch=batch, seq=length, itemsize=itemsize, model_itemsize=shape.model_itemsize, **shape.widths
    )
    layers = shape.widths["sublayers"] if front_end == "interactions" else 1
    need = estimate(front_end, sizes, layers=layers, device=torch.device("cuda"), trace_on_host=on_host)
    return need, host_trace_bytes(sizes) if on_host else 0


def _fits(shape: ModelMemory, need: Estimate, host: int, gpu_bytes: int, host_bytes: int | None) -> bool:
    """Whether the weights and ``need`` fit ``gpu_bytes``, and the host-kept trace ``host`` fits ``host_bytes``."""
    return shape.weight_bytes + need.total <= gpu_bytes and (host_bytes is None or host <= host_bytes)


def largest_length(
    shape: ModelMemory,
    request: str,
    gpu_bytes: int,
    host_bytes: int | None = None,
    *,
    batch: int = 1,
    dtype: torch.dtype = torch.float32,
) -> int:
    """The largest ``N`` at which ``weights + estimate(request, N) ≤ gpu_bytes`` (and, for ``row_host``, the
    host-kept trace ≤ ``host_bytes`` when given); 0 when not even one token fits. Bisection: every term of the
    estimate grows with ``N``."""
    _check_request(request)
    if gpu_bytes <= 0:
        raise ValueError(f"the GPU's memory must be positive, got {gpu_bytes} bytes")
    if host_bytes is not None and host_bytes <= 0:
        raise ValueError(f"the host's memory must be positive, got {host_bytes} bytes")

    def fits(n: int) -> bool:
        return _fits(shape, *request_estimate(shape, request, n, batch=batch, dtype=dtype), gpu_bytes, host_bytes)

    if not fits(1):
        return 0
    lo, hi = 1, _MAX_LENGTH  # fits(lo); hi may or may not fit
    if fits(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def plan(
    shape: ModelMemory,
    gpu_bytes: int,
    host_bytes: int | None = None,
    *,
    length: int | None = None,
    requests: Sequence[str] = tuple(REQUESTS),
    dtype: torch.dtype = torch.float32,
) -> list[dict]:
    """One row per request: its largest length on ``gpu_bytes`` (and ``host_bytes``), and with ``length`` the
    estimate there (GiB: GPU total with the weights, its parts, host; and whether it fits)."""
    rows = []
    for request in requests:
        _, _, words = _check_request(request)
        row: dict = {"request": request, "what": words,
                     "largest_n": largest_length(shape, request, gpu_bytes, host_bytes, dtype=dtype)}  # fmt: skip
        if length is not None:
            need, host = request_estimate(shape, request, length, dtype=dtype)
            row.update(
                n=length,
                gpu_gib=(shape.weight_bytes + need.total) / 2**30,
                parts=f"weights {shape.weight_bytes / 2**30:.1f} GiB, {need.describe()}",
                host_gib=host / 2**30,
                fits=_fits(shape, need, host, gpu_bytes, host_bytes),
            )
        rows.append(row)
    return rows


def shape_of(spec: str, model_dtype: torch.dtype | None = None) -> ModelMemory:
    """:class:`ModelMemory` of ``spec``, built on the meta device (no weights are read or made):

    * a shape of ``latim bench speed`` (:data:`latim_captum.bench_speed.MODELS`: ``mamba1`` and ``mamba2`` are the
      130M shapes, ``falcon_mamba_7b``, ``mamba2_2.7b``, ``bamba_9b``, ...), in ``model_dtype`` (default bf16);
    * a local folder with a ``config.json``, or a hub name already in the local cache: its config, in
      ``model_dtype`` (default: the config's dtype, else float32).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .bench_speed import MODELS, build_model

    if spec in MODELS:
        model = build_model(spec, False, model_dtype or torch.bfloat16, torch.device("meta"))
        return model_memory(model, spec)
    try:
        # local_files_only: planning never reaches a hub (a name must already be cached)
        config = AutoConfig.from_pretrained(spec, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"no model shape {spec!r}: give one of {', '.join(MODELS)}, a folder with a config.json, or a hub name "
            f"already in the local cache ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
        ) from None
    config.use_cache = False
    dtype = model_dtype or _config_dtype(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model_memory(model.to(dtype), spec)


def _config_dtype(config) -> torch.dtype:
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = getattr(torch, value, None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float32


def markdown(shape: ModelMemory, rows: list[dict], gpu_bytes: int, host_bytes: int | None) -> str:
    """The plan as a markdown table, with what it assumes."""
    host = f"{host_bytes / 2**30:g} GiB of host memory" if host_bytes else "host memory not checked"
    lines = [
        f"# What fits: {shape.name} on {gpu_bytes / 2**30:g} GiB of GPU memory ({host})",
        "",
        f"Weights {shape.weight_bytes / 2**30:.1f} GiB; widths {shape.widths}.",
        "",
        "Batch 1, maps in float32. The largest N is where the memory guard stops admitting the request: an upper",
        "bound (its estimate counts the large allocations, and the tiles take what is left).",
    ]
    if shape.widths.get("state", 1) > 1:
        lines.append("The forward term counts HF's PyTorch scan of Mamba-1; mamba-ssm's kernels do not allocate it.")
    lines.append("")
    with_n = any("n" in row for row in rows)
    head = "| request | largest N |"
    if with_n:
        head += " GPU GiB at N (with weights) | host GiB at N | fits | parts |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        cells = [row["what"], f"{row['largest_n']:,}"]
        if with_n:
            cells += [f"{row['gpu_gib']:.1f} (N = {row['n']:,})", f"{row['host_gib']:.1f}",
                      "yes" if row["fits"] else "no", row["parts"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
