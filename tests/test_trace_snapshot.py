"""A trace is a record of one forward pass, and a dataset run of one model: later edits cannot leak into them.

- The trace keeps the model's own weight tensors where the compute dtype is the model's (no copy): an in-place
  edit after tracing (an ablation, a training step) changed its maps, which then no longer summed to the logit.
  Such a trace is now refused; the caller's ``inputs_embeds`` is copied.
- A finished trace cannot honour a request for another dtype or store: refused, not ignored.
- ``interactions(method="alti_logit", layers=...)`` accepted any ``layers`` and changed nothing: refused.
- ``attribute_dataset`` resumed over shards of another checkpoint of the same config: refused.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import latim_captum as lc
import latim_captum.dataset as ds
from conftest import build, random_ids


@pytest.mark.parametrize("edit", ["weight", "embeds"])
def test_a_trace_is_refused_after_the_model_is_edited_and_unaffected_by_the_callers_embeds(kind, edit):
    model = build(kind)
    ids = random_ids(2, 6)
    embeds = model.get_input_embeddings()(ids).detach().clone()
    tr = lc.trace(model, inputs_embeds=embeds)
    before = lc.interactions(tr, method="alti")  # reads the residual stream, embeddings included
    assert tr.layers[0].out_weight.data_ptr() == model.backbone.layers[0].mixer.out_proj.weight.data_ptr()
    if edit == "weight":
        with torch.no_grad():
            model.backbone.layers[0].mixer.out_proj.weight.mul_(0.5)  # an ablation, in place
        with pytest.raises(RuntimeError, match="modified in place after this trace was made"):
            lc.interactions(tr, method="alti")
        with pytest.raises(RuntimeError, match="trace the model again"):
            lc.alti_logit_row(tr, position=-1)
        fresh = lc.trace(model, inputs_embeds=embeds)  # a new trace of the edited model is fine
        assert not torch.allclose(lc.interactions(fresh, method="alti"), before)
    else:
        embeds.add_(1.0)  # the caller reuses its tensor (a noise loop)
        torch.testing.assert_close(lc.interactions(tr, method="alti"), before, rtol=0, atol=0)


def test_a_finished_trace_refuses_a_request_it_cannot_meet():
    model = build("mamba2")
    tr = lc.trace(model, random_ids(1, 5))  # float32, on the device
    with pytest.raises(ValueError, match="made in torch.float32"):
        lc.interactions(tr, method="l2", dtype=torch.float64)
    with pytest.raises(ValueError, match="keeps its layers on the device"):
        lc.alti_logit_row(tr, position=-1, trace_store="host")
    lc.interactions(lc.trace(model, random_ids(1, 5), dtype=torch.float64), method="l2", dtype=torch.float64)


def test_alti_logit_refuses_layers():
    model = build("mamba1")
    with pytest.raises(ValueError, match="aggregates every layer"):
        lc.interactions(model, random_ids(1, 5), method="alti_logit", layers=[0])


def test_a_dataset_run_is_not_resumed_with_another_checkpoint_of_the_same_config(tmp_path):
    from latim_captum.models import load_copy_model

    model, tok = load_copy_model("mamba1")
    examples = ds.examples_from_records([{"prompt": "abcd|ab"}, {"prompt": "bca|"}])
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), shard_size=1, progress=False)
    (tmp_path / "shard-00001.safetensors").unlink()  # the run was cut
    tuned = type(model)(model.config).eval()  # a fine-tune's stand-in: same config, other weights
    tuned.load_state_dict(model.state_dict())
    with torch.no_grad():
        tuned.backbone.layers[0].mixer.out_proj.weight.add_(0.01)
    with pytest.raises(ValueError, match="other model"):
        ds.attribute_dataset(tuned, tok, examples, tmp_path, methods=("l2",), shard_size=1, progress=False)
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), shard_size=1, progress=False)  # resumes


def test_granite_reads_each_layers_own_residual_multiplier():
    """The decoder layer scales by its own ``residual_multiplier``; the adapter read the config's. With the two
    apart, every invariant still held (the MLP sublayer, read as ``y − x'``, absorbed the difference) while the mixer
    sublayers were off by the ratio."""
    from test_hybrids import build_hybrid

    model, _ = build_hybrid("granite")
    for layer in model.model.layers:
        layer.residual_multiplier = 0.3  # the config says 0.6
    ids = random_ids(1, 7)
    after_mixer = []  # the real stream after each mixer: the input of the norm before the MLP
    hooks = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, args: after_mixer.append(args[0].detach()))
        for layer in model.model.layers
    ]
    try:
        tr = lc.trace(model, ids)
    finally:
        for h in hooks:
            h.remove()
    mixers = [layer for layer, kind in zip(tr.layers, tr.kinds) if kind not in ("mlp", "moe")]
    assert len(mixers) == len(after_mixer) == 3
    for got, real in zip(mixers, after_mixer):
        torch.testing.assert_close(got.block_output, real.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_left_padding_with_an_in_projection_bias_warns(kind):
    """The bias reaches real tokens through the convolution, so the model's own logits move with left padding and
    the maps give padding columns a share; without a bias there is nothing to say."""
    from conftest import left_pad_mask
    from latim_captum.adapters import base

    ids, mask = random_ids(2, 6), left_pad_mask(2, 6, [0, 2])
    base._LEFT_PADDING_WARNED.clear()
    with pytest.warns(UserWarning, match="left padding and an in-projection bias"):
        lc.interactions(build(kind, use_bias=True), ids, attention_mask=mask, method="l2")
    base._LEFT_PADDING_WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lc.interactions(build(kind), ids, attention_mask=mask, method="l2")
