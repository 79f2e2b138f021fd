"""PNG files for the CLI, drawn by :mod:`latim_captum.viz` (figures are ``matplotlib.figure.Figure`` objects, so
no pyplot state is touched and nothing needs closing).

Example:
    >>> import torch
    >>> save_heatmap(torch.rand(4, 4).tril(), ["a", "b", "|", "a"], "demo", "/tmp/demo.png")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .viz import plot_comparison, plot_layer_grid, plot_token_map

__all__ = ["figure_path", "save_heatmap", "save_layer_grid", "save_side_by_side"]


def figure_path(path: str | Path) -> Path:
    """The file a figure saved to ``path`` lands in: matplotlib adds ``.png`` to a name without a suffix, so callers
    that report the path must report this one. A suffix matplotlib cannot write is refused here, before any work.

    Raises:
        ValueError: the suffix names no format matplotlib writes.
    """
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if not path.suffix:
        return path.with_name(path.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ValueError(
            f"{path}: matplotlib cannot write {path.suffix!r} figures; use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
        )
    return path


def save_heatmap(matrix: torch.Tensor, tokens: Sequence[str], title: str, path: str | Path) -> Path:
    """One ``[N, N]`` map as a figure (PNG unless the suffix says otherwise); returns the file written."""
    path = figure_path(path)
    plot_token_map(matrix, tokens, title=title).savefig(path, dpi=110)
    return path


def save_layer_grid(maps: torch.Tensor, tokens: Sequence[str], title: str, path: str | Path) -> Path:
    """``[L, N, N]`` per-layer maps as a grid of heatmaps, one per layer."""
    titles = [f"{title}, layer {k + 1}" for k in range(maps.shape[0])]
    path = figure_path(path)
    plot_layer_grid(maps, tokens, titles=titles).savefig(path, dpi=100)
    return path


def save_side_by_side(maps: dict[str, torch.Tensor], tokens: Sequence[str], title: str, path: str | Path) -> Path:
    """Several ``[N, N]`` maps (one per method) side by side."""
    path = figure_path(path)
    plot_comparison(maps, tokens, title=title).savefig(path, dpi=100)
    return path
