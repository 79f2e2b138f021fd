"""The Captum classes: Captum's call shapes and conventions, the LaTIM invariants through them, and bad input."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    Attribution,
    InputXGradient,
    LayerIntegratedGradients,
    LLMAttributionResult,
    NoiseTunnel,
    Saliency,
)
from transformers import GPT2Config, GPT2LMHeadModel, MambaConfig, MambaModel

import latim_captum
from conftest import VOCAB, build, left_pad_mask, random_ids
from latim_captum import LatimALTI, LatimALTILogit, LatimL2, LatimLLMAttribution, TokenMapAttribution
from latim_captum.adapters import verification_tolerance
from latim_captum.aggregate import lp_scores

CLASSES = (LatimL2, LatimALTI, LatimALTILogit)


def _embed(model, ids):
    return model.get_input_embeddings()(ids).detach()


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def m1():
    return build("mamba1", seed=3)


@pytest.mark.parametrize("cls", CLASSES)
def test_is_captum_attribution_with_readable_name(m1, cls):
    method = cls(m1)
    assert isinstance(method, Attribution)
    assert method.forward_func is m1
    assert method.get_name().startswith("LaTIM (")
    assert method.has_convergence_delta() == (cls is LatimALTILogit)
    assert hasattr(type(method).attribute, "__wrapped__"), "attribute must be wrapped by captum.log.log_usage"


@pytest.mark.parametrize("cls", CLASSES)
def test_shapes_and_tupleness_follow_the_input(m1, cls):
    ids = random_ids(3, 6, seed=1)
    emb = _embed(m1, ids)
    method = cls(m1)
    out = method.attribute(ids)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 6)
    (out_t,) = method.attribute((ids,))
    assert torch.equal(out_t, out)
    out_e = method.attribute(emb)
    assert out_e.shape == emb.shape
    (out_et,) = method.attribute((emb,))
    assert out_et.shape == emb.shape
    # each token's score is spread evenly over its embedding entries: summing over D gives the id result
    assert torch.allclose(out_e.sum(-1), out, atol=1e-5)
    assert torch.allclose(out_e[..., 0], out_e[..., -1])
    assert method.attribute(ids, return_matrix=True).shape == (3, 6, 6)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_rows_equal_interactions(kind):
    model = build(kind, seed=4)
    ids = random_ids(2, 7, seed=2)
    maps_l2 = latim_captum.interactions(model, ids, method="l2")
    maps_alti = latim_captum.interactions(model, ids, method="alti")
    l2 = LatimL2(model)
    assert torch.allclose(l2.attribute(ids), maps_l2[:, -1, -1], atol=1e-6), "default: last layer, last token"
    assert torch.allclose(l2.attribute(ids, layer=0, position=3), maps_l2[:, 0, 3], atol=1e-6)
    assert torch.allclose(l2.attribute(ids, layer="all", position=-2), maps_l2[:, :, -2], atol=1e-6)
    assert torch.allclose(l2.attribute(ids, layer=[1, 0], return_matrix=True), maps_l2[:, [1, 0]], atol=1e-6)
    alti = LatimALTI(model)
    assert torch.allclose(alti.attribute(ids, layer=-2, position=4), maps_alti[:, 0, 4], atol=1e-6)
    rolled = maps_alti[:, 1] @ maps_alti[:, 0]  # R = P^(2) P^(1)
    assert torch.allclose(alti.attribute(ids), rolled[:, -1], atol=1e-6), "default: rollout"
    res = latim_captum.alti_logit(model, ids)
    assert torch.allclose(LatimALTILogit(model).attribute(ids, position=2), res.scores[:, 2], atol=1e-6)


def test_lp_norm_order(m1):
    ids = random_ids(1, 5, seed=3)
    l1 = latim_captum.interactions(m1, ids, method="l1", layers=[0])[:, 0]
    assert torch.allclose(LatimL2(m1, p=1).attribute(ids, layer=0, return_matrix=True), l1, atol=1e-6)
    contrib = latim_captum.contributions(m1, ids, layer=1)
    for p in (3, float("inf")):
        got = LatimL2(m1, p=p).attribute(ids, layer=1, return_matrix=True)
        assert torch.allclose(got, lp_scores(contrib, p=p), atol=1e-6), f"p={p}"
    with pytest.raises(ValueError, match="p must be a number >= 1.*0.5"):
        LatimL2(m1, p=0.5)


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_alti_rows_sum_to_one(kind):
    model = build(kind, seed=5)
    ids = random_ids(2, 6, seed=4)
    alti = LatimALTI(model, activation="silu")
    for layer in ("rollout", 0, -1):
        mat = alti.attribute(ids, layer=layer, return_matrix=True)
        assert torch.allclose(mat.sum(-1), torch.ones(2, 6), atol=1e-5), f"eq 6 rows sum to 1 (layer={layer})"
        assert bool((mat >= 0).all())


@pytest.mark.parametrize(
    "kind,act,activation",
    [("mamba1", "silu", "silu_gate"), ("falcon", "silu", "silu_gate"), ("mamba2", "silu", "silu_gate")]
    + [(k, "linear", "identity") for k in ("mamba1", "mamba2")],
)
def test_convergence_delta_is_zero_for_exact_strategies(kind, act, activation):
    model = build(kind, act=act, seed=6).double()
    ids = random_ids(2, 7, seed=5)
    method = LatimALTILogit(model, activation=activation, dtype=torch.float64)
    attr, delta = method.attribute(ids, position=-1, return_convergence_delta=True)
    assert delta.shape == (2,)
    res = latim_captum.alti_logit(model, ids, activation=activation, dtype=torch.float64)
    # HF's RMSNorms compute in float32 even in float64 models, so the model's own logit carries float32 rounding
    tol = 1e-6 * float(res.logits.abs().max())
    assert delta.abs().max() < tol, f"eq 8: Σ_j C_ij = logit − offset, got delta {delta}"
    # Captum's sign: delta = Σ attributions − (F(x) − F(baseline)), the offset playing F(baseline)
    assert torch.allclose(attr.sum(-1), res.logits[:, -1] - res.offset[:, -1] + delta, atol=1e-12)
    # the logit it explains is the model's own logit of its predicted next token
    logits = model(ids).logits[:, -1].double()
    pred = logits.argmax(-1)
    assert torch.allclose(res.logits[:, -1], logits.gather(-1, pred[:, None])[:, 0], atol=1e-12)
    (attr_e,), delta_e = method.attribute((_embed(model, ids),), return_convergence_delta=True)
    assert torch.allclose(delta_e, delta, atol=tol) and torch.allclose(attr_e.sum((1, 2)), attr.sum(-1), atol=tol)
    _, delta_m = method.attribute(ids, return_matrix=True, return_convergence_delta=True)
    assert delta_m.shape == (2, 7) and delta_m.abs().max() < tol


def test_convergence_delta_measures_the_approximation(m1):
    ids = random_ids(2, 7, seed=6)
    _, delta = LatimALTILogit(m1, activation="silu").attribute(ids, return_convergence_delta=True)
    res = latim_captum.alti_logit(m1, ids, activation="silu")
    expected = res.scores[:, -1].sum(-1) - (res.logits[:, -1] - res.offset[:, -1])  # Captum's sign
    assert torch.allclose(delta, expected, atol=1e-5)
    assert delta.abs().max() > 1e-4, "the SiLU approximation is not exact, so its delta must not vanish"


def test_targets_in_captum_forms(m1):
    ids = random_ids(2, 6, seed=7)
    method = LatimALTILogit(m1, activation="silu_gate")
    for target, expected in [(5, [5, 5]), ([3, 9], [3, 9]), (torch.tensor([1, 2]), [1, 2]), (torch.tensor(4), [4, 4])]:
        res = latim_captum.alti_logit(m1, ids, activation="silu_gate", target=torch.tensor(expected))
        got, delta = method.attribute(ids, target=target, position=3, return_convergence_delta=True)
        assert torch.allclose(got, res.scores[:, 3], atol=1e-6), f"target={target!r}"
        assert delta.abs().max() < 1e-4
    # target-free maps validate but ignore a target, so one pipeline can pass it to every method
    assert torch.equal(LatimALTI(m1).attribute(ids, target=[1, 2]), LatimALTI(m1).attribute(ids))


@pytest.mark.parametrize("cls", CLASSES)
def test_attention_mask_in_additional_forward_args(cls):
    model = build("mamba1", seed=8).double()
    ids = random_ids(1, 5, seed=8)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = left_pad_mask(1, 7, [2])
    method = cls(model, dtype=torch.float64)
    plain = method.attribute(ids)
    for extra in (mask, (mask,)):
        pad = method.attribute(padded, additional_forward_args=extra)
        assert torch.allclose(pad[:, 2:], plain, atol=1e-9)
        assert bool((pad[:, :2] == 0).all())


def test_noise_tunnel_on_embeddings(m1):
    ids = random_ids(2, 5, seed=9)
    emb = _embed(m1, ids)
    torch.manual_seed(0)
    nt = NoiseTunnel(LatimALTILogit(m1, activation="silu_gate"))
    attr, delta = nt.attribute(emb, nt_samples=3, stdevs=0.02, target=[4, 7], return_convergence_delta=True)
    assert attr.shape == emb.shape and delta.shape == (6,)
    assert delta.abs().max() < 1e-4, "every noisy sample is still an exact decomposition"
    nt_alti = NoiseTunnel(LatimALTI(m1))
    smooth = nt_alti.attribute((emb,), nt_samples=4, stdevs=0.02, additional_forward_args=torch.ones(2, 5))
    assert isinstance(smooth, tuple) and smooth[0].shape == emb.shape
    assert torch.allclose(smooth[0].sum((1, 2)), torch.ones(2), atol=1e-5), "a mean of distributions is one"


def test_side_by_side_with_captum_gradient_methods(m1):
    ids = random_ids(2, 6, seed=10)
    emb = _embed(m1, ids)
    pred = m1(ids).logits[:, -1].argmax(-1)

    def next_logits(input_ids=None, inputs_embeds=None):
        return m1(input_ids=input_ids, inputs_embeds=inputs_embeds).logits[:, -1]

    def from_embeds(x):
        return next_logits(inputs_embeds=x)

    latim = LatimALTILogit(m1, activation="silu_gate").attribute(ids, target=pred)
    latim_e = LatimALTILogit(m1, activation="silu_gate").attribute(emb, target=pred)
    lig = LayerIntegratedGradients(next_logits, m1.backbone.embeddings).attribute(ids, target=pred, n_steps=8)
    sal = Saliency(from_embeds).attribute(emb.clone().requires_grad_(), target=pred)
    ixg = InputXGradient(from_embeds).attribute(emb.clone().requires_grad_(), target=pred)
    for other in (lig, sal, ixg):
        assert other.shape == latim_e.shape == emb.shape
        assert other.sum(-1).shape == latim.shape == (2, 6)
        assert other.dtype == latim.dtype == torch.float32


def test_model_state_restored(m1):
    m1.train()
    try:
        LatimALTILogit(m1).attribute(random_ids(1, 4))
        assert m1.training
    finally:
        m1.eval()
    assert _hook_count(m1) == 0


def test_bad_input_raises_clear_errors(m1):
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    for cls in CLASSES:
        with pytest.raises(TypeError, match="GPT2LMHeadModel is not a supported Mamba model"):
            cls(gpt2)
    with pytest.raises(TypeError, match="needs a model with an LM head; MambaModel"):
        LatimALTILogit(MambaModel(MambaConfig(hidden_size=16, state_size=4, num_hidden_layers=1, vocab_size=20)))
    ids = random_ids(2, 5)
    alti, logit, l2 = LatimALTI(m1), LatimALTILogit(m1), LatimL2(m1)
    cases = [
        (lambda: alti.attribute(ids, position=5), "position 5 is out of range"),
        (lambda: alti.attribute(ids, position=-6), "position -6 is out of range"),
        (lambda: l2.attribute(ids, layer=2), "layer 2 is out of range"),
        (lambda: l2.attribute(ids, layer=[0, -3]), "layer -3 is out of range"),
        (lambda: l2.attribute(ids, layer="rollout"), "unknown layer 'rollout'"),
        (lambda: alti.attribute(ids, layer="sum"), "unknown layer 'sum'"),
        (lambda: logit.attribute(ids, layer=0), "aggregates every layer; layer must be None, got 0"),
        (lambda: logit.attribute(ids, target=[1, 2, 3]), r"target has shape \(3,\)"),
        (lambda: logit.attribute(ids, target=torch.zeros(2, 5, dtype=torch.long)), r"target has shape \(2, 5\)"),
        (lambda: logit.attribute(ids, target=(0, 1)), r"target \(0, 1\): tuple targets"),
        (lambda: logit.attribute(ids, target=VOCAB), f"target token id {VOCAB} is out of the vocabulary"),
        (lambda: logit.attribute(ids, target=1.5), "integer token ids"),
        (lambda: alti.attribute(ids, additional_forward_args=(torch.ones(2, 5), 3)), "only hold an attention mask"),
        (lambda: alti.attribute(ids, additional_forward_args="x"), "only hold an attention mask tensor.*str"),
        (lambda: alti.attribute((ids, ids)), "got a 2-tuple"),
        (lambda: alti.attribute(ids, return_convergence_delta=True), r"has no convergence delta"),
        (lambda: l2.attribute(ids, additional_forward_args=torch.ones(2, 4)), r"attention_mask has shape \(2, 4\)"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert _hook_count(m1) == 0


class _L1Map(TokenMapAttribution):
    """The subclass contract: a plain per-layer map function as a Captum class, in a few lines."""

    map_fn = staticmethod(
        lambda model, input_ids=None, inputs_embeds=None, **kw: _l1(model, input_ids, inputs_embeds, **kw)
    )
    display_name = "test ℓ1"
    per_layer = True
    default_layer = -1


def _l1(model, input_ids, inputs_embeds, *, attention_mask=None, layers=None, activation="silu"):
    return latim_captum.interactions(
        model,
        input_ids,
        inputs_embeds,
        method="l1",
        layers=layers,
        attention_mask=attention_mask,
        activation=activation,
    )


class _LogitMap(TokenMapAttribution):
    """An aggregated map that uses the target."""

    map_fn = staticmethod(
        lambda model, input_ids=None, inputs_embeds=None, *, attention_mask=None, target=None: (
            latim_captum.interactions(model, input_ids, inputs_embeds, method="alti_logit", target=target)
        )
    )
    per_layer = False
    default_layer = None
    uses_target = True


def test_subclass_contract(m1):
    ids = random_ids(2, 5, seed=11)
    method = _L1Map(m1, activation="silu_gate")
    assert method.get_name() == "test ℓ1"
    expected = latim_captum.interactions(m1, ids, method="l1", activation="silu_gate")
    assert torch.allclose(method.attribute(ids, layer="all"), expected[:, :, -1])
    assert method.attribute(_embed(m1, ids), layer=0).shape == (2, 5, 32)
    agg = _LogitMap(m1)
    res = latim_captum.alti_logit(m1, ids, target=torch.tensor([3, 4]))
    assert torch.allclose(agg.attribute(ids, target=[3, 4], position=1), res.scores[:, 1], atol=1e-6)
    assert agg.get_name() == "_ Logit Map"  # Captum's own readable-name rule when no display_name is set


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]"] + [f"w{i}" for i in range(1, VOCAB)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_llm_attribution_result_and_plots(m1):
    tokenizer = _tokenizer()
    method = LatimALTILogit(m1, activation="silu_gate")
    llm = LatimLLMAttribution(method, tokenizer)
    res = llm.attribute("w3 w7 w1 w9", target="w5 w2 w8")
    assert isinstance(res, LLMAttributionResult)
    assert res.input_tokens == ["w3", "w7", "w1", "w9"] and res.output_tokens == ["w5", "w2", "w8"]
    assert res.token_attr.shape == (3, 4) and res.seq_attr.shape == (4,)
    # row k equals attributing target token k alone, with the prompt plus the earlier target tokens as input
    full = torch.tensor([[3, 7, 1, 9, 5, 2, 8]])
    for k, tok in enumerate([5, 2, 8]):
        row = method.attribute(full[:, : 4 + k], target=tok)
        assert torch.allclose(res.token_attr[k], row[0, :4], atol=1e-5), f"target token {k}"
    probs = m1(full[:, :-1]).logits[0, 3:].softmax(-1)[torch.arange(3), torch.tensor([5, 2, 8])]
    assert torch.allclose(res.output_probs, probs, atol=1e-5)
    fig, ax = res.plot_token_attr(show=False)
    assert fig is not None
    fig, ax = res.plot_seq_attr(show=False)
    assert fig is not None
    gen = LatimLLMAttribution(LatimALTI(m1), tokenizer).attribute("w3 w7", max_new_tokens=2)
    assert gen.token_attr.shape == (2, 2)
    assert torch.allclose(gen.token_attr.sum(-1) <= 1 + 1e-5, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="layer='all' gives several maps"):
        LatimLLMAttribution(LatimL2(m1), tokenizer).attribute("w3 w7", target="w1", layer="all")
    with pytest.raises(TypeError, match="must be a TokenMapAttribution"):
        LatimLLMAttribution(Saliency(m1), tokenizer)


def test_llm_attribution_refuses_padding_in_token_ids(m1):
    """Token ids carry no attention mask: a row sliced from a padded batch would have its pads read as text (they
    change the state, so skip_tokens would hide their columns but not their effect). Refused; the same prompt
    without its padding gives the unpadded scores."""
    tokenizer = _tokenizer()
    tokenizer.add_special_tokens({"pad_token": "w39"})
    tokenizer.padding_side = "left"
    batch = tokenizer(["w3 w7 w1 w9", "w4 w5"], return_tensors="pt", padding=True)
    assert batch.input_ids[1].tolist() == [39, 39, 4, 5]
    llm = LatimLLMAttribution(LatimALTILogit(m1), tokenizer)
    for ids in (batch.input_ids[1:2], torch.tensor([4, 5, 39])):  # left padding, right padding
        with pytest.raises(ValueError, match="holds the pad token \\(id 39\\) at position"):
            llm.attribute(ids, target="w8")
    with pytest.raises(ValueError, match="padding removed"):
        llm.attribute(batch.input_ids, target="w8")
    row = batch.input_ids[1][batch.attention_mask[1].bool()]
    res = llm.attribute(row, target="w8")
    expected = LatimALTILogit(m1).attribute(torch.tensor([[4, 5]]), target=8)
    torch.testing.assert_close(res.token_attr[0], expected[0], atol=1e-6, rtol=1e-5)


def test_pad_token_that_is_also_bos_or_eos_passes_only_where_that_token_can_stand():
    """A pad token that is also the BOS passes at position 0 only, and only for a tokenizer that prepends its BOS; one
    that is also the EOS passes at the end or between text, never in a run of padding at either end. A pad token
    with no other role is refused anywhere (the shipped copy models: ``<pad>`` before ``abcdefghij|`` took 59 % of
    Mamba-2's attribution mass when it passed)."""
    from tokenizers import processors

    from latim_captum.attr._llm_inputs import _refuse_padding
    from latim_captum.copying import copy_tokenizer

    def refused(ids, tok) -> bool:
        try:
            _refuse_padding(torch.tensor(ids), tok)
        except ValueError as err:
            assert "holds the pad token" in str(err)
            return True
        return False

    copy_tok = copy_tokenizer(16)  # <pad> = 16, no BOS or EOS
    assert refused([16, 0, 1, 15], copy_tok) and refused([0, 16, 1], copy_tok) and refused([0, 1, 16], copy_tok)
    assert not refused([0, 1, 15, 0], copy_tok)

    eos_pad = _tokenizer()
    eos_pad.add_special_tokens({"pad_token": "w39", "eos_token": "w39"})  # pad = EOS, no BOS prepended
    assert not refused([3, 39, 4], eos_pad) and not refused([3, 4, 39], eos_pad)  # a separator, a final EOS
    assert refused([3, 4, 39, 39], eos_pad) and refused([39, 3, 4], eos_pad)  # right / left padding

    bos_pad = _tokenizer()
    bos_pad.add_special_tokens({"pad_token": "w38", "bos_token": "w38"})
    assert refused([38, 3, 4], bos_pad)  # the tokenizer does not prepend its BOS: a leading w38 is padding
    bos_pad._tokenizer.post_processor = processors.TemplateProcessing(single="w38 $A", special_tokens=[("w38", 38)])
    assert bos_pad("w3").input_ids == [38, 3]
    assert not refused([38, 3, 4], bos_pad)
    assert refused([38, 38, 3, 4], bos_pad) and refused([38, 3, 38], bos_pad)


def test_llm_attribution_refuses_pad_ids_on_the_embedded_copy_model():
    from latim_captum.models import load_copy_model

    model, tok = load_copy_model("mamba2")
    llm = LatimLLMAttribution(LatimALTILogit(model), tok)
    ids = torch.tensor([[tok.pad_token_id] * 3 + tok("abcdefghij|").input_ids])
    with pytest.raises(ValueError, match="holds the pad token \\(id 16\\) at position\\(s\\) 0, 1, 2"):
        llm.attribute(ids, target="abcde")
    assert llm.attribute(ids[:, 3:], target="abcde").token_attr.shape == (5, 11)


def _reference_maps(tr) -> dict:
    """Each class's full default map from the reference maths (``backend="ref"``), for a trace on any device."""
    from latim_captum.aggregate import rollout
    from latim_captum.maps import layer_maps_ref

    alti = [layer_maps_ref(layer, "silu_gate", ("alti",), embedding_columns=True)["alti"] for layer in tr.layers]
    return {
        LatimL2: latim_captum.interactions(tr, method="l2", layers=-1, backend="ref")[:, 0],
        LatimALTI: rollout(alti),
        LatimALTILogit: latim_captum.alti_logit(tr, activation="silu_gate", backend="ref").scores,
    }


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_reference_maps_are_the_classes_maps(kind):
    """The oracle of ``test_cuda``, checked on CPU: it is what the classes return (so a CUDA gap is the device's)."""
    model = build(kind, seed=12)
    ids = random_ids(2, 9, seed=12)
    ref = _reference_maps(latim_captum.trace(model, ids))
    for cls, kw in ((LatimL2, {}), (LatimALTI, {}), (LatimALTILogit, {"activation": "silu_gate"})):
        got = cls(model, **kw).attribute(ids, return_matrix=True)
        assert torch.allclose(got, ref[cls], atol=1e-6, rtol=1e-5), cls.__name__


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_cuda(kind):
    """The classes on a CUDA model (mamba-ssm's kernels when installed) give the reference maths of the same
    forward pass computed on CPU (the trace moved there), to 1e-4 relative.

    A CPU forward of the model is not the oracle: with mamba-ssm / causal-conv1d installed, transformers (5.x)
    sends CPU tensors to their CUDA kernels, and the kernels' own rounding (TF32 in Mamba-2's SSD) is the model's,
    not ours to match."""
    model = build(kind, seed=12).cuda()
    ids = random_ids(2, 9, seed=12).cuda()
    mask = torch.ones_like(ids)
    ref = _reference_maps(latim_captum.trace(model, ids, attention_mask=mask).to("cpu"))
    for cls, kw in ((LatimL2, {}), (LatimALTI, {}), (LatimALTILogit, {"activation": "silu_gate"})):
        got = cls(model, **kw).attribute(ids, additional_forward_args=mask, return_matrix=True)
        assert got.device.type == "cuda"
        gap = float((got.cpu() - ref[cls]).abs().max() / ref[cls].abs().max())
        print(f"{kind} {cls.__name__}: max |cuda − cpu reference| / max |reference| = {gap:.2e}")
        assert gap < 1e-4, f"{cls.__name__}: {gap:.2e}"
    emb = _embed(model, ids)
    attr, delta = LatimALTILogit(model, activation="silu_gate").attribute(emb, return_convergence_delta=True)
    with torch.no_grad():
        logits = model(ids).logits[:, -1].max(-1).values
    # the delta compares our decomposition with the model's own logits: the kernels' rounding enters it, bounded
    # by the relative gap the trace accepts between our recomputation and an fp32 model's forward
    rel_delta = float(delta.abs().max() / logits.abs().max())
    print(f"{kind}: ALTI-Logit convergence delta on CUDA, relative to the target logit: {rel_delta:.2e}")
    assert attr.is_cuda and rel_delta < verification_tolerance(torch.float32)
