"""Minimal heatmap figures for the CLI (matplotlib, Agg backend).

Stand-in until ``latim_captum.viz`` (heatmap, layer grid, side by side) lands on main: the CLI only calls
:func:`save_heatmap`, :func:`save_layer_grid` and :func:`save_side_by_side`, so switching is a three-line change.

Example:
    >>> import torch
    >>> save_heatmap(torch.rand(4, 4).tril(), ["a", "b", "|", "a"], "demo", "/tmp/demo.png")   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["save_heatmap", "save_layer_grid", "save_side_by_side"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, matrix: torch.Tensor, tokens: Sequence[str], title: str) -> None:
    data = matrix.detach().float().cpu().numpy()
    vmax = float(abs(data).max()) or 1.0
    signed = bool((data < 0).any())
    im = ax.imshow(data, cmap="RdBu_r" if signed else "viridis", vmin=-vmax if signed else 0.0, vmax=vmax)
    n = len(tokens)
    ax.set_xticks(range(n), tokens, fontsize=6)
    ax.set_yticks(range(n), tokens, fontsize=6)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("input token j", fontsize=7)
    ax.set_ylabel("query row i", fontsize=7)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def save_heatmap(matrix: torch.Tensor, tokens: Sequence[str], title: str, path: str | Path) -> Path:
    """One ``[N, N]`` map as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    _draw(ax, matrix, tokens, title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_layer_grid(maps: torch.Tensor, tokens: Sequence[str], title: str, path: str | Path) -> Path:
    """``[L, N, N]`` per-layer maps as a grid of heatmaps, one per layer."""
    plt = _pyplot()
    n_layers = maps.shape[0]
    cols = min(4, n_layers)
    rows = math.ceil(n_layers / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < n_layers:
            _draw(ax, maps[k], tokens, f"layer {k + 1}")
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def save_side_by_side(maps: dict[str, torch.Tensor], tokens: Sequence[str], title: str, path: str | Path) -> Path:
    """Several ``[N, N]`` maps (one per method) side by side."""
    plt = _pyplot()
    k = len(maps)
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, matrix) in zip(axes.flat, maps.items()):
        _draw(ax, matrix, tokens, name)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
