"""mamba-ssm adapter on CPU: plain-PyTorch stand-ins with mamba-ssm's names and forward semantics.

The stand-ins (``mamba_ssm_standin``) re-implement mamba-ssm's Block (fused add+norm layout), Mamba, Mamba2 and
MixerModel from its source; the CUDA tests (``test_mamba_ssm_cuda.py``) run the same checks on the real package.
"""

from __future__ import annotations

import pytest
import torch
from mamba_ssm_standin import MambaConfig, MambaLMHeadModel

import latim_captum as lc
from conftest import VOCAB, build, perturb_, random_ids
from latim_captum.adapters import ADAPTERS, MambaSSMAdapter, TraceMismatchError, get_adapter
from latim_captum.adapters.mamba_ssm import mamba_ssm_config_from_hf, mamba_ssm_state_dict_from_hf

F64 = torch.float64
REGISTERED_AT_IMPORT = MambaSSMAdapter in ADAPTERS


@pytest.fixture(autouse=True)
def registered():
    """Register the adapter as ``latim_captum.adapters`` does when ``mamba_ssm`` imports."""
    added = MambaSSMAdapter not in ADAPTERS
    if added:
        ADAPTERS.append(MambaSSMAdapter)
    yield
    if added:
        ADAPTERS.remove(MambaSSMAdapter)


def standin(layer: str = "Mamba1", seed: int = 0, n_layer: int = 2, **overrides) -> MambaLMHeadModel:
    ssm_cfg = {"layer": layer, "d_state": 4} if layer == "Mamba1" else {"layer": layer, "d_state": 8, "headdim": 8}
    ssm_cfg.update(overrides.pop("ssm_cfg", {}))
    torch.manual_seed(seed)
    cfg = MambaConfig(d_model=32, n_layer=n_layer, vocab_size=VOCAB, ssm_cfg=ssm_cfg, **overrides)
    return perturb_(MambaLMHeadModel(cfg).eval(), seed=seed + 1)


def from_hf(hf_model: torch.nn.Module) -> MambaLMHeadModel:
    model = MambaLMHeadModel(MambaConfig(**mamba_ssm_config_from_hf(hf_model.config)))
    model.load_state_dict(mamba_ssm_state_dict_from_hf(hf_model.state_dict()))
    return model.eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_same_weights_as_hf_give_the_same_maps(kind):
    """HF and mamba-ssm layouts of one model: same logits, same ℓ2 / ALTI / ALTI-Logit maps."""
    hf = build(kind, seed=4, residual_in_fp32=False).double()  # float32 rounding of x would hide 1e-7 errors
    ssm = from_hf(hf).double()
    assert get_adapter(ssm).name == "mamba-ssm"
    ids = random_ids(2, 19, seed=3)
    with torch.no_grad():  # HF returns float32 logits even from a float64 model
        assert _rel(ssm(ids).logits, hf(ids).logits) < 1e-6, "stand-in + converted weights != HF forward"
    # HF computes its RMSNorms in float32 even in a float64 model: the two forwards agree to float32 round-off
    hf_tr, ssm_tr = lc.trace(hf, ids, dtype=F64), lc.trace(ssm, ids, dtype=F64)
    for a, b in zip(hf_tr.layers, ssm_tr.layers):
        assert _rel(b.residual, a.residual) < 1e-6, f"layer {a.layer}: residual stream x^(l) differs"
    for method in ("l2", "alti"):
        ref = lc.interactions(hf_tr, method=method, activation="silu_gate")
        got = lc.interactions(ssm_tr, method=method, activation="silu_gate")
        assert _rel(got, ref) < 1e-5, method
    ref = lc.alti_logit(hf_tr, activation="silu_gate")
    got = lc.alti_logit(ssm_tr, activation="silu_gate")
    assert _rel(got.scores, ref.scores) < 1e-5 and _rel(got.offset, ref.offset) < 1e-5


LAYOUTS = [
    dict(fused_add_norm=True, residual_in_fp32=True),
    dict(fused_add_norm=False, residual_in_fp32=False),
    dict(fused_add_norm=True, residual_in_fp32=False, rms_norm=False),  # LayerNorms with bias everywhere
    dict(fused_add_norm=False, residual_in_fp32=True, rms_norm=False, tie_embeddings=False),
]
MAMBA2_OPTIONS = [
    {},
    {"ngroups": 2, "norm_before_gate": True, "D_has_hdim": True},
    {"rmsnorm": False, "conv_bias": False, "bias": True, "dt_limit": (0.05, 0.6)},
]


def _check_exact(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """silu_gate is exact: every mixer reconstructs (eq 23) and ALTI-Logit rows sum to logit − offset.

    With ``residual_in_fp32`` the model rounds the residual stream to float32 between blocks (even a float64
    model), so the sum over layers is exact only to float32 round-off.
    """
    tol = 1e-6 if model.config.residual_in_fp32 else 1e-9
    tr = lc.trace(model, ids, dtype=F64)
    err = lc.reconstruction_error(tr, activation="silu_gate")
    assert float(err.max()) < 1e-10, f"eq 23 reconstruction error {err.tolist()}"
    res = lc.alti_logit(tr, activation="silu_gate")
    gap = (res.scores.sum(-1) - (res.logits - res.offset)).abs().max() / res.logits.abs().max()
    assert float(gap) < tol, f"ALTI-Logit rows do not sum to the logit: {float(gap):.2e}"


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_layouts_mamba1(layout):
    model = standin("Mamba1", seed=2, **layout).double()
    _check_exact(model, random_ids(2, 17, seed=1))


@pytest.mark.parametrize(
    ("layout", "options"), list(zip(LAYOUTS[:3], MAMBA2_OPTIONS)) + [(LAYOUTS[3], MAMBA2_OPTIONS[1])], ids=str
)
def test_layouts_and_options_mamba2(layout, options):
    model = standin("Mamba2", seed=5, ssm_cfg=options, **layout).double()
    _check_exact(model, random_ids(2, 13, seed=2))


def test_fp32_model_traces_within_tolerance_and_fast_matches_ref():
    model = standin("Mamba2", seed=7, fused_add_norm=True, residual_in_fp32=True)
    ids = random_ids(1, 21, seed=5)
    tr = lc.trace(model, ids)
    ref = lc.interactions(tr, method="alti", activation="silu", backend="ref")
    fast = lc.interactions(tr, method="alti", activation="silu", backend="fast")
    assert _rel(fast, ref) < 1e-4


def test_inputs_embeds_match_ids_and_model_is_left_as_found():
    model = standin("Mamba1", seed=3).train()
    ids = random_ids(2, 9, seed=4)
    embeds = model.backbone.embedding(ids).detach()
    a = lc.interactions(model, ids, method="l2", dtype=F64)
    b = lc.interactions(model, inputs_embeds=embeds, method="l2", dtype=F64)
    assert _rel(b, a) < 1e-12
    assert model.training, "train mode must be restored"
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, f"hook left on {type(module).__name__}"


def test_padding_mask_is_rejected_but_all_ones_is_fine():
    model = standin("Mamba1")
    ids = random_ids(2, 6)
    mask = torch.ones(2, 6, dtype=torch.long)
    lc.trace(model, ids, attention_mask=mask)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match=r"no padding mask.*\[1, 0\]"):
        lc.trace(model, ids, attention_mask=mask)


def test_unsupported_variants_raise_clearly():
    with pytest.raises(NotImplementedError, match="gated-MLP part"):
        lc.trace(standin("Mamba2", ssm_cfg={"d_ssm": 32}), random_ids(1, 5))
    model = standin("Mamba1")
    model.backbone.layers[1].mlp = torch.nn.Linear(32, 32)
    with pytest.raises(NotImplementedError, match="layer 1: blocks with an MLP"):
        get_adapter(model)
    model.backbone.layers[1].mlp = None
    model.backbone.layers[0].mixer = torch.nn.MultiheadAttention(32, 2)
    with pytest.raises(NotImplementedError, match="layer 0: mixer MultiheadAttention is not supported"):
        get_adapter(model)


def test_registered_exactly_when_mamba_ssm_imports():
    """``latim_captum.adapters`` lists the adapter only where ``import mamba_ssm`` works (not on CPU machines)."""
    from latim_captum.adapters import _mamba_ssm_importable

    assert REGISTERED_AT_IMPORT == _mamba_ssm_importable()


def test_llm_generation_without_generate_stops_at_eos():
    """mamba-ssm models have no HF generate(): the greedy loop stops after the first end-of-sequence token and keeps
    it, as generate() does, so no row explains a token the model would not emit."""
    from test_captum_attr import _tokenizer

    tokenizer = _tokenizer()
    llm = lc.LatimLLMAttribution(lc.LatimALTILogit(standin("Mamba1", seed=2)), tokenizer)
    free = llm.attribute("w3 w7 w1", max_new_tokens=4)
    assert len(free.output_tokens) == 4 and free.token_attr.shape == (4, 3)
    first = tokenizer.convert_tokens_to_ids(free.output_tokens[0])
    by_args = llm.attribute("w3 w7 w1", gen_args={"max_new_tokens": 4, "eos_token_id": [first]})
    assert by_args.output_tokens == free.output_tokens[:1]
    tokenizer.add_special_tokens({"eos_token": free.output_tokens[0]})
    stopped = llm.attribute("w3 w7 w1", max_new_tokens=4)
    assert stopped.output_tokens == free.output_tokens[:1] and stopped.token_attr.shape == (1, 3)
    torch.testing.assert_close(stopped.token_attr[0], free.token_attr[0])


@pytest.mark.parametrize("layout", LAYOUTS[:2])
def test_a_vector_added_by_a_block_hook_is_refused(layout):
    """mamba-ssm's Block returns ``(mixer output, residual)``: a hook that steers the first adds a vector to the
    stream that no mixer made; the next block's input tells it."""
    model = standin("Mamba1", seed=2, **layout)
    ids = random_ids(1, 6)
    lc.alti_logit(model, ids)
    vector = 0.3 * torch.randn(32, generator=torch.Generator().manual_seed(0))

    def hook(_module, _args, output):
        return output[0] + vector, output[1]

    handle = model.backbone.layers[0].register_forward_hook(hook)
    try:
        with pytest.raises(TraceMismatchError, match="residual stream the traced sublayers add up to"):
            lc.alti_logit(model, ids)
    finally:
        handle.remove()
