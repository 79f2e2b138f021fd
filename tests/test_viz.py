"""Figures render to real PNG files with the Agg backend and never call plt.show()."""

from __future__ import annotations

import struct

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from latim_captum.viz import plot_comparison, plot_layer_grid, plot_token_map  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _check(fig, path, min_px=200, max_px=6000):
    fig.savefig(path, dpi=80)
    width, height = _png_size(path)
    assert path.stat().st_size > 1000
    assert min_px <= width <= max_px and min_px <= height <= max_px, (width, height)
    return width, height


def test_token_map_masks_upper_triangle(tmp_path):
    fig = plot_token_map(torch.rand(6, 6), [f"t{i}" for i in range(6)], title="ℓ2")
    image = fig.axes[0].images[0].get_array()
    assert bool(image.mask[0, 1]) and not bool(image.mask[1, 0]), "j > i must be masked"
    assert fig.axes[0].get_title() == "ℓ2" and fig.axes[0].get_xticklabels()[2].get_text() == "t2"
    _check(fig, tmp_path / "map.png")


def test_signed_maps_get_a_symmetric_diverging_scale(tmp_path):
    fig = plot_token_map(torch.tensor([[1.0, 0.0], [-3.0, 2.0]]))
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo == -3.0 and hi == 3.0
    assert fig.axes[0].images[0].get_cmap().name == "RdBu_r"


def test_long_inputs_stay_readable(tmp_path):
    n = 80
    fig = plot_token_map(torch.rand(n, n), [f"tok{i}" for i in range(n)])
    assert len(fig.axes[0].get_xticks()) == n
    assert fig.axes[0].get_xticklabels()[0].get_fontsize() >= 4
    _check(fig, tmp_path / "long.png")
    fig = plot_token_map(torch.rand(200, 200))
    assert len(fig.axes[0].get_xticks()) <= 80, "beyond 80 tokens every k-th label"


def test_layer_grid(tmp_path):
    fig = plot_layer_grid(torch.rand(5, 7, 7), ncols=3)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == [f"layer {i}" for i in range(5)]
    width, height = _check(fig, tmp_path / "grid.png")
    assert width > height, "3 columns x 2 rows"


def test_comparison_maps_and_scores(tmp_path):
    fig = plot_comparison({"A": torch.rand(5, 5), "B": torch.randn(5, 5)}, list("abcde"), title="same input")
    width, height = _check(fig, tmp_path / "cmp_maps.png")
    assert width > 1.5 * height, "panels side by side"
    fig = plot_comparison({"ALTI-Logit": torch.randn(6), "IG": torch.randn(6), "Saliency": torch.rand(6)})
    _check(fig, tmp_path / "cmp_scores.png")


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"square \[N, N\], got shape \(2, 3\)"):
        plot_token_map(torch.rand(2, 3))
    with pytest.raises(ValueError, match="got 2 token labels for 3 positions"):
        plot_token_map(torch.rand(3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="mixes"):
        plot_comparison({"a": torch.rand(3), "b": torch.rand(3, 3)})
    with pytest.raises(ValueError, match=r"different lengths \[3, 4\]"):
        plot_comparison({"a": torch.rand(3), "b": torch.rand(4)})


def test_comparison_wraps_into_rows():
    """Many methods wrap onto rows of ``ncols`` maps; spare axes are hidden."""
    from latim_captum.viz import plot_comparison

    fig = plot_comparison({f"m{k}": torch.rand(5, 5) for k in range(6)}, list("abcde"), ncols=4)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 6
    assert sum(1 for ax in fig.axes if not ax.axison) == 2
