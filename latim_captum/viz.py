"""Matplotlib figures for token maps: one map, a grid of per-layer maps, several methods side by side, and views of
one query row over a long context (span-aggregated bars, the whole row, rows zoomed to spans).

Every function returns the :class:`matplotlib.figure.Figure` (never shows it). Colour scales are per panel:
non-negative data on a sequential map from 0, signed data on a diverging map centred on 0. The upper triangle of a
causal map (j > i, always zero) is masked by default; a map that holds values there is drawn with a warning. Token
and span labels are data, drawn as text (a ``$`` is not mathtext); titles and method names are yours, drawn as
matplotlib text (mathtext allowed). NaN or infinite scores are refused: a colour cannot say them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "plot_comparison",
    "plot_layer_grid",
    "plot_long_context",
    "plot_span_shares",
    "plot_token_map",
    "span_mass",
]

ArrayLike = torch.Tensor | np.ndarray


def _to_numpy(x: ArrayLike, name: str, dims: tuple[int, ...]) -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=float)
    if arr.ndim not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}): nothing to draw")
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        # a NaN cell would look like the masked triangle, -inf like 0: no colour says them
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s); a figure cannot show them")
    return arr


def _text(label: object) -> str:
    """``label`` drawn as itself: matplotlib reads ``$...$`` as mathtext (``$$`` fails at savefig)."""
    return str(label).replace("$", r"\$")


def _labels(tokens: Sequence[str] | None, n: int) -> list[str]:
    if tokens is None:
        return [str(i) for i in range(n)]
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} token labels for {n} positions")
    return [_text(t) for t in tokens]


def _root_figure(ax: Axes) -> Figure:
    """The top figure of ``ax`` (an axes of a SubFigure belongs to the SubFigure, which cannot be saved)."""
    fig = ax.figure
    while not isinstance(fig, Figure):
        fig = fig.figure
    return fig


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
        upper = data[np.triu_indices(n, k=1)]
        if upper.size and np.abs(upper).max() > 0:
            warnings.warn(
                f"{title or 'the map'}: the upper triangle (j > i) holds non-zero values (max |x| = "
                f"{np.abs(upper).max():.3g}) that causal_mask=True hides; pass causal_mask=False to draw them",
                stacklevel=3,
            )
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
    return _root_figure(ax)


def plot_layer_grid(
    maps: ArrayLike,
    tokens: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    titles: Sequence[str] | None = None,
    causal_mask: bool = True,
) -> Figure:
    """A grid of per-layer maps ``[L, N, N]`` (e.g. one example of ``interactions(...)[0]``), titled ``layer 1`` to
    ``layer L`` unless ``titles`` names them.

    Examples:
        >>> fig = plot_layer_grid(torch.rand(3, 5, 5).tril(), ncols=2)
        >>> len([a for a in fig.axes if a.get_title()])
        3
    """
    data = _to_numpy(maps, "maps", (3,))
    n_layers, n = data.shape[0], data.shape[1]
    if data.shape[1] != data.shape[2]:
        raise ValueError(f"maps must be [L, N, N] (square per layer), got shape {data.shape}")
    if isinstance(titles, str):
        raise TypeError(f"titles must be a sequence of {n_layers} strings, one per layer, not one string")
    if titles is not None and len(titles) != n_layers:
        raise ValueError(f"got {len(titles)} titles for {n_layers} layers")
    # layers count from 1 in titles, as the CLI's and the benchmarks' figures do
    titles = list(titles) if titles is not None else [f"layer {i + 1}" for i in range(n_layers)]
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
        >>> fig = plot_comparison({"ALTI": torch.rand(4, 4).tril(), "ℓ2": torch.rand(4, 4).tril()}, list("abcd"))
        >>> fig = plot_comparison({"ALTI-Logit": torch.randn(4), "IG": torch.randn(4)}, list("abcd"))
    """
    if not results:
        raise ValueError("results is empty")
    arrays = {name: _to_numpy(v, f"results[{name!r}]", (1, 2)) for name, v in results.items()}
    ndims = {a.ndim for a in arrays.values()}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(ndims) != 1:
        raise ValueError("results mixes [N, N] maps and [N] scores; plot them separately")
    not_square = [f"{name} {tuple(a.shape)}" for name, a in arrays.items() if a.ndim == 2 and a.shape[0] != a.shape[1]]
    if not_square:
        # e.g. an unsummed [N, D] gradient attribution, or a [1, N] row: neither is a token-to-token map
        raise ValueError(
            f"maps must be square [N, N] (token to token), got {', '.join(not_square)}; pass one query's scores as "
            "[N] (e.g. attributions summed over the embedding dimension, or row[0])"
        )
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


# --- long contexts: one query row per method, summarised over spans -------------------------------------------------

_SPAN_COLORS = ("#d62728", "#ff7f0e", "#9467bd", "#2ca02c", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def span_mass(row: ArrayLike, spans: Sequence[tuple[str, int, int]]) -> dict[str, float]:
    """Share of a row's mass on each span, ``Σ_{j ∈ [start, stop)} |s_j| / Σ_j |s_j|``, plus ``"rest"`` (the
    positions no span covers). Overlapping spans count their shared positions once each, in the first span.

    Examples:
        >>> span_mass(torch.tensor([1.0, -3.0, 0.0, 4.0]), [("a", 1, 2), ("b", 3, 4)])
        {'a': 0.375, 'b': 0.5, 'rest': 0.125}
    """
    data = np.abs(_to_numpy(row, "row", (1,)))
    labels = [label for label, _, _ in spans]
    twice = sorted({label for label in labels if labels.count(label) > 1 or label == "rest"})
    if twice:
        # one share per label: a repeated label (or "rest", the uncovered positions') would overwrite another's
        raise ValueError(f"span labels must be unique and not 'rest'; got {', '.join(map(repr, twice))}")
    total = float(data.sum())
    taken = np.zeros(len(data), dtype=bool)
    out = {}
    for label, start, stop in spans:
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise TypeError(f"span {label!r}: start and stop must be ints, got {start!r} and {stop!r}")
        if not 0 <= start <= stop <= len(data):
            raise ValueError(f"span {label!r} [{start}, {stop}) is outside a row of {len(data)} positions")
        here = np.zeros(len(data), dtype=bool)
        here[start:stop] = True
        here &= ~taken
        taken |= here
        out[label] = float(data[here].sum()) / total if total > 0 else float("nan")
    out["rest"] = float(data[~taken].sum()) / total if total > 0 else float("nan")
    return out


def plot_span_shares(
    shares: Mapping[str, Mapping[str, float]],
    *,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars: one group per method (outer key), one bar per span category (inner key), the share of the
    method's attribution mass there (e.g. averaged over many long samples, where a heatmap would not be readable).

    Examples:
        >>> fig = plot_span_shares({"ℓ2": {"gold": 0.5, "filler": 0.5}, "IG": {"gold": 0.2, "filler": 0.8}})
    """
    if not shares:
        raise ValueError("shares is empty")
    categories: list[str] = []
    for values in shares.values():
        categories += [c for c in values if c not in categories]
    if not categories:
        raise ValueError("shares has no category: each method maps span names to shares")
    outside = [(m, c, v) for m, values in shares.items() for c, v in values.items()
               if not np.isnan(float(v)) and not -1e-6 <= float(v) <= 1 + 1e-6]  # fmt: skip
    if outside:
        # the axis is [0, 1]: a share above 1 (or percentages) would look like 1, a negative one would not show
        m, c, v = outside[0]
        raise ValueError(f"shares are fractions of the mass in [0, 1]; got {v!r} for {m!r} / {c!r}")
    if ax is None:
        fig = Figure(figsize=(max(6.0, 1.1 * len(shares) * max(1, len(categories)) * 0.35 + 2), 3.6),
                     layout="constrained")  # fmt: skip
        ax = fig.add_subplot()
    width = 0.8 / len(categories)
    x = np.arange(len(shares))
    for k, cat in enumerate(categories):
        values = [float(v.get(cat, np.nan)) for v in shares.values()]
        ax.bar(x + (k - (len(categories) - 1) / 2) * width, values, width, label=_text(cat),
               color=_SPAN_COLORS[k % len(_SPAN_COLORS)])  # fmt: skip
    ax.set_xticks(x)
    ax.set_xticklabels(list(shares), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("share of |score|")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(len(categories), 5))
    if title:
        ax.set_title(title, fontsize=9)
    return _root_figure(ax)


def plot_long_context(
    rows: Mapping[str, ArrayLike],
    spans: Sequence[tuple[str, int, int]],
    tokens: Sequence[str] | None = None,
    *,
    context: int = 3,
    title: str | None = None,
) -> Figure:
    """One query row per method over a long context (N in the thousands), readable where an ``N × N`` map is not.

    Three parts: (top) span-aggregated bars, the share of each row's mass on each span (:func:`span_mass`);
    (middle) the whole rows as a heatmap strip, ``|s_j| / max_j |s_j|`` per row, spans marked; (bottom) the rows
    zoomed to each span with ``context`` tokens either side, token labels readable, on the strip's colour scale.

    Args:
        rows: method name → ``[N]`` scores of one query row (all the same length).
        spans: ``(label, start, stop)`` token ranges to aggregate and zoom to (e.g. the needles of a passkey
            sample), ``stop`` exclusive.
        tokens: N labels for the zoomed panels.
        context: tokens shown either side of a span in its zoom.
        title: figure title.

    Examples:
        >>> row = torch.zeros(2048); row[100:104] = 1.0; row[1500] = 0.5
        >>> fig = plot_long_context({"ℓ2": row, "IG": -row}, [("gold", 100, 104), ("first", 1500, 1501)])
        >>> len(fig.axes) >= 4
        True
    """
    if not rows:
        raise ValueError("rows is empty")
    if not spans:
        raise ValueError("spans is empty")
    if context < 0:
        raise ValueError(f"context must be >= 0 tokens, got {context}")
    arrays = {name: np.abs(_to_numpy(v, f"rows[{name!r}]", (1,))) for name, v in rows.items()}
    sizes = {a.shape[0] for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"rows have different lengths {sorted(sizes)}; they must explain the same input")
    n = sizes.pop()
    labels = _labels(tokens, n)
    names = list(arrays)
    strip = np.stack([a / (a.max() if a.max() > 0 else 1.0) for a in arrays.values()])
    fig = Figure(figsize=(max(12.0, 2.6 * len(spans)), 3.0 + 0.35 * len(names) * 2 + 2.4), layout="constrained")
    grid = fig.add_gridspec(3, len(spans), height_ratios=[2.4, 0.35 * len(names) + 0.6, 0.35 * len(names) + 1.2])

    bars = fig.add_subplot(grid[0, :])
    plot_span_shares({name: span_mass(rows[name], spans) for name in names}, ax=bars,
                     title="share of |score| per span")  # fmt: skip

    whole = fig.add_subplot(grid[1, :])
    image = whole.imshow(strip, aspect="auto", interpolation="nearest", cmap="Blues", vmin=0.0, vmax=1.0)
    whole.set_yticks(range(len(names)))
    whole.set_yticklabels(names, fontsize=7)
    for k, (label, start, stop) in enumerate(spans):
        color = _SPAN_COLORS[k % len(_SPAN_COLORS)]
        whole.axvspan(start - 0.5, stop - 0.5, ymin=0.0, ymax=1.0, fill=False, edgecolor=color, linewidth=1.2)
        # cells are centred on integers: the span's box runs from start - 0.5 to stop - 0.5
        whole.text((start + stop - 1) / 2, -0.6, _text(label), color=color, ha="center", va="bottom", fontsize=7)
    whole.set_xlabel(f"position (0..{n - 1}); colour |score| / max |score| of the row")
    fig.colorbar(image, ax=whole, fraction=0.02, pad=0.01)

    for k, (label, start, stop) in enumerate(spans):
        ax = fig.add_subplot(grid[2, k])
        lo, hi = max(0, start - context), min(n, stop + context)
        ax.imshow(strip[:, lo:hi], aspect="auto", interpolation="nearest", cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(hi - lo))
        ax.set_xticklabels(labels[lo:hi], rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names if k == 0 else [""] * len(names), fontsize=6)
        ax.axvspan(start - lo - 0.5, stop - lo - 0.5, fill=False, edgecolor=_SPAN_COLORS[k % len(_SPAN_COLORS)],
                   linewidth=1.5)  # fmt: skip
        ax.set_title(f"{_text(label)} [{start}, {stop})", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
