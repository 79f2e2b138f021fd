"""Argument checks shared by every front end: each error names the offending value."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from latim_captum.adapters import ModelAdapter

__all__ = [
    "check_model_inputs",
    "check_layers",
    "rollout_layers",
    "check_position",
    "check_rows",
    "check_method",
    "check_target",
    "check_size",
    "check_device",
    "check_known_tokens",
]


def check_model_inputs(
    adapter: ModelAdapter,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    attention_mask: Tensor | None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Validate ids/embeddings/mask against the model; return them on the model's device.

    Raises:
        ValueError: both or neither input given, wrong rank, empty sequence, ids out of the vocabulary, NaN/inf
            embeddings, mask shape or values wrong.
        TypeError: wrong dtype (float ids, integer embeddings).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    device = adapter.device
    if input_ids is not None:
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape [batch, seq_len], got {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(input_ids.shape)}")
        input_ids = input_ids.long()  # uint8/int16/... ids: embedding layers index with int64 (a big uint64 → < 0)
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= adapter.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is out of the vocabulary [0, {adapter.vocab_size})")
        input_ids = input_ids.to(device)
        shape = tuple(input_ids.shape)
    else:
        if not isinstance(inputs_embeds, Tensor):
            raise TypeError(f"inputs_embeds must be a torch.Tensor, got {type(inputs_embeds).__name__}")
        if not inputs_embeds.dtype.is_floating_point:
            raise TypeError(f"inputs_embeds must be a floating-point tensor, got dtype {inputs_embeds.dtype}")
        if inputs_embeds.dim() != 3:
            raise ValueError(
                f"inputs_embeds must have shape [batch, seq_len, d_model], got {tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.shape[0] == 0 or inputs_embeds.shape[1] == 0:
            raise ValueError(f"inputs_embeds is empty: shape {tuple(inputs_embeds.shape)}")
        if inputs_embeds.shape[-1] != adapter.d_model:
            raise ValueError(
                f"inputs_embeds has d_model {inputs_embeds.shape[-1]}, the model expects {adapter.d_model}"
            )
        if not bool(torch.isfinite(inputs_embeds).all()):
            first = (~torch.isfinite(inputs_embeds)).nonzero()[0, :2].tolist()
            raise ValueError(f"inputs_embeds holds NaN or inf (first at [batch, position] {first}); pass finite ones")
        inputs_embeds = inputs_embeds.to(device=device, dtype=adapter.model_dtype)
        shape = tuple(inputs_embeds.shape[:2])
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {shape}")
        values = torch.unique(attention_mask)
        if not bool(((values == 0) | (values == 1)).all()):
            raise ValueError(f"attention_mask must hold only 0 and 1, got values {values.tolist()}")
        if bool((attention_mask.sum(-1) == 0).any()):
            raise ValueError("attention_mask masks every token of some sequence")
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
    return input_ids, inputs_embeds, attention_mask


def check_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """Normalise a layer selection (None = all, negative indices allowed) to a list of indices.

    Raises:
        ValueError: an index outside ``[-n_layers, n_layers)``, or an empty selection.
        TypeError: not an int or a sequence of ints.
    """
    if layers is None:
        return list(range(n_layers))
    items = [layers] if isinstance(layers, int) else layers
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"layers must be an int, a sequence of ints or None, got {layers!r}")
    if len(items) == 0:
        raise ValueError("layers is empty")
    out = []
    for layer in items:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer indices must be ints, got {layer!r}")
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {n_layers} layers")
        out.append(layer % n_layers)
    return out


def rollout_layers(layers: int | Sequence[int] | None, n_layers: int) -> list[int]:
    """:func:`check_layers` for a rollout, which multiplies the layers' maps in the model's order: the indices
    sorted (``[-1, 0]`` is ``[0, n - 1]``).

    Raises:
        ValueError: as :func:`check_layers`, or a layer named twice (a rollout passes each layer once).
    """
    selected = check_layers(layers, n_layers)
    repeated = sorted({layer for layer in selected if selected.count(layer) > 1})
    if repeated:
        raise ValueError(f"layers names layer {repeated[0]} twice; a rollout passes each layer once")
    return sorted(selected)


def check_position(position: int, seq_len: int) -> int:
    """Normalise a (possibly negative) query position; ``ValueError`` naming it when out of range."""
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"position must be an int, got {position!r}")
    if not -seq_len <= position < seq_len:
        raise ValueError(f"position {position} is out of range for a sequence of length {seq_len}")
    return position % seq_len


def check_rows(rows: tuple[int, int] | None, seq_len: int) -> tuple[int, int]:
    """``(start, stop)`` of a query-row range (``None``: every row); ``ValueError`` naming it when out of range."""
    if rows is None:
        return 0, seq_len
    start, stop = rows
    if not 0 <= start < stop <= seq_len:
        raise ValueError(f"rows {tuple(rows)!r} must satisfy 0 <= start < stop <= {seq_len}")
    return start, stop


def check_method(method: str, methods: Sequence[str]) -> str:
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods)}")
    return method


def check_target(
    target: int | Sequence[int] | Tensor | None,
    batch: int,
    seq_len: int,
    vocab: int,
    default: Tensor,
    *,
    name: str = "target",
    per_position: bool = True,
) -> Tensor:
    """Per-position targets ``[B, N]`` from an int, a ``[B]`` or ``[B, N]`` tensor/list, or None (``default``).

    ``name``: the argument's name in the messages (``"contrast"``); ``per_position=False``: one query position, so a
    ``[B, N]`` tensor is not offered (nor taken).

    Raises:
        ValueError: a shape that is none of these, or a token id outside the vocabulary.
    """
    if target is None:
        return default
    t = torch.as_tensor(target, device=default.device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch, seq_len)
    elif t.dim() == 1 and t.shape[0] == batch:
        t = t[:, None].expand(batch, seq_len)
    elif per_position and t.dim() == 2 and tuple(t.shape) == (batch, seq_len):
        pass
    else:
        wanted = f"a scalar or [batch]=[{batch}]"
        if per_position:
            wanted = f"a scalar, [batch]=[{batch}] or [batch, seq_len]=[{batch}, {seq_len}]"
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {wanted}")
    if bool((t < 0).any()) or bool((t >= vocab).any()):
        bad = int(t.min()) if bool((t < 0).any()) else int(t.max())
        raise ValueError(f"{name} token id {bad} is out of the vocabulary [0, {vocab})")
    return t.long()


def check_size(name: str, value: int | None) -> int | None:
    """A size argument (rows per block, tile side, chunk, batch, ...): None (the default) or an int ≥ 1.

    A zero or negative size would otherwise give empty loops (all-zero maps) or fall back to the default unnoticed.

    Raises:
        TypeError: not an int (a bool is refused too).
        ValueError: ``value < 1``; the message names the argument.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_device(device: str | torch.device) -> torch.device:
    """A device this machine has: ``cpu``, or ``cuda[:k]`` / ``mps`` / ``xpu[:k]`` when PyTorch can use it.

    Checked before a model is moved there, because PyTorch's own errors come late (after the load) and read as
    internal failures ("Torch not compiled with CUDA enabled", an ``AssertionError``).

    Raises:
        ValueError: not a device name, or a device this build of PyTorch / this machine does not have.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {str(device)!r} is not a device name (e.g. cpu, cuda, cuda:1): {err}") from None
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type in ("cuda", "mps", "xpu") else None
    if backend is None:
        raise ValueError(f"device {str(device)!r}: latim runs on cpu, cuda, mps or xpu, not {dev.type}")
    if not backend.is_available():
        raise ValueError(f"device {str(device)!r} given but {dev.type} is not available on this machine")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"device {str(device)!r} given but this machine has {count} {dev.type} device(s)")
    return dev


def check_known_tokens(tokenizer: Any, text: str, ids: Sequence[int], what: str) -> None:
    """``ValueError`` when ``tokenizer`` read ``text`` (as ``ids``) with more unknown tokens than the unknown-token
    strings typed in it: the map would be of another input (the embedded copy models read every character outside
    ``a``-``o`` and ``|`` as ``<unk>``; a word-level tokenizer, an unknown word). ``what`` names the text in the
    message (``--text``, ``file line 3: prompt``).

    Example:
        >>> check_known_tokens(tok, "abc", [0, 1, 2], "--text")                # doctest: +SKIP
    """
    unk, unk_id = getattr(tokenizer, "unk_token", None), getattr(tokenizer, "unk_token_id", None)
    if unk_id is None:
        return
    read = [int(i) for i in ids]
    if read.count(unk_id) > (text.count(unk) if unk else 0):
        tokens = tokenizer.convert_ids_to_tokens(read)
        raise ValueError(
            f"{what} {text!r} has characters or words outside the tokenizer's vocabulary, read as its unknown token "
            f"{unk!r}: {tokens}"
        )


#: the compute dtypes of the decomposition, by the names JSON and the command line can give
COMPUTE_DTYPE_NAMES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def check_compute_dtype(dtype: torch.dtype) -> None:
    """``TypeError`` unless ``dtype`` is a compute dtype of the decomposition (:data:`COMPUTE_DTYPE_NAMES`)."""
    if dtype not in COMPUTE_DTYPE_NAMES.values():
        raise TypeError(f"dtype must be torch.float32 or torch.float64 (the compute dtype), got {dtype!r}")


def dtype_from_name(name: str) -> torch.dtype:
    """``"float64"`` (or ``"torch.float64"``) as ``torch.float64``: a compute dtype given by name.

    Example:
        >>> dtype_from_name("torch.float64")
        torch.float64

    Raises:
        ValueError: not the name of a compute dtype (:data:`COMPUTE_DTYPE_NAMES`).
    """
    key = name.strip().removeprefix("torch.")
    if key not in COMPUTE_DTYPE_NAMES:
        raise ValueError(f"dtype {name!r}: the compute dtype is one of {', '.join(COMPUTE_DTYPE_NAMES)}")
    return COMPUTE_DTYPE_NAMES[key]
