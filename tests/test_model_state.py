"""The model comes back as it was found (each module's train/eval flag, no hooks) from every front end, and inputs
LaTIM cannot honour are refused with an error that names them: sizes < 1, NaN/inf, wrapped or meta-device models,
gradients under inference_mode. Small ids types and subclasses of supported classes are accepted."""

from __future__ import annotations

import warnings

import pytest
import torch

import latim_captum
from conftest import VOCAB, build, left_pad_mask, random_ids
from latim_captum.adapters import TraceMismatchError, get_adapter
from latim_captum.baselines import mamba_attention, mamba_attribution, mamba_lrp
from latim_captum.methods import get_method


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def _mixed_modes(model: torch.nn.Module) -> list[bool]:
    """Train mode except the first block (and what it holds): no top-level mode describes it."""
    model.train()
    get_adapter(model).blocks[0].eval()
    return _modes(model)


FRONT_ENDS = {
    "interactions": lambda m, ids: latim_captum.interactions(m, ids, method="alti"),
    "alti_logit_row": lambda m, ids: latim_captum.alti_logit_row(m, ids),
    "captum": lambda m, ids: latim_captum.LatimALTILogit(m).attribute(ids),
    "saliency": lambda m, ids: get_method("saliency")(m, ids),
    "integrated_gradients": lambda m, ids: get_method("integrated_gradients")(m, ids),
    "mamba_attribution": lambda m, ids: mamba_attribution(m, ids, position=-1),
    "mamba_attribution_attention": lambda m, ids: mamba_attribution(m, ids, position=-1, gradient="attention"),
    "mamba_lrp": lambda m, ids: mamba_lrp(m, ids, position=-1),
    "mamba_attention": lambda m, ids: mamba_attention(m, ids),
}


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_each_modules_train_flag_comes_back(front_end):
    """``model.train(); model.backbone.layers[0].eval()`` must come back so, not flattened to all-train."""
    model = build("mamba1", seed=5)
    modes = _mixed_modes(model)
    FRONT_ENDS[front_end](model, random_ids(1, 5))
    assert _modes(model) == modes, "per-module train/eval flags changed"
    assert _hook_count(model) == 0


# --- sizes ---------------------------------------------------------------------------------------------------------

SIZE_CALLS = {
    "interactions block_rows": lambda m, ids, v: latim_captum.interactions(m, ids, method="alti", block_rows=v),
    "interactions fast block_rows": lambda m, ids, v: latim_captum.interactions(
        m, ids, method="l2", backend="fast", block_rows=v
    ),
    "alti_logit block_rows": lambda m, ids, v: latim_captum.alti_logit(m, ids, block_rows=v),
    "alti_rollout block_rows": lambda m, ids, v: latim_captum.alti_rollout(m, ids, block_rows=v),
    "alti_logit_row block": lambda m, ids, v: latim_captum.alti_logit_row(m, ids, block=v),
    "alti_logit_row chunk": lambda m, ids, v: latim_captum.alti_logit_row(m, ids, chunk=v),
    "alti_rollout_row chunk": lambda m, ids, v: latim_captum.alti_rollout_row(m, ids, chunk=v),
    "layer_maps block_rows": lambda m, ids, v: latim_captum.layer_maps(
        latim_captum.trace(m, ids).layers[0], "silu", ("l2",), block_rows=v
    ),
    "mamba_lrp row_batch": lambda m, ids, v: mamba_lrp(m, ids, row_batch=v),
    "mamba_attribution row_batch": lambda m, ids, v: mamba_attribution(m, ids, row_batch=v),
    "method max_sequences": lambda m, ids, v: get_method("saliency")(m, ids, max_sequences=v),
}


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("call", list(SIZE_CALLS))
def test_size_arguments_below_one_are_refused(call, value):
    """``block_rows=-1`` gave all-zero ℓ2/ALTI maps and ``chunk=-1`` a zero rollout row, silently; 0 fell back to
    the default unnoticed."""
    model = build("mamba1", seed=6)
    name = call.split()[-1]
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got {value}"):
        SIZE_CALLS[call](model, random_ids(1, 6), value)
    assert _hook_count(model) == 0


def test_size_arguments_must_be_ints():
    model = build("mamba1", seed=6)
    with pytest.raises(TypeError, match="block_rows must be a positive int, got 2.5"):
        latim_captum.interactions(model, random_ids(1, 4), block_rows=2.5)
    with pytest.raises(TypeError, match="chunk must be a positive int, got True"):
        latim_captum.alti_rollout_row(model, random_ids(1, 4), chunk=True)


# --- non-finite values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_embeds_are_refused(bad):
    """A NaN at position 1 used to give NaN maps, and spread into row 0 through the normalisations."""
    model = build("mamba2", seed=7)
    embeds = model.get_input_embeddings()(random_ids(1, 5)).detach()
    embeds[0, 1, 3] = bad
    with pytest.raises(ValueError, match=r"inputs_embeds holds NaN or inf \(first at \[batch, position\] \[0, 1\]\)"):
        latim_captum.interactions(model, inputs_embeds=embeds, method="alti")
    with pytest.raises(ValueError, match="inputs_embeds holds NaN or inf"):
        latim_captum.LatimALTI(model).attribute(embeds)
    with pytest.raises(ValueError, match="inputs_embeds holds NaN or inf"):
        mamba_lrp(model, inputs_embeds=embeds)


def test_non_finite_forward_is_refused_not_decomposed():
    """NaN weights give a NaN forward pass; the relative-error checks passed it (``NaN > tol`` is False)."""
    model = build("mamba1", seed=8)
    with torch.no_grad():
        model.backbone.layers[1].mixer.out_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 1: the mixer output holds NaN or inf values"):
        latim_captum.interactions(model, random_ids(1, 5), method="alti")
    assert _hook_count(model) == 0


def test_padded_positions_may_hold_anything():
    """The finiteness check reads the tokens the model reads: a padded position is never looked at."""
    model = build("mamba2", seed=8)
    ids = random_ids(2, 6)
    mask = left_pad_mask(2, 6, [2, 0])
    assert torch.isfinite(latim_captum.interactions(model, ids, attention_mask=mask, method="alti")).all()


def test_tolerance_checks_fail_closed_on_nan(monkeypatch):
    """A NaN relative error (our recomputation went non-finite) is a mismatch, not a pass."""
    import latim_captum.adapters.base as base

    model = build("mamba1", seed=9)
    monkeypatch.setattr(base, "relative_error", lambda *_: float("nan"))
    with pytest.raises(TraceMismatchError, match="layer 0: recomputed mixer output differs from the model's by nan"):
        latim_captum.trace(model, random_ids(1, 4))
    monkeypatch.undo()
    monkeypatch.setattr(base, "_logits_error", lambda *_: float("nan"))
    with pytest.raises(TraceMismatchError, match="recomputed logits differ from the model's by nan"):
        latim_captum.trace(model, random_ids(1, 4))


def test_hybrid_tolerance_check_fails_closed_on_nan(monkeypatch):
    from test_hybrids import build_hybrid

    import latim_captum.adapters.base as base  # the hybrids' checks are base.check_recomputed

    model, _ = build_hybrid("bamba", seed=2)
    monkeypatch.setattr(base, "relative_error", lambda *_: float("nan"))
    with pytest.raises(TraceMismatchError, match="differs from the model's by nan"):
        latim_captum.trace(model, random_ids(1, 4))


# --- small ones ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_small_integer_ids_are_accepted(dtype):
    model = build("mamba1", seed=10)
    ids = random_ids(1, 6)
    expected = latim_captum.interactions(model, ids, method="alti")
    assert torch.equal(latim_captum.interactions(model, ids.to(dtype), method="alti"), expected)
    method = latim_captum.LatimALTI(model)
    assert torch.equal(method.attribute(ids.to(dtype)), method.attribute(ids))


def test_meta_device_model_is_refused_by_name():
    from transformers import MambaConfig, MambaForCausalLM

    with torch.device("meta"):
        model = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=VOCAB))
    with pytest.raises(ValueError, match="weights on the meta device .*load its weights first"):
        latim_captum.interactions(model, random_ids(1, 4))
    with pytest.raises(ValueError, match="meta device"):
        latim_captum.LatimALTI(model)


@pytest.mark.parametrize(
    "wrap,attr",
    [(torch.nn.DataParallel, "module"), (lambda m: torch.compile(m, backend="eager"), "_orig_mod")],
    ids=["DataParallel", "torch.compile"],
)
def test_wrapped_models_name_the_model_inside(wrap, attr):
    model = build("mamba1", seed=11)
    wrapped = wrap(model)
    with pytest.raises(TypeError, match=rf"wraps a MambaForCausalLM; pass the model itself \(model\.{attr}\)"):
        latim_captum.interactions(wrapped, random_ids(1, 4))
    with pytest.raises(TypeError, match=rf"model\.{attr}"):
        latim_captum.LatimL2(wrapped)
    maps = latim_captum.interactions(getattr(wrapped, attr), random_ids(1, 4))  # the hint works
    assert maps.shape == (1, 2, 4, 4)


def test_subclass_of_a_supported_class_is_supported():
    """A user's subclass (e.g. one adding a method) was refused by its exact class name."""
    from transformers import Mamba2ForCausalLM

    class MyMamba2(Mamba2ForCausalLM):
        def describe(self) -> str:
            return "mine"

    model = build("mamba2", seed=12)
    mine = MyMamba2(model.config)
    mine.load_state_dict(model.state_dict())
    mine.eval()
    ids = random_ids(1, 6)
    assert type(get_adapter(mine)).__name__ == "HFMamba2Adapter"
    assert torch.allclose(latim_captum.interactions(mine, ids), latim_captum.interactions(model, ids), atol=1e-6)


def test_the_closest_adapter_in_the_class_hierarchy_wins():
    """A family whose model class derives from another's gets its own adapter, not its parent's."""
    from transformers import MambaForCausalLM

    from latim_captum.adapters import ADAPTERS, HFMambaAdapter, register_adapter

    class ChildMamba(MambaForCausalLM):
        pass

    class ChildAdapter(HFMambaAdapter):
        causal_lm_class = "ChildMamba"

    ADAPTERS.append(ChildAdapter)  # tried last, and still chosen: it names the model's own class
    try:
        model = ChildMamba(build("mamba1").config)
        assert type(get_adapter(model)) is ChildAdapter
        assert type(get_adapter(build("mamba1"))) is HFMambaAdapter
    finally:
        ADAPTERS.remove(ChildAdapter)
    assert register_adapter  # (the public way to add one)


@pytest.mark.parametrize("front_end", ["mamba_lrp", "mamba_attribution", "saliency"])
def test_gradient_methods_under_inference_mode_say_why(front_end):
    model = build("mamba1", seed=13)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="torch.inference_mode\\(\\) forbids gradients"):
        FRONT_ENDS[front_end](model, random_ids(1, 4))
    assert _modes(model) == [False] * len(_modes(model)) and _hook_count(model) == 0


def test_latim_maps_work_under_inference_mode():
    """LaTIM itself needs no gradient: inference_mode is fine."""
    model = build("mamba1", seed=13)
    ids = random_ids(1, 5)
    expected = latim_captum.interactions(model, ids, method="alti")
    with torch.inference_mode():
        assert torch.equal(latim_captum.interactions(model, ids, method="alti"), expected)


# --- hybrids and left padding ---------------------------------------------------------------------------------------


def test_hybrid_with_left_padding_warns_once(recwarn):
    """HF hybrids' own logits move by a few per cent under left padding (their attention/conv caches, upstream):
    LaTIM explains them faithfully, and says so once."""
    from test_hybrids import build_hybrid

    from latim_captum.adapters import base

    base._LEFT_PADDING_WARNED.clear()
    model, _ = build_hybrid("jamba", seed=4)
    ids = random_ids(2, 6)
    mask = left_pad_mask(2, 6, [2, 0])
    warnings.simplefilter("always")
    latim_captum.interactions(model, ids, attention_mask=mask, method="alti")
    latim_captum.interactions(model, ids, attention_mask=mask, method="alti")
    left = [w for w in recwarn if "left padding" in str(w.message)]
    assert len(left) == 1, [str(w.message) for w in recwarn]
    assert "JambaForCausalLM" in str(left[0].message) and "docs/hybrids" in str(left[0].message)


def test_hybrid_without_padding_does_not_warn(recwarn):
    from test_hybrids import build_hybrid

    from latim_captum.adapters import base

    base._LEFT_PADDING_WARNED.clear()
    model, _ = build_hybrid("jamba", seed=4)
    warnings.simplefilter("always")
    latim_captum.interactions(model, random_ids(2, 6), method="alti")
    latim_captum.interactions(model, random_ids(2, 6), attention_mask=torch.ones(2, 6, dtype=torch.long))
    assert not [w for w in recwarn if "left padding" in str(w.message)]
    # a pure Mamba model with left padding: no warning (its maps are those of the unpadded input)
    latim_captum.interactions(build("mamba1"), random_ids(2, 6), attention_mask=left_pad_mask(2, 6, [2, 0]))
    assert not [w for w in recwarn if "left padding" in str(w.message)]
