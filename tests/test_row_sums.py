"""The scan form of Σ_j T_i(x_j) (latim_captum.row_sums) against the sum of the materialised vectors."""

from __future__ import annotations

import pytest
import torch

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum.decompose import contributions_ref, tap_contributions
from latim_captum.row_sums import layer_row_sums, reassembled_input, sublayer_row_sums, sublayer_row_sums_ref

#: the strategies each conv activation admits (the SiLU ones are refused on other activations)
STRATEGIES = {
    "silu": ("silu", "silu_gate", "identity", "taylor1", "taylor2", "act", "act_gate"),
    "relu": ("identity", "act", "act_gate"),
    "gelu": ("identity", "act", "act_gate"),
    "linear": ("identity", "act", "act_gate"),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
@pytest.mark.parametrize("act", list(STRATEGIES))
def test_scan_row_sums_are_the_materialised_sums(kind, act):
    """Every strategy, conv bias on, left padding, batch > 1, N longer than the conv and than a Mamba-2 chunk."""
    model = build(kind, act=act, seed=7, use_conv_bias=True).double()
    ids, mask = random_ids(3, 11, seed=5), left_pad_mask(3, 11, [0, 3, 6])
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    for idx, layer in enumerate(tr.layers):
        for strategy in STRATEGIES[act]:
            scan, ref = sublayer_row_sums(layer, strategy), sublayer_row_sums_ref(layer, strategy)
            assert scan.shape == ref.shape == layer.mixer_output.shape
            assert _rel(scan, ref) < 1e-10, f"layer {idx}, {strategy}: {_rel(scan, ref):.2e}"


def test_reassembled_input_drops_exactly_the_taps_that_read_padding():
    """Tap k of position s reads token s − (K−1−k): with every share set to one, position s sums the taps that read
    a token, min(s + 1, K) of them."""
    kernel, n = 4, 6
    phi = reassembled_input(torch.ones(kernel, 1, n, 2))
    expected = torch.tensor([min(s + 1, kernel) for s in range(n)], dtype=phi.dtype)
    torch.testing.assert_close(phi[0, :, 0], expected)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_reassembled_input_is_the_conv_output_for_exact_strategies(kind):
    """With silu_gate on a SiLU model, φ̃ is the real conv output φ = SiLU(ψ) at every non-padded position: the
    identity the scan form's exactness rests on."""
    model = build(kind, seed=3).double()
    ids, mask = random_ids(2, 9, seed=1), left_pad_mask(2, 9, [0, 4])
    layer = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64).layers[1]
    phi = reassembled_input(tap_contributions(layer, "silu_gate"))
    keep = mask.bool()
    torch.testing.assert_close(phi[keep], torch.nn.functional.silu(layer.pre_activation)[keep])


def test_layer_row_sums_take_given_shares():
    """``shares`` is used, not recomputed: the identity strategy's shares give the identity strategy's sums."""
    model = build("mamba2", seed=2).double()
    layer = latim_captum.trace(model, random_ids(1, 8), dtype=torch.float64).layers[0]
    given = layer_row_sums(layer, "silu", shares=tap_contributions(layer, "identity"))
    torch.testing.assert_close(given, contributions_ref(layer, "identity").sum(2))
    assert _rel(given, layer_row_sums(layer, "silu")) > 1e-3


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_reconstruction_error_backends_agree_on_approximations(kind):
    """The Table 5 number itself is the same on both forms where it is not zero (float32, the reports' dtype)."""
    model = build(kind, seed=11)
    ids = random_ids(2, 10, seed=3)
    for strategy in ("silu", "taylor1", "taylor2", "identity"):
        scan = latim_captum.reconstruction_error(model, ids, activation=strategy)
        ref = latim_captum.reconstruction_error(model, ids, activation=strategy, backend="ref")
        assert bool((ref > 1e-3).all()), f"{strategy} should not be exact on a SiLU model"
        torch.testing.assert_close(scan, ref, rtol=1e-4, atol=0)


def test_reconstruction_error_refuses_an_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'scan'"):
        latim_captum.reconstruction_error(build("mamba1"), random_ids(1, 4), backend="scan")
