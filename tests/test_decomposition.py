"""The decomposition itself: eqs 15-25 reconstruct each layer's real output where the strategy is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum.activations import ACTIVATIONS, conv_taps, tap_gains, tap_shares
from latim_captum.ssm import hidden_attention, selective_scan_ref

EXACT_TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_hidden_attention_equals_scan(kind):
    """Eq 15 / Appendix A: Σ_s M_{i,s} φ_s equals the recurrent scan for every position."""
    model = build(kind, seed=3)
    tr = latim_captum.trace(model, random_ids(2, 9, seed=1), dtype=torch.float64)
    for layer in tr.layers:
        phi = torch.randn(layer.conv_input.shape, dtype=torch.float64)
        m = hidden_attention(layer.ssm)
        via_matrix = torch.einsum("bisc,bsc->bic", m, phi)
        assert _rel(via_matrix, selective_scan_ref(layer.ssm, phi)) < 1e-12, "eq 15 disagrees with eq 10/13"
        upper = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
        assert bool((m[:, upper] == 0).all()), "M_{i,s} must be exactly 0 for s > i"


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
@pytest.mark.parametrize(
    "activation,act",
    [("identity", "linear"), ("silu_gate", "silu"), ("act_gate", "relu"), ("act_gate", "gelu"), ("act_gate", "silu")],
)
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("backend", ["auto", "ref"])
def test_exact_strategies_reconstruct_mixer_output(kind, activation, act, use_bias, backend):
    """Eq 23: Σ_j T_i(x_j) + b_o equals the model's mixer output (exact strategies, batch > 1, odd N, padding), in the
    error's scan form and as the sum of the materialised vectors."""
    model = build(kind, act=act, seed=5, use_bias=use_bias).double()
    ids = random_ids(3, 7, seed=2)
    mask = left_pad_mask(3, 7, [0, 2, 3])
    err = latim_captum.reconstruction_error(
        model, ids, attention_mask=mask, activation=activation, dtype=torch.float64, backend=backend
    )
    assert err.shape == (2,)
    assert bool((err < EXACT_TOL).all()), f"{activation} on a {act} {kind} model is not exact: {err.tolist()}"
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=torch.float64)
    for idx, layer in enumerate(tr.layers):
        t = latim_captum.contributions(tr, layer=idx, activation=activation)
        keep = mask.bool()
        rebuilt = (t.sum(2) + layer.offset)[keep]
        assert _rel(rebuilt, layer.mixer_output[keep]) < EXACT_TOL, f"layer {idx}: Σ_j T_i(x_j) ≠ mixer output"


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_block_output_with_residual(kind):
    """ALTI's T'_i(x_j) = T_i(x_j) + δ_ij x_i sums to the block output y_i (minus the offset)."""
    model = build(kind, seed=8).double()
    ids = random_ids(2, 6, seed=4)
    tr = latim_captum.trace(model, ids, dtype=torch.float64)
    layer = tr.layers[1]
    t = latim_captum.contributions(tr, layer=1, activation="silu_gate", include_residual=True)
    assert _rel(t.sum(2) + layer.offset, layer.block_output) < EXACT_TOL


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
@pytest.mark.parametrize("activation", ["silu", "taylor1", "taylor2"])
def test_approximations_report_finite_nonzero_error(kind, activation):
    """Table 5 metric: approximate strategies on SiLU models have a finite, nonzero error per layer."""
    model = build(kind, seed=11)
    err = latim_captum.reconstruction_error(model, random_ids(2, 8, seed=3), activation=activation)
    assert err.shape == (2,)
    assert bool(torch.isfinite(err).all())
    assert bool((err > 1e-3).all()), f"{activation} should not be exact on a SiLU model: {err.tolist()}"


def test_identity_is_not_exact_on_silu_model():
    """The identity strategy only reconstructs identity-activation models (the test can fail)."""
    err = latim_captum.reconstruction_error(build("mamba2", seed=2), random_ids(1, 6), activation="identity")
    assert bool((err > 1e-2).all())


def test_silu_gate_rejected_on_identity_model():
    with pytest.raises(ValueError, match="silu_gate.*'linear'.*identity"):
        latim_captum.interactions(build("mamba1", act="linear"), random_ids(1, 4), activation="silu_gate")


@pytest.mark.parametrize("act", ["relu", "gelu", "linear"])
@pytest.mark.parametrize("activation", ["silu", "taylor1", "taylor2", "silu_gate"])
def test_silu_strategies_are_refused_on_other_activations(act, activation):
    """They decompose SiLU: on a ReLU model ``silu`` ran silently with a decomposition error of 0.6-0.8 per layer
    (the paper's recipe, eq 19 with f := the model's activation, is ``act``)."""
    with pytest.raises(ValueError, match=f"conv activation is '{act}'.*'act_gate'"):
        latim_captum.interactions(build("mamba2", act=act), random_ids(1, 4), activation=activation)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_act_strategies_are_the_named_ones_where_those_apply(kind):
    """``act`` is eq 19 with f := the model's activation (``silu`` on SiLU models, ``identity`` on linear ones);
    ``act_gate`` holds ``a(ψ)/ψ`` fixed (``silu_gate`` on SiLU models); on a ReLU model ``act`` is ReLU per tap."""
    ids = random_ids(2, 7, seed=1)
    for act, pairs in (("silu", (("act", "silu"), ("act_gate", "silu_gate"))), ("linear", (("act", "identity"),))):
        tr = latim_captum.trace(build(kind, act=act, seed=4).double(), ids, dtype=torch.float64)
        for ours, named in pairs:
            torch.testing.assert_close(latim_captum.contributions(tr, layer=1, activation=ours),
                                       latim_captum.contributions(tr, layer=1, activation=named))  # fmt: skip
    tr = latim_captum.trace(build(kind, act="relu", seed=4).double(), ids, dtype=torch.float64)
    layer = tr.layers[0]
    taps = conv_taps(layer.conv_input, layer.conv_weight, layer.conv_bias)
    torch.testing.assert_close(tap_shares(taps, layer.pre_activation, "act", "relu"), taps.clamp(min=0))
    assert bool((latim_captum.reconstruction_error(tr, activation="act") > 1e-2).all()), "ReLU per tap is approximate"


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_contributions_match_jacobian_oracle(kind):
    """Independent oracle: with identity activation, no biases and Δ, B, C, gate fixed, the layer is linear in its
    input, so T_i(x_j) = (∂y_i/∂h_j) h_j computed by autograd through the plain scan."""
    model = build(kind, act="linear", seed=13, use_conv_bias=False).double()
    tr = latim_captum.trace(model, random_ids(1, 6, seed=9), dtype=torch.float64)
    layer = tr.layers[0]
    mixer = model.backbone.layers[0].mixer
    d = layer.conv_input.shape[-1]
    # in_proj rows: Mamba-1 [x | z], Mamba-2 [z | x B C | dt]
    w_x = mixer.in_proj.weight.detach()[d : 2 * d] if kind == "mamba2" else mixer.in_proj.weight.detach()[:d]

    def layer_fn(h: torch.Tensor) -> torch.Tensor:
        x = h @ w_x.T
        psi = F.conv1d(
            x.transpose(1, 2), layer.conv_weight[:, None, :], None, padding=layer.conv_weight.shape[-1] - 1, groups=d
        )[..., : h.shape[1]].transpose(1, 2)
        v = selective_scan_ref(layer.ssm, psi) + layer.skip * psi
        return (v * layer.out_gate) @ layer.out_weight.T

    h = layer.mixer_input
    assert _rel(layer_fn(h), layer.mixer_output) < EXACT_TOL
    jac = torch.autograd.functional.jacobian(layer_fn, h)  # [1, N, D, 1, N, D]
    oracle = torch.einsum("iajb,jb->ija", jac[0, :, :, 0], h[0])
    ours = latim_captum.contributions(tr, layer=0, activation="identity")[0]
    assert _rel(ours, oracle) < 1e-9


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_bias_counted_once_on_current_token(kind):
    """Footnote 3: the conv bias rides only on the current token's tap (K-1); ψ_s = Σ_k ψ_s^{(k)}."""
    model = build(kind, seed=4)
    tr = latim_captum.trace(model, random_ids(1, 5), dtype=torch.float64)
    layer = tr.layers[0]
    taps = conv_taps(layer.conv_input, layer.conv_weight, layer.conv_bias)
    assert torch.allclose(taps.sum(0), layer.pre_activation)
    no_bias = conv_taps(layer.conv_input, layer.conv_weight, None)
    diff = taps - no_bias
    assert torch.allclose(diff[-1], layer.conv_bias.expand_as(diff[-1]))
    assert bool((diff[:-1] == 0).all())
    gate = tap_shares(taps, layer.pre_activation, "silu_gate").sum(0)
    assert torch.allclose(gate, F.silu(layer.pre_activation))


def test_padding_matches_unpadded_run(kind):
    """Left padding changes nothing for real tokens: maps restricted to them equal the unpadded sequence's."""
    model = build(kind, seed=21).double()
    ids = random_ids(1, 6, seed=5)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = left_pad_mask(1, 9, [3])
    for method in ("l2", "alti", "alti_logit"):
        plain = latim_captum.interactions(model, ids, method=method, dtype=torch.float64)
        pad = latim_captum.interactions(model, padded, attention_mask=mask, method=method, dtype=torch.float64)
        assert torch.allclose(pad[..., 3:, 3:], plain, atol=1e-9), method
        assert bool((pad[..., 3:, :3] == 0).all()), f"{method}: real tokens must give padding nothing"


class _WholeWidthGatedNorm(torch.nn.Module):
    """transformers ≤ 5.17's ``MambaRMSNormGated``: one mean square over every channel, whatever ``n_groups``."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.variance_epsilon = eps

    def forward(self, hidden_states, gate=None):
        h = hidden_states.float()
        if gate is not None:
            h = h * F.silu(gate.float())
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(hidden_states.dtype)


@pytest.mark.parametrize("norm", ["grouped", "whole_width"])
def test_mamba2_gated_norm_groups_follow_the_installed_module(norm):
    """The trace reads the norm's grouping from the module that ran: per group (``group_size``) or all channels."""
    model = build("mamba2", seed=5)  # n_groups = 2: the two readings give different outputs
    if norm == "whole_width":
        for block in model.backbone.layers:
            old = block.mixer.norm
            block.mixer.norm = _WholeWidthGatedNorm(old.weight, old.variance_epsilon)
    err = latim_captum.reconstruction_error(model, random_ids(2, 9, seed=4), activation="silu_gate")
    assert float(err.max()) < EXACT_TOL, err


@pytest.mark.parametrize("model_activation", ["silu", "relu", "gelu"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tap_gains_are_the_shares_as_a_linear_map(activation, model_activation):
    """f(ψ^{(k)}) = r^{(k)} ⊙ ψ^{(k)} for every strategy, so a tap split into parts shares out linearly (the nested
    decomposition of a Zamba2 hybrid layer) and its parts' shares add up to the tap's."""
    gen = torch.Generator().manual_seed(0)
    conv_input = torch.randn(2, 7, 5, generator=gen, dtype=torch.float64)
    weight, bias = torch.randn(5, 4, generator=gen, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    taps = conv_taps(conv_input, weight, bias)
    psi = taps.sum(0)
    gains = tap_gains(taps, psi, activation, model_activation)
    torch.testing.assert_close(gains * taps, tap_shares(taps, psi, activation, model_activation))
