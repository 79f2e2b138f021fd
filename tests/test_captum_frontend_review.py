"""Captum front end: options that were silently dropped or mis-paired, results Captum's own tools could not use, and
refusals that came late or named the wrong cause (each test fails on the code before its fix)."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.attr import NoiseTunnel

from conftest import build, random_ids
from latim_captum import LatimALTI, LatimALTILogit, LatimLLMAttribution
from latim_captum.attr import LatimALTILogitLayers

F64 = torch.float64


@pytest.fixture(scope="module")
def m1():
    return build("mamba1", seed=31)


def test_separate_delta_of_a_copy_says_which_defaults_it_assumed(m1):
    ids = random_ids(2, 6, seed=4)
    method = LatimALTILogit(m1)
    attr, delta = method.attribute(ids, target=[4, 9], position=2, return_convergence_delta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tensor attribute() returned: its own call's options, no warning
        torch.testing.assert_close(method.compute_convergence_delta(attr, end_point=ids, target=[4, 9]), delta)
        # Captum's usual pattern, with no option beyond target: nothing to assume either
        plain, plain_delta = method.attribute(ids, target=[4, 9], return_convergence_delta=True)
        torch.testing.assert_close(method.compute_convergence_delta(plain, end_point=ids, target=[4, 9]), plain_delta)
        layered = LatimALTILogitLayers(m1)
        one = layered.attribute(ids, target=[4, 9])
        layered.compute_convergence_delta(one, end_point=ids, target=[4, 9])
        # options given explicitly: nothing assumed
        given = method.compute_convergence_delta(attr.clone(), end_point=ids, target=[4, 9], position=2, contrast=None)
        torch.testing.assert_close(given, delta)
    assumed = r"defaults are assumed for position \(the last real token\), contrast \(no contrast\);"
    with pytest.warns(UserWarning, match=assumed):
        off = method.compute_convergence_delta(attr.detach(), end_point=ids, target=[4, 9])
    assert float((off - delta).abs().max()) > 1e-3  # the last token's total: the warning is about a real difference
    layers = LatimALTILogitLayers(m1)
    per_layer = layers.attribute(ids, target=[4, 9], layer=0)
    with pytest.warns(UserWarning, match=r"assumed for position .*, contrast .*, layer \(the last layer\)"):
        layers.compute_convergence_delta(per_layer[:], end_point=ids, target=[4, 9])


def test_position_with_return_matrix_is_refused(m1):
    ids = random_ids(1, 5, seed=1)
    with pytest.raises(ValueError, match="position selects one query row, and return_matrix=True returns every row"):
        LatimALTI(m1).attribute(ids, position=2, return_matrix=True)


def test_embeds_attributions_are_a_tensor_of_their_own(m1):
    from captum.metrics import sensitivity_max

    embeds = m1.get_input_embeddings()(random_ids(2, 5, seed=2)).detach()
    method = LatimALTILogit(m1)
    attr = method.attribute(embeds, target=[3, 7])
    assert attr.is_contiguous() and attr.view(2, -1).shape == (2, 5 * embeds.shape[-1])
    before = attr[0, 1].clone()
    attr[0, 0, 0] = 1.0  # one entry, not the whole token
    torch.testing.assert_close(attr[0, 1], before)
    assert float(attr[0, 0, 1]) != 1.0
    sens = sensitivity_max(method.attribute, embeds, target=[3, 7], n_perturb_samples=2)
    assert sens.shape == (2,) and bool(torch.isfinite(sens).all())


def test_llm_probabilities_and_generation_use_eval_mode(m1):
    from test_captum_attr import _tokenizer

    seen: list[bool] = []
    handle = m1.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    m1.train()
    try:
        res = LatimLLMAttribution(LatimALTILogit(m1), _tokenizer()).attribute("w3 w7 w1", max_new_tokens=2)
    finally:
        handle.remove()
        training_after = m1.training
        m1.eval()
    assert res.output_probs is not None and seen and not any(seen), seen
    assert training_after  # the mode it was found in comes back


def test_model_called_for_its_output_object_whatever_return_dict_says():
    model = build("mamba1", seed=5).double()
    model.config.return_dict = False
    ids = random_ids(2, 6, seed=3)
    _, delta = LatimALTILogit(model, dtype=F64).attribute(ids, target=[2, 5], return_convergence_delta=True)
    assert float(delta.abs().max()) < 1e-6  # HF's Mamba RMSNorm computes in float32 even in a float64 model


def test_inference_tensor_parameters_are_named():
    with torch.inference_mode():
        model = build("mamba1", seed=6)
    with pytest.raises(ValueError, match="parameters are inference tensors"):
        LatimALTI(model).attribute(random_ids(1, 4))


def test_unknown_activation_is_refused_when_the_class_is_made(m1):
    with pytest.raises(ValueError, match="unknown activation strategy 'bogus'"):
        LatimALTILogit(m1, activation="bogus")


def test_noise_tunnel_contrast_hint_names_its_order(m1):
    embeds = m1.get_input_embeddings()(random_ids(2, 4, seed=5)).detach()
    nt = NoiseTunnel(LatimALTILogit(m1))
    with pytest.raises(ValueError, match="repeat_interleave"):
        nt.attribute(embeds, nt_samples=3, stdevs=0.0, target=[1, 2], contrast=torch.tensor([3, 4]))
    # the documented form gives the clean attribution at zero noise
    clean = LatimALTILogit(m1).attribute(embeds, target=[1, 2], contrast=[3, 4])
    smooth = nt.attribute(embeds, nt_samples=3, stdevs=0.0, target=[1, 2],
                          contrast=torch.tensor([3, 4]).repeat_interleave(3))  # fmt: skip
    torch.testing.assert_close(smooth, clean)


def test_plot_comparison_refuses_maps_that_are_not_square():
    from latim_captum.viz import plot_comparison

    with pytest.raises(ValueError, match=r"maps must be square \[N, N\].*IG \(4, 32\)"):
        plot_comparison({"ALTI": torch.rand(4, 4), "IG": torch.rand(4, 32)})
    with pytest.raises(ValueError, match="maps must be square"):
        plot_comparison({"row": torch.rand(1, 4)})


def test_return_dict_false_that_breaks_the_models_own_forward_is_named():
    model = build("mamba2", seed=7)
    model.config.return_dict = False  # transformers' own Mamba-2 forward fails on this setting
    with pytest.raises(ValueError, match="own forward fails with config.return_dict=False"):
        LatimALTI(model).attribute(random_ids(1, 4))


def test_generation_keeps_a_pad_id_of_zero(m1):
    """A tokenizer whose pad id is 0 hands 0 to generate(), not its EOS id (``pad or eos`` read 0 as missing)."""
    from test_captum_attr import _tokenizer

    tokenizer = _tokenizer()
    tokenizer.pad_token, tokenizer.eos_token = "[UNK]", "w9"  # pad id 0, EOS id 9
    seen: dict = {}
    generate = m1.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return generate(*args, **kwargs)

    config_pad, m1.generation_config.pad_token_id = m1.generation_config.pad_token_id, None
    m1.generate = spy
    try:
        LatimLLMAttribution(LatimALTILogit(m1), tokenizer).attribute("w3 w7 w1", max_new_tokens=2)
    finally:
        del m1.generate
        m1.generation_config.pad_token_id = config_pad
    assert tokenizer.pad_token_id == 0 and seen["pad_token_id"] == 0, seen.get("pad_token_id")
