"""Where the engine computes when a model's layers live on several devices (``device_map="auto"``, offloading).

A trace made from a sharded model keeps each sublayer's tensors on the device that ran that layer
(:meth:`latim_captum.adapters.ModelAdapter.trace`); its embeddings stay where the inputs entered (the *output device*
of every map), its readout where the LM head runs. Each layer's maps are computed where its trace lives, from inputs
moved there (a ``[B, N, D]`` projection at most); only the ``[B, N, N]`` results, or one query row, travel to the
output device, where the rollout folds them in. A single-device trace takes no copy: ``Tensor.to`` of a tensor
already in place returns it.

Example:
    >>> out = output_device(tr)                                                          # doctest: +SKIP
    >>> proj = PerDevice(projection)                                                     # doctest: +SKIP
    >>> maps = layer_maps(layer, "silu", ("logit",), projection=proj.on(layer_device(layer)))  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor

from latim_captum.traces import HostLayers, ModelTrace, SublayerTrace

__all__ = ["PerDevice", "compute_device", "layer_device", "output_device"]


def layer_device(layer: SublayerTrace) -> torch.device:
    """The device holding one sublayer's trace: where its maps are computed."""
    return layer.residual.device


def compute_device(trace: ModelTrace, idx: int) -> torch.device:
    """Where sublayer ``idx``'s maps are computed, found without handing the layer out: the device it is kept on,
    or, for a trace kept in host memory, the device that computed it (where :class:`HostLayers` copies it)."""
    if isinstance(trace.layers, HostLayers):
        return trace.layers.devices[idx]
    return layer_device(trace.layers[idx])


def output_device(trace: ModelTrace) -> torch.device:
    """Where the maps of a trace are returned: the device of its embeddings (where the inputs entered)."""
    return trace.embeddings.device


class PerDevice:
    """One tensor and its copies on the devices asked for so far: a projection every layer reads is sent to each
    device once, not once per layer (or per row chunk)."""

    def __init__(self, value: Tensor | None) -> None:
        self.value = value
        self._copies: dict[torch.device, Tensor] = {} if value is None else {value.device: value}

    def on(self, device: torch.device) -> Tensor | None:
        """The tensor on ``device`` (None stays None)."""
        if self.value is None:
            return None
        if device not in self._copies:
            self._copies[device] = self.value.to(device)
        return self._copies[device]
