"""The memory guard: what a request will allocate, estimated from its sizes before anything is allocated (before the
forward pass), against what the device has free; :class:`~latim_captum.maps.options.LatimMemoryError` instead of
running out of memory.

A request's peak is the trace it keeps plus the larger of two phases::

    peak = trace + max(forward pass, result + work)

* trace: per sublayer ``B·N·(3D + 4d + 2R)`` values (residual stream, mixer in/out, conv input, pre-activation, gate,
  Δ, B, C), an attention sublayer's ``[B, H, N, N]`` softmax weights, and the logits ``[B, N, V]``;
* forward pass (transient, model dtype): the logits and the hooks' captures, and HF Mamba-1's PyTorch scan
  ``[B, d, N, R]`` (three of them) when the state is per channel;
* result: the maps returned (``[B, L, N, N]`` per-layer maps, ``[B, N, N]`` ALTI-Logit or rollout, ``[B, N, N, D]``
  contribution vectors);
* work: one layer's maps besides the result (ALTI-Logit: its rollout ``R``, ALTI and logit maps, ``R``'s next step),
  and one reference row block ``[B, rows, N, ·]`` (``3·d·R + 3d + 2D`` values per pair) or one fast-path tile.

These are the large allocations, in the compute dtype (float32: 4 bytes); small ones (weights copies, ``[B, N]``
vectors) are left out, so the estimate is a floor, not a bound. Free memory is read per call:
``torch.cuda.mem_get_info`` plus PyTorch's cached free blocks on CUDA; on a CPU the least of ``MemAvailable``
(``/proc/meminfo``), the cgroup's limit minus its usage, and the address-space limit (``RLIMIT_AS``) minus the address
space in use. Devices that report nothing (MPS, ...) are not checked. Two threads checking at once each see the same
free memory.

Example:
    >>> sizes = RequestSizes(batch=1, seq=16384, sublayers=24, d_model=768, d_inner=1536, state=16, vocab=50280)
    >>> parts = estimate("interactions", sizes, layers=24)
    >>> f"{parts.total / 2**30:.0f} GiB"        # maps 24 GiB, trace 15.5 GiB, Mamba-1 reference rows 5.9 GiB
    '45 GiB'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latim_captum.decompose import DEFAULT_BLOCK_ELEMENTS

from .options import LatimMemoryError, resolve_backend

__all__ = [
    "DEFAULT_TILE_BYTES",
    "FRONT_ENDS",
    "RequestSizes",
    "Estimate",
    "estimate",
    "available_bytes",
    "check_fits",
    "host_trace_bytes",
    "tile_bytes_for",
]

#: bytes a tile may use when the device cannot report its free memory (CPU)
DEFAULT_TILE_BYTES = 256 * 2**20

#: what each front end allocates beyond the trace, as (result, work) in ``[B, N, N]`` maps; "layers" is the number of
#: selected layers
FRONT_ENDS: tuple[str, ...] = (
    "trace", "interactions", "captum_rows", "alti_logit", "alti_logit_layers", "alti_rollout", "contributions",
)  # fmt: skip


@dataclass(frozen=True)
class RequestSizes:
    """The sizes that set a request's memory (from the model's modules and the input's shape, before any forward).

    Attributes:
        batch, seq: ``B`` and ``N``.
        sublayers: residual sublayers of the trace (``L``).
        d_model, d_inner: ``D`` and the widest Mamba mixer's ``d``.
        state: Mamba-1's per-channel state size ``R`` (1 for Mamba-2, whose decay is per head).
        vocab: ``V`` (0 without an LM head).
        attention_heads: heads over all attention sublayers (each holds ``[B, H, N, N]`` weights in the trace).
        itemsize: bytes per value of the compute dtype; ``model_itemsize``: of the model's dtype.
        conv_kernel: ``K``, the conv taps (a tile reads ``K − 1`` columns more).
    """

    batch: int
    seq: int
    sublayers: int
    d_model: int
    d_inner: int
    state: int = 1
    vocab: int = 0
    attention_heads: int = 0
    itemsize: int = 4
    model_itemsize: int = 4
    conv_kernel: int = 4

    @property
    def map_bytes(self) -> int:
        """One ``[B, N, N]`` map."""
        return self.batch * self.seq * self.seq * self.itemsize


@dataclass
class Estimate:
    """Named parts of a request's memory (bytes); :attr:`total` is ``trace + max(forward, result + work)``."""

    trace: int = 0
    forward: int = 0
    result: int = 0
    work: int = 0
    shapes: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.trace + max(self.forward, self.result + self.work)

    def describe(self) -> str:
        parts = []
        for name in ("result", "work", "trace", "forward"):
            value = getattr(self, name)
            if value:
                label = {"work": "working maps and row blocks", "forward": "forward pass"}.get(name, name)
                shape = f" {self.shapes[name]}" if name in self.shapes else ""
                parts.append(f"{label}{shape} {_human(value)}")
        return ", ".join(parts)


def tile_bytes_for(
    batch: int, rows: int, cols: int, d_inner: int, d_model: int, conv_kernel: int, itemsize: int, mm_itemsize: int
) -> int:
    """Peak bytes of one ``rows × cols`` PyTorch tile (:func:`latim_captum.maps.tiles.tile_bytes`): the gated
    values, mixing and tap temporaries (≈3 copies of ``[d]`` per pair, one in the ``W_o`` product's precision),
    ``T`` and ``|y − T'|`` (``[D]`` per pair, 2 copies each)."""
    pairs = batch * rows * (cols + conv_kernel)
    widest = max(itemsize, mm_itemsize)
    return pairs * (3 * d_inner * itemsize + d_inner * mm_itemsize + 2 * d_model * widest + 2 * d_model * itemsize)


def _pair_bytes(sizes: RequestSizes) -> int:
    """Bytes per (query row, source column) pair of a reference row block: Mamba-1's ``[.., d, R]`` decay (3 copies),
    the mixing, values and gated values ``[.., d]``, ``T`` and a reduction temporary ``[.., D]``."""
    return sizes.batch * (3 * sizes.d_inner * sizes.state + 3 * sizes.d_inner + 2 * sizes.d_model) * sizes.itemsize


def _ref_rows(sizes: RequestSizes, block_rows: int | None) -> int:
    """Rows per reference block: ``block_rows``, or :func:`latim_captum.decompose.default_block_rows`'s choice."""
    if block_rows is not None:
        return min(block_rows, sizes.seq)
    per_row = max(1, sizes.batch * sizes.seq * max(sizes.d_inner * sizes.state, sizes.d_model, 1))
    return max(1, min(sizes.seq, DEFAULT_BLOCK_ELEMENTS // per_row))


def _block_work(sizes: RequestSizes, block_rows: int | None, backend: str, device: torch.device) -> int:
    """One row block of the reference path, or one tile of the tiled path (and a reference block for a hybrid's
    attention sublayers, which always take the reference)."""
    ref = _ref_rows(sizes, block_rows) * sizes.seq * _pair_bytes(sizes)
    if resolve_backend(backend, device) == "ref":
        return ref
    if block_rows is not None:
        tile = tile_bytes_for(sizes.batch, block_rows, block_rows, sizes.d_inner, sizes.d_model, sizes.conv_kernel,
                              sizes.itemsize, sizes.itemsize)  # fmt: skip
    else:  # sized to the free memory on CUDA (it then fits by construction), to a fixed budget elsewhere
        tile = 0 if device.type == "cuda" else DEFAULT_TILE_BYTES
    return max(tile, ref if sizes.attention_heads else 0)


def _layer_trace_bytes(sizes: RequestSizes) -> int:
    """One Mamba sublayer's trace: inputs, Δ, gates and the like, ``[B, N, ·]`` each."""
    return sizes.batch * sizes.seq * (3 * sizes.d_model + 4 * sizes.d_inner + 2 * sizes.state) * sizes.itemsize


def host_trace_bytes(sizes: RequestSizes) -> int:
    """What a trace kept in host memory holds there: every sublayer and the attention weights."""
    attention = sizes.attention_heads * sizes.batch * sizes.seq * sizes.seq * sizes.itemsize
    return sizes.sublayers * _layer_trace_bytes(sizes) + attention


def _trace_bytes(sizes: RequestSizes, on_host: bool = False) -> int:
    """The trace on the device: every layer, or (``on_host``) the one layer handed out at a time, with the
    embeddings and the readout's logits, which stay."""
    b, n = sizes.batch, sizes.seq
    logits = b * n * sizes.vocab * sizes.itemsize
    layers = _layer_trace_bytes(sizes) if on_host else host_trace_bytes(sizes)
    return layers + logits + b * n * sizes.d_model * sizes.itemsize


def _forward_bytes(sizes: RequestSizes) -> int:
    b, n, e = sizes.batch, sizes.seq, sizes.model_itemsize
    captures = 4 * sizes.sublayers * b * n * sizes.d_model * e
    scan = 3 * b * sizes.d_inner * n * sizes.state * e if sizes.state > 1 else 0
    return b * n * sizes.vocab * e + captures + scan


def estimate(
    front_end: str,
    sizes: RequestSizes,
    *,
    layers: int = 1,
    with_trace: bool = True,
    block_rows: int | None = None,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    embedding_columns: bool = False,
    trace_on_host: bool = False,
) -> Estimate:
    """The memory of one request (:class:`Estimate`), before anything is allocated.

    Args:
        front_end: one of :data:`FRONT_ENDS`: ``"interactions"`` (per-layer maps of ``layers`` layers),
            ``"captum_rows"`` (one row of ``layers`` maps, returned inside ``[B, L, N, N]`` maps), ``"alti_logit"``,
            ``"alti_logit_layers"`` (the terms of ``layers`` layers),
            ``"alti_rollout"``, ``"contributions"`` (``[B, N, N, D]``), ``"trace"`` (the trace alone).
        sizes: the request's sizes.
        layers: per-layer maps requested (the maps of ``"captum_rows"``).
        with_trace: count the trace and the forward pass (False: the caller passed a trace).
        block_rows, backend, device: the engine's path (its row blocks or tiles).
        embedding_columns: ``contributions`` with a Zamba2 hybrid layer's embedding columns (``[B, N, 2N, D]``).
        trace_on_host: the trace's layers are kept in host memory (:func:`host_trace_bytes` there), one layer on
            the device at a time.
    """
    if front_end not in FRONT_ENDS:
        raise ValueError(f"unknown front end {front_end!r}; choose one of {', '.join(FRONT_ENDS)}")
    device = torch.device(device)
    b, n, p = sizes.batch, sizes.seq, sizes.map_bytes
    out = Estimate()
    if with_trace:
        out.trace, out.forward = _trace_bytes(sizes, trace_on_host), _forward_bytes(sizes)
    if front_end == "trace":
        return out
    block = _block_work(sizes, block_rows, backend, device)
    if front_end == "interactions":
        out.result, out.work = layers * p, p + block
        out.shapes["result"] = f"[{b}, {layers}, {n}, {n}]"
    elif front_end == "captum_rows":  # one row per map is computed, but returned inside full maps
        out.result, out.work = layers * p, block
        out.shapes["result"] = f"[{b}, {layers}, {n}, {n}]"
    elif front_end == "alti_logit":
        out.result, out.work = p, 4 * p + block  # scores; R, the ALTI and logit maps, R's next step
        out.shapes["result"] = f"[{b}, {n}, {n}]"
    elif front_end == "alti_logit_layers":  # the kept layers' terms, and ALTI-Logit's working maps
        out.result, out.work = layers * p, 4 * p + block
        out.shapes["result"] = f"[{b}, {layers}, {n}, {n}]"
    elif front_end == "alti_rollout":
        out.result, out.work = p, 2 * p + block
        out.shapes["result"] = f"[{b}, {n}, {n}]"
    else:  # contributions: every row of one layer at once
        cols = 2 * n if embedding_columns else n
        out.result = b * n * cols * sizes.d_model * sizes.itemsize
        out.work = n * cols * _pair_bytes(sizes)
        out.shapes["result"] = f"[{b}, {n}, {cols}, {sizes.d_model}]"
    return out


# -- free memory ---------------------------------------------------------------------------------------------------


def available_bytes(device: torch.device | str) -> tuple[int, str] | None:
    """``(bytes, where from)`` a request may still allocate on ``device``, or None when the device does not say.

    CUDA: free device memory plus the blocks PyTorch's allocator holds but does not use. CPU: the least of the
    available RAM, the cgroup's headroom and the address-space limit's headroom (whichever are known).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), f"free on {device}"
    if device.type != "cpu":
        return None
    known = [
        (value, where)
        for value, where in (
            (_mem_available(), "available RAM (MemAvailable)"),
            (_cgroup_headroom(), "the cgroup's memory limit"),
            (_address_space_headroom(), "the address-space limit (RLIMIT_AS)"),
        )
        if value is not None
    ]
    return min(known) if known else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _mem_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (Linux), else the free physical pages (``os.sysconf``)."""
    text = _read("/proc/meminfo")
    if text:
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_headroom() -> int | None:
    """The cgroup's memory limit minus its usage (cgroup v2, then v1), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read(limit_file), _read(usage_file)
        if limit is None or usage is None:
            continue
        limit = limit.strip()
        if limit == "max" or int(limit) >= 2**62:  # v1 says "no limit" with a huge number
            return None
        return max(0, int(limit) - int(usage.strip()))
    return None


def _address_space_headroom() -> int | None:
    """``RLIMIT_AS`` (soft) minus the address space in use, or None without a limit (or off Unix)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    statm = _read("/proc/self/statm")
    used = int(statm.split()[0]) * os.sysconf("SC_PAGE_SIZE") if statm else 0
    return max(0, soft - used)


def check_fits(need: Estimate, device: torch.device | str, what: str, advice: str) -> None:
    """``LatimMemoryError`` naming the estimate, what is available and ``advice`` when ``need`` does not fit.

    Example:
        >>> check_fits(Estimate(result=2**50), "cpu", "interactions", "ask for fewer layers")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        latim_captum.maps.options.LatimMemoryError: interactions needs about 1.0 PiB (result 1.0 PiB), more than ...
    """
    found = available_bytes(device)
    if found is None:
        return
    free, where = found
    if need.total <= free:
        return
    raise LatimMemoryError(
        f"{what} needs about {_human(need.total)} ({need.describe()}), more than the {_human(free)} available "
        f"({where}); {advice}"
    )


def _human(n: int) -> str:
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
