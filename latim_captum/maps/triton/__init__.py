"""The tiled path's Triton kernels (``backend="triton"``; needs the ``triton`` package): ``kernels`` holds every
``@triton.jit`` function and its autotuning candidates, ``launch`` what each launch needs, ``workspace`` the
buffers reused across one layer's launches and the causal tile layout."""

from .launch import (
    CONFIG_SWITCHES,
    DEFAULT_CONFIG,
    STAGED_MEASURES,
    STAGED_TILE,
    SUMS,
    VARIANTS,
    check_supported,
    interpreting,
    launch_rows,
    mamba2_mixing,
    tile_sums,
)
from .workspace import Workspace, causal_tiles

__all__ = [
    "CONFIG_SWITCHES",
    "DEFAULT_CONFIG",
    "STAGED_MEASURES",
    "STAGED_TILE",
    "SUMS",
    "VARIANTS",
    "Workspace",
    "causal_tiles",
    "check_supported",
    "interpreting",
    "launch_rows",
    "mamba2_mixing",
    "tile_sums",
]
