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
    with pytest.warns(UserWarning, match=r"ℓ2: the upper triangle \(j > i\) holds non-zero values"):
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
    fig = plot_token_map(torch.rand(n, n).tril(), [f"tok{i}" for i in range(n)])
    assert len(fig.axes[0].get_xticks()) == n
    assert fig.axes[0].get_xticklabels()[0].get_fontsize() >= 4
    _check(fig, tmp_path / "long.png")
    fig = plot_token_map(torch.rand(200, 200).tril())
    assert len(fig.axes[0].get_xticks()) <= 80, "beyond 80 tokens every k-th label"


def test_layer_grid(tmp_path):
    fig = plot_layer_grid(torch.rand(5, 7, 7).tril(), ncols=3)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == [f"layer {i}" for i in range(1, 6)]  # counted from 1, as the CLI's figures
    width, height = _check(fig, tmp_path / "grid.png")
    assert width > height, "3 columns x 2 rows"


def test_comparison_maps_and_scores(tmp_path):
    maps = {"A": torch.rand(5, 5).tril(), "B": torch.randn(5, 5).tril()}
    fig = plot_comparison(maps, list("abcde"), title="same input")
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

    fig = plot_comparison({f"m{k}": torch.rand(5, 5).tril() for k in range(6)}, list("abcde"), ncols=4)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 6
    assert sum(1 for ax in fig.axes if not ax.axison) == 2


def test_dollar_tokens_are_text_not_mathtext(tmp_path):
    """A token holding ``$`` is drawn as itself: ``$$`` failed at savefig, ``$x^2$`` was typeset as x²."""
    from latim_captum.viz import plot_long_context

    tokens = ["price", "$$", "$x^2$", "w"]
    fig = plot_token_map(torch.rand(4, 4).tril(), tokens)
    _check(fig, tmp_path / "dollars.png")
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown == ["price", r"\$\$", r"\$x^2\$", "w"]  # matplotlib draws \$ as a literal $
    row = torch.rand(12)
    fig = plot_long_context({"m": row}, [("$$", 2, 4)], [f"${i}" for i in range(12)])
    fig.savefig(tmp_path / "long.png", dpi=50)  # the span label is in the legend, the strip and a zoom title
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [r"\$\$", "rest"]


def test_span_shares_that_would_be_drawn_wrong_are_refused():
    from latim_captum.viz import plot_long_context, plot_span_shares, span_mass

    row = torch.tensor([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="span labels must be unique and not 'rest'; got 'needle'"):
        span_mass(row, [("needle", 0, 1), ("needle", 2, 3)])  # the second overwrote the first: shares summed to 0.75
    with pytest.raises(ValueError, match="got 'rest'"):
        span_mass(row, [("rest", 0, 1)])
    with pytest.raises(TypeError, match="start and stop must be ints"):
        span_mass(row, [("a", 0.5, 2)])
    assert sum(span_mass(row, [("a", 0, 1), ("b", 2, 3)]).values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"fractions of the mass in \[0, 1\]; got 57.0 for 'IG' / 'gold'"):
        plot_span_shares({"IG": {"gold": 57.0, "filler": 43.0}})  # percentages would all look like 100 %
    with pytest.raises(ValueError, match="got -0.2"):
        plot_span_shares({"IG": {"gold": -0.2}})
    with pytest.raises(ValueError, match="has no category"):
        plot_span_shares({"IG": {}})
    with pytest.raises(ValueError, match="context must be >= 0"):
        plot_long_context({"m": row}, [("a", 0, 1)], context=-1)


def test_maps_a_figure_cannot_show_are_refused():
    bad = torch.rand(4, 4).tril()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"matrix holds 1 NaN or infinite value\(s\)"):
        plot_token_map(bad)
    bad[2, 1] = -float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        plot_comparison({"A": bad, "B": torch.rand(4, 4).tril()})
    with pytest.raises(ValueError, match="empty"):
        plot_token_map(torch.zeros(0, 0))
    with pytest.raises(ValueError, match=r"maps must be \[L, N, N\] \(square per layer\), got shape \(2, 3, 5\)"):
        plot_layer_grid(torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match="empty"):
        plot_layer_grid(torch.rand(0, 3, 3))
    with pytest.raises(TypeError, match="titles must be a sequence of 4 strings"):
        plot_layer_grid(torch.rand(4, 3, 3).tril(), titles="ALTI")
    # a map that is not causal is still drawn with the mask asked for, but not silently
    with pytest.warns(UserWarning, match="upper triangle"):
        plot_token_map(torch.rand(3, 3).T.contiguous().tril().T)


def test_axes_of_a_subfigure_give_the_figure_that_saves(tmp_path):
    from matplotlib.figure import Figure

    from latim_captum.viz import plot_span_shares

    root = Figure()
    left, right = root.subfigures(1, 2)
    fig = plot_token_map(torch.rand(3, 3).tril(), ax=left.add_subplot())
    assert fig is root
    assert plot_span_shares({"m": {"a": 0.4, "b": 0.6}}, ax=right.add_subplot()) is root
    fig.savefig(tmp_path / "sub.png", dpi=50)
