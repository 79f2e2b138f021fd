"""Baselines (Mamba-Attention, Mamba-Attribution, MambaLRP): maths on hand-set weights, shapes, causality, rows,
conservation, the replayed forward, and argument errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers import MambaConfig, MambaForCausalLM

import latim_captum
from conftest import build, left_pad_mask, random_ids
from latim_captum.adapters import get_adapter, relative_error
from latim_captum.adapters.base import ModelAdapter
from latim_captum.adapters.mixers import gated_norm_scale, half_gate, lrp_activation
from latim_captum.baselines import mamba_attention, mamba_attribution, mamba_lrp
from latim_captum.baselines.replay import replay_logits
from latim_captum.ssm import hidden_attention, hidden_attention_anchored

F64 = torch.float64
# HF's torch fallbacks compute norms and A in float32 even in a float64 model, so our float64 replay can only match
# its logits to float32 rounding
HF_FP32_ROUNDING = 1e-5


def _hand_model(gate: float = 1.0) -> MambaForCausalLM:
    """One Mamba-1 layer, d_model = d_inner = 2, state 1, conv kernel 1, no activation, hand-set weights.

    x = h, B_s = h_{s,0}, C_i = h_{i,1}, Δ = softplus(log(e-1)) = 1, A = -1, so
    ``M_{i,s} = h_{i,1} h_{s,0} e^{-(i-s)}`` in both channels.
    """
    cfg = MambaConfig(
        vocab_size=3, hidden_size=2, expand=1, state_size=1, conv_kernel=1, time_step_rank=1, num_hidden_layers=1,
        hidden_act="linear", layer_norm_epsilon=0.0, use_conv_bias=False, use_cache=False, tie_word_embeddings=False,
    )  # fmt: skip
    model = MambaForCausalLM(cfg).double().eval()
    mixer = model.backbone.layers[0].mixer
    with torch.no_grad():
        model.backbone.embeddings.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0], [2.0, 0.5]]))
        model.backbone.layers[0].norm.weight.fill_(1.0)
        model.backbone.norm_f.weight.fill_(1.0)
        mixer.in_proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [gate, 0.0], [0.0, gate]]))
        mixer.conv1d.weight.fill_(1.0)
        mixer.x_proj.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        mixer.dt_proj.weight.zero_()
        mixer.dt_proj.bias.fill_(math.log(math.e - 1))
        mixer.A_log.zero_()
        mixer.D.fill_(0.5)
        mixer.out_proj.weight.copy_(torch.tensor([[1.0, 0.5], [-0.5, 1.0]]))
        model.lm_head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
    return model


def _upper(maps: torch.Tensor) -> torch.Tensor:
    n = maps.shape[-1]
    return maps[..., torch.ones(n, n, dtype=torch.bool).triu(1)]


# -- anchored hidden attention -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
@pytest.mark.parametrize("anchor", [1, 3, 4, None])
def test_anchored_hidden_attention_equals_eq15(kind, anchor, monkeypatch):
    """The baselines' hidden attention (Mamba-1: factorised around anchors) is eq 15: every row block, anchors that
    do not divide N or the block, channel chunks near the anchors, the gradients through Δ, B and C; exact zeros
    above the diagonal."""
    import latim_captum.ssm as ssm_module

    monkeypatch.setattr(ssm_module, "_DIRECT_ELEMENTS", 200)  # several channel chunks near every anchor
    model = build(kind, seed=7)
    tr = latim_captum.trace(model, random_ids(2, 11, seed=3), dtype=F64)
    upper = torch.ones(11, 11, dtype=torch.bool).triu(1)
    for layer in tr.layers:
        for start, stop in ((0, 11), (4, 9), (10, 11)):
            exact = hidden_attention(layer.ssm, start, stop)
            got = hidden_attention_anchored(layer.ssm, start, stop, anchor_rows=anchor)
            assert relative_error(got, exact) < 1e-12, (kind, anchor, start, stop)
            assert bool((got[:, upper[start:stop]] == 0).all())
    # the same gradients: the attention variant of Mamba-Attribution differentiates M through Δ, B and C
    ssm = tr.layers[0].ssm
    fields = {name: getattr(ssm, name).detach().clone().requires_grad_() for name in ("delta", "B", "C")}
    weights = torch.randn(2, 11, 11, ssm.delta.shape[-1] * getattr(ssm, "head_dim", 1), dtype=F64)
    grads = []
    for fn in (hidden_attention, hidden_attention_anchored):
        leaf = dataclasses.replace(ssm, **fields)
        value = (fn(leaf) * weights).sum()
        grads.append(torch.autograd.grad(value, list(fields.values())))
    for a, b in zip(*grads):
        assert relative_error(b, a) < 1e-11


def test_anchored_hidden_attention_with_fast_decay_and_bad_anchor():
    """Decays that underflow (Δ large) give zeros, not NaN or inf, where eq 15 gives values below float32's range;
    an anchor below 1 is refused."""
    model = build("mamba1", seed=9)
    tr = latim_captum.trace(model, random_ids(1, 40, seed=4))
    ssm = tr.layers[0].ssm
    fast = dataclasses.replace(ssm, delta=ssm.delta * 200)
    got = hidden_attention_anchored(fast, anchor_rows=8)
    assert bool(torch.isfinite(got).all())
    assert relative_error(got, hidden_attention(fast)) < 1e-5
    with pytest.raises(ValueError, match="anchor_rows must be ≥ 1"):
        hidden_attention_anchored(ssm, anchor_rows=0)


# -- replay ---------------------------------------------------------------------------------------------------------


def test_replay_reproduces_logits(kind):
    model = build(kind).double()
    ids, mask = random_ids(2, 6, seed=3), left_pad_mask(2, 6, [0, 2])
    adapter = get_adapter(model)
    reference = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.detach()
    embeds = adapter.embeddings(ids).detach()
    plain = replay_logits(adapter, embeds, mask)
    keep = mask.bool()
    assert relative_error(plain[keep], reference[keep]) < HF_FP32_ROUNDING, "replay != model logits"
    lrp = replay_logits(adapter, embeds, mask, lrp=True)
    torch.testing.assert_close(lrp, plain, rtol=0, atol=1e-12, msg="the LRP rules must not change the forward value")

    def explicit(_layer, ssm, phi):  # Σ_s M_{i,s} ⊙ φ_s with the eq-15 matrix
        return torch.einsum("bisc,bsc->bic", hidden_attention(ssm), phi)

    via_matrix = replay_logits(adapter, embeds, mask, mixing=explicit)
    torch.testing.assert_close(via_matrix, plain, rtol=0, atol=1e-10, msg="explicit M must reproduce the scan")


@pytest.mark.parametrize("grouping", ["installed", "whole_width", "four_groups"])
def test_replay_mamba2_gated_norm_follows_the_module(grouping, monkeypatch):
    """The replay's gated RMSNorm takes its mean square over the groups the model's module uses, not the config's.

    The installed transformers normalises per ``n_groups`` group (``norm.group_size``, read at every forward);
    transformers ≤ 5.17 normalised the whole width with the same config. Setting ``group_size`` makes the installed
    module do the other readings; the replay must follow it (it used to group by ``mixer.n_groups``).
    """
    model = build("mamba2", seed=8).double()  # n_groups = 2; norm weights and out_proj moved off their init
    d = model.config.num_heads * model.config.head_dim
    for block in model.backbone.layers:
        norm = block.mixer.norm
        assert hasattr(norm, "group_size"), "this test expects a transformers whose gated norm has group_size"
        assert norm.group_size == d // model.config.n_groups, "installed module: one group per n_groups group"
        if grouping != "installed":
            monkeypatch.setattr(norm, "group_size", d if grouping == "whole_width" else d // 4)
    ids, mask = random_ids(2, 7, seed=9), left_pad_mask(2, 7, [0, 2])
    adapter = get_adapter(model)
    reference = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.detach()
    embeds = adapter.embeddings(ids).detach()
    plain = replay_logits(adapter, embeds, mask)
    keep = mask.bool()
    assert relative_error(plain[keep], reference[keep]) < HF_FP32_ROUNDING, f"replay != model logits ({grouping})"
    lrp = replay_logits(adapter, embeds, mask, lrp=True)
    torch.testing.assert_close(lrp, plain, rtol=0, atol=1e-12, msg="the LRP rules must not change the forward value")


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_lrp_gated_norm_is_the_rules_op_by_op(norm_before_gate):
    """MambaLRP on Mamba-2's gated RMSNorm: ``half_gate(v, γ)`` with γ from ``gated_norm_scale(lrp=True)`` has the
    value and the gradients of the rules applied op by op (SiLU as z·σ(z).detach(), half rule on the gate, group
    RMS denominator detached), with the gate before (HF) or after (mamba-ssm option) the norm."""
    gen = torch.Generator().manual_seed(0)
    v0, z0 = (torch.randn(2, 3, 8, generator=gen, dtype=F64) for _ in range(2))
    w, groups, eps = torch.randn(8, generator=gen, dtype=F64), 2, 1e-5

    def inv_rms(u):
        grouped = u.view(2, 3, groups, -1)
        return torch.rsqrt(grouped.square().mean(-1, keepdim=True) + eps).detach().expand_as(grouped).reshape(u.shape)

    def op_by_op(v, z):
        gate = lrp_activation("silu")(z)
        if norm_before_gate:
            return half_gate(v * inv_rms(v) * w, gate)
        u = half_gate(v, gate)
        return u * inv_rms(u) * w

    def shared(v, z):  # what mamba2_forward(lrp=True) computes
        return half_gate(v, gated_norm_scale(v, z, w, groups, eps, norm_before_gate, lrp=True))

    outs, grads = [], []
    for fn in (op_by_op, shared):
        v, z = v0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
        out = fn(v, z)
        outs.append(out.detach())
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, 8, dtype=F64)).sum(), (v, z)))
    plain = gated_norm_scale(v0, z0, w, groups, eps, norm_before_gate) * v0
    torch.testing.assert_close(outs[1], plain, rtol=0, atol=1e-14, msg="the LRP rules must not change the value")
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-14)
    for got, ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14, msg="gradients of the rules op by op")


def test_replay_rejects_unknown_family():
    class Other(ModelAdapter):
        supports = classmethod(lambda cls, m: True)
        blocks = embeddings = final_norm = lm_head = property(lambda self: None)
        mixer = mixer_trace = lambda self, *a: None  # noqa: E731

    with pytest.raises(NotImplementedError, match="Other"):
        replay_logits(Other(torch.nn.Linear(1, 1)), torch.zeros(1, 2, 3))


# -- Mamba-Attention ------------------------------------------------------------------------------------------------


def test_attention_hand_values():
    """Eq 15 by hand: h_0 = (1, 1), h_1 = (1, -1) → M = [[1, 0], [-1/e, -1]] in both channels."""
    model = _hand_model()
    ids = torch.tensor([[0, 1]])
    raw = mamba_attention(model, ids, normalize="none", dtype=F64)[0, 0]
    torch.testing.assert_close(raw, torch.tensor([[1.0, 0.0], [-1 / math.e, -1.0]], dtype=F64))
    # per-row min-max over (channels, j ≤ i): row 0 has one value (→ 1); row 1 maps -1/e → 1 and -1 → 0
    normed = mamba_attention(model, ids, dtype=F64)[0, 0]
    torch.testing.assert_close(normed, torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=F64))


def test_attention_is_channel_mean_of_eq15(kind):
    model = build(kind).double()
    ids, mask = random_ids(2, 5, seed=1), left_pad_mask(2, 5, [0, 1])
    tr = latim_captum.trace(model, ids, attention_mask=mask, dtype=F64)
    maps = mamba_attention(tr, normalize="none", layers=[-1])
    expected = hidden_attention(tr.layers[-1].ssm).mean(-1) * mask[:, :, None] * mask[:, None, :]
    torch.testing.assert_close(maps[:, 0], expected.to(F64))


# -- shared properties ----------------------------------------------------------------------------------------------

METHODS = {
    "attention": lambda m, ids, **kw: mamba_attention(m, ids, **kw),
    "attribution": lambda m, ids, **kw: mamba_attribution(m, ids, **kw),
    "attribution_chefer": lambda m, ids, **kw: mamba_attribution(m, ids, gradient="attention", **kw),
    "lrp": lambda m, ids, **kw: mamba_lrp(m, ids, **kw),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_shapes_causality_rows_padding(kind, method):
    model = build(kind).double()
    ids, mask = random_ids(2, 5, seed=2), left_pad_mask(2, 5, [0, 2])
    fn = METHODS[method]
    full = fn(model, ids, attention_mask=mask, dtype=F64)
    per_layer = method == "attention"
    assert full.shape == ((2, 2, 5, 5) if per_layer else (2, 5, 5))
    assert torch.all(_upper(full) == 0), "entries above the diagonal must be 0 (causality)"
    assert torch.all(full[1, ..., :2, :] == 0) and torch.all(full[1, ..., 2:, :2] == 0), "padding must get 0"
    assert full.abs().sum() > 0
    for pos in (2, -1):
        row = fn(model, ids, attention_mask=mask, dtype=F64, position=pos)
        torch.testing.assert_close(row, full[..., pos, :], msg=f"position={pos} must equal that row of the map")
    if method.startswith("attribution"):
        torch.testing.assert_close(full[1, 2:].sum(-1), torch.ones(3, dtype=F64), msg="rollout rows sum to 1")


def test_layer_selection_and_model_state():
    model = build("mamba1").double().train()
    ids = random_ids(1, 5)
    both = mamba_attention(model, ids, dtype=F64)
    torch.testing.assert_close(mamba_attention(model, ids, layers=-1, dtype=F64)[:, 0], both[:, 1])
    mamba_attribution(model, ids, dtype=F64, position=-1)
    assert model.training, "the model's train/eval mode must be restored"
    assert all(not block._forward_pre_hooks for block in model.backbone.layers), "hooks must be removed"


# -- Mamba-Attribution ----------------------------------------------------------------------------------------------


def test_attribution_single_layer_formula():
    """One layer: row i = rownorm(P⁺ ⊙ s + I)[i], with s from the model's own gradient."""
    model = _hand_model(gate=2.0)
    ids = torch.tensor([[0, 1, 2]])
    embeds = model.backbone.embeddings(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    target = logits[0, 2].argmax()
    (grad,) = torch.autograd.grad(logits[0, 2, target], embeds)
    s = grad[0].clamp(min=0).amax(-1)
    s = (s - s.min()) / (s.max() - s.min())
    pos = mamba_attention(model, ids, dtype=F64)  # M⁺ here: M_{2,s} = C_2 B_s e^{-(2-s)} with C_2 = 0.5/rms > 0
    attn = pos[0, 0] * s[None, :] + torch.eye(3, dtype=F64)
    expected = (attn / attn.sum(-1, keepdim=True))[2]
    torch.testing.assert_close(mamba_attribution(model, ids, position=2, dtype=F64)[0], expected)


# -- MambaLRP -------------------------------------------------------------------------------------------------------


def _zero_biases_(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and "dt" not in name:
                param.zero_()
    return model


def test_lrp_conservation(kind):
    """Σ_j R_ij = logit_i with the additive biases zero; with the conv bias the gap is its absorbed relevance."""
    ids, mask = random_ids(2, 6, seed=4), left_pad_mask(2, 6, [0, 1])
    model = _zero_biases_(build(kind, seed=5).double())
    adapter = get_adapter(model)
    logits = replay_logits(adapter, adapter.embeddings(ids).detach(), mask)
    rel = mamba_lrp(model, ids, attention_mask=mask, dtype=F64)
    picked = logits.gather(-1, logits.argmax(-1, keepdim=True))[..., 0] * mask
    torch.testing.assert_close(rel.sum(-1), picked, rtol=1e-9, atol=1e-9, msg="LRP must conserve the logit")
    biased = build(kind, seed=5).double()  # default conv bias, perturbed away from 0
    gap = mamba_lrp(biased, ids, dtype=F64).sum(-1) - get_adapter(biased).model(input_ids=ids).logits.max(-1)[0]
    assert gap.abs().max() > 1e-3, "the conv bias should absorb some relevance"


def test_lrp_matches_latim_identity_decomposition(kind):
    """1 layer, no conv activation: for j < i, R_ij = ½ u_i · T_i(x_j) (half rule on the gate; LaTIM eq 22/25).

    The conv bias is zeroed: LaTIM gives position s's bias to token s (footnote 3), LRP gives it to no token.
    """
    model = _zero_biases_(build(kind, act="linear", layers=1, seed=6).double())
    ids = random_ids(2, 5, seed=7)
    rel = mamba_lrp(model, ids, dtype=F64)
    tr = latim_captum.trace(model, ids, dtype=F64)
    contrib = latim_captum.contributions(tr, layer=0, activation="identity")
    u = tr.readout.projection(tr.readout.logits.argmax(-1))
    expected = 0.5 * torch.einsum("bijd,bid->bij", contrib, u)
    lower = torch.ones(5, 5, dtype=torch.bool).tril(-1)
    torch.testing.assert_close(rel[:, lower], expected[:, lower], rtol=1e-6, atol=1e-8)


def test_lrp_hand_value_single_token():
    """One token, no biases: R_00 is the whole logit, written out by hand for the hand-set layer.

    e = (2, ½), h = e / rms(e), B = h_0, C = h_1, Δ = 1 → M_00 = h_0 h_1; v = (M_00 + D) h; g = SiLU(2h);
    y = e + W_o (v ⊙ g); logit_1 = (y / rms(y))_1.
    """
    model = _hand_model(gate=2.0)
    e = torch.tensor([2.0, 0.5], dtype=F64)
    h = e / e.square().mean().sqrt()
    v = (h[0] * h[1] + 0.5) * h
    y = e + torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=F64) @ (v * torch.nn.functional.silu(2 * h))
    logit = (y / y.square().mean().sqrt())[1]
    rel = mamba_lrp(model, torch.tensor([[2]]), dtype=F64, target=1)
    torch.testing.assert_close(rel[0, 0, 0], logit)


# -- errors -----------------------------------------------------------------------------------------------------------


def test_errors():
    model = build("mamba1")
    ids = random_ids(1, 4)
    tr = latim_captum.trace(model, ids)
    with pytest.raises(TypeError, match="ModelTrace"):
        mamba_lrp(tr)
    with pytest.raises(TypeError, match="ModelTrace"):
        mamba_attribution(tr)
    with pytest.raises(ValueError, match="layers"):
        mamba_lrp(model, ids, layers=0)
    with pytest.raises(ValueError, match="'abs'"):
        mamba_attention(model, ids, normalize="abs")
    with pytest.raises(ValueError, match="'hessian'"):
        mamba_attribution(model, ids, gradient="hessian")
    with pytest.raises(ValueError, match="position 9"):
        mamba_lrp(model, ids, position=9)
    with pytest.raises(ValueError, match="position -5"):
        mamba_attention(tr, position=-5)
    with pytest.raises(ValueError, match="target token id 99"):
        mamba_lrp(model, ids, target=99)
    with pytest.raises(ValueError, match="LM head"):
        mamba_lrp(model.backbone, ids)
    with pytest.raises(ValueError, match="LM head"):
        mamba_attribution(model.backbone, ids)
    with pytest.raises(ValueError, match="layer 7"):
        mamba_attention(tr, layers=[7])


# -- fixes from the baselines review ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_attention_gradient_is_the_total_derivative(kind):
    """``Σ (∂y/∂M⁽ˡ⁾ ⊙ M⁽ˡ⁾) = d/dε y(M⁽ˡ⁾ → (1 + ε) M⁽ˡ⁾)``, later layers recomputing their own Δ, B, C from the
    changed stream: a central difference of the replay. With ``M`` detached (the old leaf) layer 0 missed it by
    ~5 %; only the last layer was exact."""
    from latim_captum.baselines.mamba_attribution import _attention_gradients

    model = build(kind, layers=3, seed=2).double()
    ids = random_ids(1, 6, seed=1)
    adapter = get_adapter(model)
    embeds = model.backbone.embeddings(ids).detach()
    row, target = 5, torch.full((1, 6), 7)
    got = _attention_gradients(adapter, embeds, None, [row], target, [0, 1, 2], reduce=lambda gm: gm.sum((1, 2, 3)))

    def logit_with_scaled(layer: int, eps: float) -> float:
        def mixing(idx, ssm, phi):
            m = hidden_attention(ssm) * (1 + eps if idx == layer else 1.0)
            return torch.einsum("bisc,bsc->bic", m, phi)

        with torch.no_grad():
            return float(replay_logits(adapter, embeds, None, mixing=mixing)[0, row, 7])

    eps = 1e-6
    for layer in range(3):
        fd = (logit_with_scaled(layer, eps) - logit_with_scaled(layer, -eps)) / (2 * eps)
        assert abs(float(got[row][layer][0]) - fd) <= 1e-6 * max(1.0, abs(fd)), f"layer {layer}"


def test_attribution_rollout_follows_the_model_order():
    model = build("mamba1", layers=3).double()
    ids = random_ids(1, 5)
    for gradient in ("hidden", "attention"):
        options = dict(gradient=gradient, dtype=F64)
        expected = mamba_attribution(model, ids, layers=[0, 2], **options)
        torch.testing.assert_close(mamba_attribution(model, ids, layers=[2, 0], **options), expected)
        torch.testing.assert_close(mamba_attribution(model, ids, layers=[-1, 0], **options), expected)
        with pytest.raises(ValueError, match="layer 0 twice"):
            mamba_attribution(model, ids, layers=[0, 0, 2], gradient=gradient)


def test_a_trace_passed_to_mamba_attention_is_checked():
    model = build("mamba2")
    ids = random_ids(1, 5)
    tr = latim_captum.trace(model, ids)
    with pytest.raises(ValueError, match="float64"):
        mamba_attention(tr, dtype=F64)
    with torch.no_grad():
        model.backbone.layers[0].mixer.out_proj.weight.mul_(1.5)
    with pytest.raises(RuntimeError, match="modified in place"):
        mamba_attention(tr)


@pytest.mark.parametrize("call", ["lrp", "attention_gradient"])
def test_replaying_baselines_warn_on_biased_left_padding(call):
    from latim_captum.adapters import base

    model = build("mamba1", use_bias=True)
    ids, mask = random_ids(2, 6), left_pad_mask(2, 6, [0, 2])
    base._LEFT_PADDING_WARNED.clear()
    with pytest.warns(UserWarning, match="left padding"):
        if call == "lrp":
            mamba_lrp(model, ids, attention_mask=mask, target=3, position=-1)
        else:
            mamba_attribution(model, ids, attention_mask=mask, gradient="attention", position=-1)


@pytest.mark.parametrize("name", ["gelu", "relu", "tanh"])
def test_lrp_activation_keeps_the_value(name):
    """``x · (a(x) / x)`` is ``a(x)``: the reference's ε in the denominator moved it by ~1e-6 relative."""
    from transformers.activations import ACT2FN

    x = torch.linspace(-3, 3, 601, dtype=F64)  # holds an exact 0
    torch.testing.assert_close(lrp_activation(name)(x), ACT2FN[name](x), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_hidden_attention_keeps_float32_precision_on_long_inputs(kind):
    """The decay's exponent is a difference of two prefix sums that grow with N: taken in float32 it lost ~3e-4 of
    the decay at N = 2048 (large Δ early, small late); in float64 then cast, float32 rounding only."""
    from latim_captum.traces import Mamba1SSM, Mamba2SSM

    gen = torch.Generator().manual_seed(0)
    n = 2048
    delta = torch.cat([torch.full((n // 2,), 2.0), torch.full((n - n // 2,), 0.01)]).to(F64)
    if kind == "mamba1":
        d, r = 2, 3
        ssm = Mamba1SSM(
            delta=delta[None, :, None].expand(1, n, d).contiguous(),
            A=-torch.rand(d, r, generator=gen, dtype=F64) * 4 - 1,
            B=torch.randn(1, n, r, generator=gen, dtype=F64),
            C=torch.randn(1, n, r, generator=gen, dtype=F64),
        )
    else:
        heads, p, s = 2, 2, 3
        ssm = Mamba2SSM(
            delta=delta[None, :, None].expand(1, n, heads).contiguous(),
            A=-torch.rand(heads, generator=gen, dtype=F64) * 4 - 1,
            B=torch.randn(1, n, 1, s, generator=gen, dtype=F64),
            C=torch.randn(1, n, 1, s, generator=gen, dtype=F64),
            head_dim=p,
        )
    as32 = type(ssm)(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in vars(ssm).items()})
    exact = hidden_attention(ssm, n - 4, n)
    got = hidden_attention(as32, n - 4, n).double()
    assert relative_error(got, exact) < 1e-5
