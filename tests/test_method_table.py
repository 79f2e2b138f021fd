"""The method table (latim_captum.catalog) is what every front end offers: each entry reaches the functions, the
registry, the Captum classes, the Inseq methods and the CLI, and ``l1`` (added by the recipe of
docs/contributing.rst: one table entry) gives the same ℓ1 maps everywhere."""

from __future__ import annotations

import json

import pytest
import torch

import latim_captum as lc
from conftest import VOCAB, build, random_ids
from latim_captum import attr, catalog
from latim_captum.methods import METHOD_REGISTRY, get_method


def test_every_entry_reaches_every_front_end_it_names():
    for spec in catalog.METHOD_TABLE:
        if spec.family == "latim":
            assert spec.measure in lc.METHODS, spec.name
            for suffix, activation in catalog.REGISTRY_ACTIVATIONS.items():
                method = get_method(spec.name + suffix)
                assert method.spec is spec and method.activation == activation
        else:
            assert get_method(spec.name).spec is spec
        if spec.captum:
            cls = attr.CAPTUM_CLASSES[spec.captum]
            assert getattr(attr, spec.captum) is cls and cls.method_spec is spec
            assert (cls.per_layer, cls.uses_target, cls.get_name()) == (spec.per_layer, spec.uses_target, spec.label)
    assert set(METHOD_REGISTRY) == set(catalog.registry_names())
    with pytest.raises(ValueError, match="unknown method 'l7'; choose from l1, l2"):
        catalog.get("l7")


def test_every_inseq_identifier_is_registered():
    inseq = pytest.importorskip("inseq")
    from latim_captum.inseq import INSEQ_METHODS

    registered = inseq.list_feature_attribution_methods()
    for spec in catalog.METHOD_TABLE:
        for name in spec.inseq:
            assert name in registered, name
            assert INSEQ_METHODS[name].method_spec is spec and INSEQ_METHODS[name].uses_target == spec.uses_target


def test_l1_is_the_l1_norm_of_the_contribution_vectors_on_every_front_end(tmp_path):
    """ℓ1 (eq 5 with p = 1) from ``interactions``, ``LatimL1``, the registry and the CLI: ``Σ_d |T_i(x_j)_d|``."""
    model = build("mamba2", seed=4)
    ids = random_ids(1, 7, seed=4)
    maps = lc.interactions(model, ids, method="l1", activation="silu_gate")
    for layer in range(maps.shape[1]):
        vectors = lc.contributions(model, ids, layer=layer, activation="silu_gate")
        torch.testing.assert_close(maps[:, layer], vectors.abs().sum(-1), msg=f"ℓ1 of layer {layer}")
    assert not torch.allclose(maps, lc.interactions(model, ids, method="l2", activation="silu_gate"))
    captum = attr.LatimL1(model, activation="silu_gate").attribute(ids, layer="all", return_matrix=True)
    torch.testing.assert_close(captum, maps)
    row = attr.LatimL1(model, activation="silu_gate").attribute(ids, position=4, layer=1)
    torch.testing.assert_close(row, maps[:, 1, 4])
    torch.testing.assert_close(get_method("l1_silu_gate")(model, ids), maps)
    # the registry's plain name is the paper's silu (benchmarks reproduce the paper); functions default to silu_gate
    paper = lc.interactions(model, ids, method="l1", activation="silu")
    torch.testing.assert_close(get_method("l1")(model, ids), paper)
    torch.testing.assert_close(lc.interactions(model, ids, method="l1"), maps)

    from latim_captum.cli import main
    from latim_captum.copying import copy_tokenizer

    path = tmp_path / "tiny"
    build("mamba1", layers=2).save_pretrained(path)
    copy_tokenizer(VOCAB).save_pretrained(path)
    out = tmp_path / "s.json"
    args = ["attribute", "--model", str(path), "--text", "abc|ab", "--method", "l1", "--layer", "0"]
    assert main([*args, "--out", str(tmp_path / "f.png"), "--json", str(out)]) == 0
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(path)
    ids = copy_tokenizer(VOCAB)("abc|ab", return_tensors="pt", add_special_tokens=False).input_ids
    expected = lc.interactions(saved, ids, method="l1", layers=0)[0, 0]  # silu_gate, the CLI's default too
    torch.testing.assert_close(torch.tensor(json.loads(out.read_text())["scores"]), expected)
    assert main([*args, "--activation", "silu", "--out", str(tmp_path / "f.png"), "--json", str(out)]) == 0
    paper = lc.interactions(saved, ids, method="l1", layers=0, activation="silu")[0, 0]
    torch.testing.assert_close(torch.tensor(json.loads(out.read_text())["scores"]), paper)
    assert not torch.allclose(paper, expected)
    clash = ["attribute", "--model", str(path), "--text", "abc|ab", "--method", "l1_silu_gate", "--activation", "silu"]
    assert main([*clash, "--out", str(tmp_path / "f.png")]) == 2


def test_l1_through_inseq():
    inseq = pytest.importorskip("inseq")
    from test_inseq import PROMPT, TEXT, ids_of, make_model, make_tokenizer

    tok = make_tokenizer()
    model = make_model("mamba1", layers=2)
    out = inseq.load_model(model, "latim_l1", tokenizer=tok).attribute(PROMPT, TEXT, show_progress=False)
    got = out.sequence_attributions[0].target_attributions  # [N, steps, L]
    ids = ids_of(tok, TEXT)
    ref = lc.interactions(model, ids[:, :-1], method="l1")[0]
    n_prompt = len(PROMPT.split())
    for col, step in enumerate(range(n_prompt, ids.shape[1])):
        torch.testing.assert_close(got[:step, col], ref[:, step - 1, :step].T)
