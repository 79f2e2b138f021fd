"""Matplotlib figures for token maps: one map, a grid of per-layer maps, several methods side by side.

Every function returns the :class:`matplotlib.figure.Figure` (never shows it). Colour scales are per panel:
non-negative data on a sequential map from 0, signed data on a diverging map centred on 0. The upper triangle of a
causal map (j > i, always zero) is masked by default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_token_map", "plot_layer_grid", "plot_comparison"]

ArrayLike = torch.Tensor | np.ndarray


def _to_numpy(x: ArrayLike, name: str, dims: tuple[int, ...]) -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)
    if arr.ndim not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}")
    return arr


def _labels(tokens: Sequence[str] | None, n: int) -> list[str]:
    if tokens is None:
        return [str(i) for i in range(n)]
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} token labels for {n} positions")
    return [str(t) for t in tokens]


def _font_size(n: int) -> float:
    """Tick labels shrink with the number of tokens: 9pt up to 20 tokens, 5pt at 80."""
    return float(np.clip(9 - 4 * (n - 20) / 60, 4, 9))


def _set_ticks(ax: Axes, labels: list[str], axis: str) -> None:
    n = len(labels)
    step = max(1, math.ceil(n / 80))  # every token up to 80, then every k-th
    idx = np.arange(0, n, step)
    size = _font_size(n)
    if axis in ("x", "both"):
        ax.set_xticks(idx)
        ax.set_xticklabels([labels[i] for i in idx], rotation=90, fontsize=size)
    if axis in ("y", "both"):
        ax.set_yticks(idx)
        ax.set_yticklabels([labels[i] for i in idx], fontsize=size)


def _norm_args(data: np.ndarray) -> dict:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return {"cmap": "Blues", "vmin": 0.0, "vmax": 1.0}
    if finite.min() >= 0:
        return {"cmap": "Blues", "vmin": 0.0, "vmax": float(finite.max()) or 1.0}
    bound = float(np.abs(finite).max()) or 1.0
    return {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}


def _draw_map(ax: Axes, matrix: np.ndarray, labels: list[str], title: str | None, causal_mask: bool) -> None:
    n = matrix.shape[0]
    data = matrix.astype(float).copy()
    if causal_mask:
        data[np.triu_indices(n, k=1)] = np.nan
    image = ax.imshow(data, interpolation="nearest", aspect="equal", **_norm_args(data))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    _set_ticks(ax, labels, "both")
    ax.set_xlabel("source token j")
    ax.set_ylabel("query token i")
    if title:
        ax.set_title(title)


def _panel_size(n: int) -> float:
    return float(np.clip(2.5 + 0.09 * n, 3.5, 10.0))


def plot_token_map(
    matrix: ArrayLike,
    tokens: Sequence[str] | None = None,
    *,
    title: str | None = None,
    causal_mask: bool = True,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of one ``[N, N]`` map: row i = query token, column j = source token.

    Args:
        matrix: ``[N, N]`` map (tensor or array).
        tokens: N labels (default: positions).
        title: panel title.
        causal_mask: blank out the upper triangle (j > i).
        ax: draw into this axes instead of a new figure.

    Returns:
        The figure.

    Examples:
        >>> fig = plot_token_map(torch.rand(4, 4).tril(), ["a", "b", "c", "d"], title="ℓ2")
        >>> fig.savefig("map.png")  # doctest: +SKIP
    """
    data = _to_numpy(matrix, "matrix", (2,))
    if data.shape[0] != data.shape[1]:
        raise ValueError(f"matrix must be square [N, N], got shape {data.shape}")
    if ax is None:
        size = _panel_size(data.shape[0])
        fig = Figure(figsize=(size + 1.0, size), layout="constrained")
        ax = fig.add_subplot()
    _draw_map(ax, data, _labels(tokens, data.shape[0]), title, causal_mask)
    return ax.figure


def plot_layer_grid(
    maps: ArrayLike,
    tokens: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    titles: Sequence[str] | None = None,
    causal_mask: bool = True,
) -> Figure:
    """A grid of per-layer maps ``[L, N, N]`` (e.g. one example of ``interactions(...)[0]``).

    Examples:
        >>> fig = plot_layer_grid(torch.rand(3, 5, 5), ncols=2)
        >>> len([a for a in fig.axes if a.get_title()])
        3
    """
    data = _to_numpy(maps, "maps", (3,))
    n_layers, n = data.shape[0], data.shape[1]
    if titles is not None and len(titles) != n_layers:
        raise ValueError(f"got {len(titles)} titles for {n_layers} layers")
    titles = list(titles) if titles is not None else [f"layer {i}" for i in range(n_layers)]
    ncols = max(1, min(ncols, n_layers))
    nrows = math.ceil(n_layers / ncols)
    size = _panel_size(n)
    fig = Figure(figsize=(ncols * (size + 1.0), nrows * size), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    labels = _labels(tokens, n)
    for idx, ax in enumerate(axes.flat):
        if idx < n_layers:
            _draw_map(ax, data[idx], labels, titles[idx], causal_mask)
        else:
            ax.set_axis_off()
    return fig


def plot_comparison(
    results: Mapping[str, ArrayLike],
    tokens: Sequence[str] | None = None,
    *,
    causal_mask: bool = True,
    title: str | None = None,
    ncols: int = 4,
) -> Figure:
    """Several methods on the same input, one panel each (like the paper's Figure 1).

    ``[N, N]`` values are drawn as maps side by side; ``[N]`` values (one query's scores, e.g. Captum attributions
    summed over the embedding dimension) as one bar chart per method, stacked, sharing the token axis.

    Args:
        results: method name -> ``[N, N]`` map or ``[N]`` scores; all of one kind.
        tokens: N labels.
        causal_mask: blank out the upper triangle of maps.
        title: figure title.
        ncols: maps per row (more methods wrap onto further rows).

    Examples:
        >>> fig = plot_comparison({"ALTI": torch.rand(4, 4), "ℓ2": torch.rand(4, 4)}, list("abcd"))
        >>> fig = plot_comparison({"ALTI-Logit": torch.randn(4), "IG": torch.randn(4)}, list("abcd"))
    """
    if not results:
        raise ValueError("results is empty")
    arrays = {name: _to_numpy(v, f"results[{name!r}]", (1, 2)) for name, v in results.items()}
    ndims = {a.ndim for a in arrays.values()}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(ndims) != 1:
        raise ValueError("results mixes [N, N] maps and [N] scores; plot them separately")
    if len(sizes) != 1:
        raise ValueError(f"results have different lengths {sorted(sizes)}; they must explain the same input")
    n = sizes.pop()
    labels = _labels(tokens, n)
    k = len(arrays)
    if ndims.pop() == 2:
        size = _panel_size(n)
        ncols = max(1, min(ncols, k))
        nrows = math.ceil(k / ncols)
        fig = Figure(figsize=(ncols * (size + 1.0), nrows * size + 0.5), layout="constrained")
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
        for ax, (name, arr) in zip(axes, arrays.items()):
            _draw_map(ax, arr, labels, name, causal_mask)
        for ax in axes[k:]:
            ax.set_axis_off()
    else:
        width = float(np.clip(2.5 + 0.3 * n, 7.0, 16.0))
        fig = Figure(figsize=(width, 1.8 * k + 0.8), layout="constrained")
        axes = fig.subplots(k, 1, sharex=True, squeeze=False)[:, 0]
        for ax, (name, arr) in zip(axes, arrays.items()):
            colors = np.where(arr >= 0, "#b2182b", "#2166ac")
            ax.bar(np.arange(n), arr, color=colors)
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.set_ylabel(name, rotation=0, ha="right", va="center")
        _set_ticks(axes[-1], labels, "x")
    if title:
        fig.suptitle(title)
    return fig
