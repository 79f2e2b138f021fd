"""Inseq front end: LaTIM through ``inseq.load_model(model, "latim")`` on tiny offline models and tokenizers."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

inseq = pytest.importorskip("inseq")

import latim_captum  # noqa: E402
from conftest import build  # noqa: E402
from latim_captum.inseq import METHOD_NAMES, TokenMapAttribution, TokenMapSequenceOutput  # noqa: E402

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(37)]  # 40 = conftest.VOCAB
PROMPT = "w3 w17 w5 w30"
TEXT = "w3 w17 w5 w30 w8 w22 w9"  # prompt + 3 given target tokens
FAST = dict(show_progress=False)


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<eos>"
    )


def make_model(kind: str, **kw):
    model = build(kind, **kw)
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    return model


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def mamba1():
    return make_model("mamba1", layers=3)


def ids_of(tok, text: str) -> torch.Tensor:
    return tok(text, return_tensors="pt").input_ids


def scores(out, i: int = 0) -> torch.Tensor:
    return out.sequence_attributions[i].target_attributions


# ---------------------------------------------------------------- registration and errors


def test_methods_registered_and_abstract_base_hidden():
    methods = inseq.list_feature_attribution_methods()
    for name in METHOD_NAMES:
        assert name in methods, f"{name} is not registered with Inseq"
    registry = inseq.attr.FeatureAttribution.available_classes()
    assert TokenMapAttribution not in registry.values(), "the abstract base must not be an Inseq method"
    assert registry["latim"].token_map is registry["latim_alti_logit"].token_map


def test_import_without_inseq_still_works():
    code = (
        "import sys; sys.modules['inseq'] = None; import latim_captum; "
        "assert not hasattr(latim_captum, 'inseq_methods')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_subclass_must_name_itself():
    with pytest.raises(TypeError, match="method_name"):

        class Nameless(TokenMapAttribution):
            token_map = staticmethod(latim_captum.interactions)

    with pytest.raises(TypeError, match="token_map"):

        class NoMap(TokenMapAttribution):
            method_name = "latim_no_map_test_only"

    # neither half-made class may reach Inseq's registry
    assert "latim_no_map_test_only" not in inseq.list_feature_attribution_methods()


def test_non_mamba_model_fails_at_load_time(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=len(WORDS), n_positions=16))
    with pytest.raises(TypeError, match="'latim' needs a Mamba model, got GPT2LMHeadModel"):
        inseq.load_model(gpt2, "latim", tokenizer=tok)


def test_thin_subclass_from_a_token_map_function(mamba1, tok):
    calls = {}

    def l1_map(model_or_trace, input_ids=None, inputs_embeds=None, *, attention_mask=None, layers=None, target=None):
        calls["target"] = target
        return latim_captum.interactions(model_or_trace, input_ids, method="l1", attention_mask=attention_mask)

    class LatimL1ForTest(TokenMapAttribution):
        method_name = "latim_l1_test_only"
        token_map = staticmethod(l1_map)

    try:
        out = inseq.load_model(mamba1, "latim_l1_test_only", tokenizer=tok).attribute(PROMPT, TEXT, **FAST)
        ids = ids_of(tok, TEXT)
        ref = latim_captum.interactions(mamba1, ids[:, :-1], method="l1")[0]  # [L, N-1, N-1]
        got = scores(out)
        n_prompt = len(PROMPT.split())
        for col, step in enumerate(range(n_prompt, ids.shape[1])):
            torch.testing.assert_close(got[:step, col], ref[:, step - 1, :step].T)
        assert calls["target"] is None, "a method without uses_target must not get targets"
    finally:
        del LatimL1ForTest


# ---------------------------------------------------------------- maths through Inseq


@pytest.mark.parametrize("kind", ["mamba1", "falcon", "mamba2"])
def test_latim_steps_are_rows_of_alti_logit(kind, tok):
    model = make_model(kind, seed=3)
    out = inseq.load_model(model, "latim", tokenizer=tok).attribute(PROMPT, TEXT, step_scores=["logit"], **FAST)
    seq = out.sequence_attributions[0]
    ids = ids_of(tok, TEXT)
    n, n_prompt = ids.shape[1], len(PROMPT.split())
    assert [t.token for t in seq.target] == TEXT.split()
    assert (seq.attr_pos_start, seq.attr_pos_end) == (n_prompt, n)
    assert seq.target_attributions.shape == (n, n - n_prompt, 1), "an aggregated map has one (all-layer) slot"
    ref = latim_captum.alti_logit(model, ids[:, :-1], target=ids[:, 1:])
    for col, step in enumerate(range(n_prompt, n)):
        torch.testing.assert_close(seq.target_attributions[:step, col, 0], ref.scores[0, step - 1, :step])
        assert torch.isnan(seq.target_attributions[step:, col]).all(), "tokens after the prefix must be NaN"
        # ALTI-Logit explains the generated token's logit: the same logit Inseq's step score reports
        torch.testing.assert_close(seq.step_scores["logit"][col], ref.logits[0, step - 1], rtol=1e-4, atol=1e-4)


def test_alti_rows_sum_to_one_and_l2_matches_interactions(mamba1, tok):
    ids = ids_of(tok, TEXT)
    n_prompt = len(PROMPT.split())
    for method, ref_method in (("latim_alti", "alti"), ("latim_l2", "l2")):
        out = inseq.load_model(mamba1, method, tokenizer=tok).attribute(PROMPT, TEXT, layers=[0, 2], **FAST)
        got = scores(out)
        assert got.shape == (ids.shape[1], ids.shape[1] - n_prompt, 2), "layers are the third dimension"
        ref = latim_captum.interactions(mamba1, ids[:, :-1], method=ref_method, layers=[0, 2])[0]
        for col, step in enumerate(range(n_prompt, ids.shape[1])):
            torch.testing.assert_close(got[:step, col], ref[:, step - 1, :step].T)
            if method == "latim_alti":
                torch.testing.assert_close(got[:step, col].sum(0), torch.ones(2), msg="ALTI rows sum to 1 (eq 6)")
        assert out.info["attribution_args"] == {"layers": [0, 2]}


def test_backend_and_precision_pass_through_and_are_checked(mamba1, tok):
    """LaTIM's ``backend``/``precision`` are Inseq attribution arguments: ``fast`` gives the ``ref`` maps, they are
    recorded in ``info``, and a reduced precision on the reference path is refused by name."""
    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    ref = scores(model.attribute(PROMPT, TEXT, backend="ref", **FAST))
    out = model.attribute(PROMPT, TEXT, backend="fast", precision="highest", **FAST)
    torch.testing.assert_close(scores(out), ref, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert out.info["attribution_args"] == {"backend": "fast", "precision": "highest"}
    with pytest.raises(ValueError, match="precision='bf16' sets the W_o product"):
        model.attribute(PROMPT, TEXT, backend="ref", precision="bf16", **FAST)
    with pytest.raises(ValueError, match="precision='tf32' runs the W_o product on CUDA"):  # a no-op on the CPU
        model.attribute(PROMPT, TEXT, backend="fast", precision="tf32", **FAST)


# ---------------------------------------------------------------- Inseq's own outputs


@pytest.fixture(scope="module")
def alti_out(mamba1, tok):
    return inseq.load_model(mamba1, "latim_alti", tokenizer=tok).attribute(
        PROMPT, TEXT, step_scores=["probability", "entropy"], **FAST
    )


def test_aggregate_layers_show_and_scores_dicts(alti_out):
    raw = scores(alti_out)
    mean = alti_out.aggregate().sequence_attributions[0].target_attributions
    torch.testing.assert_close(mean, raw.mean(-1), equal_nan=True, msg="default aggregation averages layers")
    layer1 = alti_out.aggregate("mean", select_idx=1).sequence_attributions[0].target_attributions
    torch.testing.assert_close(layer1, raw[..., 1], equal_nan=True, msg="select_idx picks one layer")
    html = alti_out.show(display=False, return_html=True)
    assert "w30" in html and "w22" in html
    granular = alti_out.show(display=False, return_html=True, do_aggregation=False)
    assert isinstance(granular, str) and granular
    (dicts,) = alti_out.get_scores_dicts()
    first = [v for v in dicts["target_attributions"][(4, "w8")].values() if v == v]  # NaN: not in the prefix
    assert len(first) == 4 and sum(first) == pytest.approx(1.0, abs=1e-5)
    assert set(dicts["step_scores"][(4, "w8")]) == {"probability", "entropy"}


def test_save_load_round_trip_keeps_layer_dimension(alti_out, tmp_path):
    path = tmp_path / "alti.json"
    alti_out.save(path, overwrite=True)
    back = inseq.FeatureAttributionOutput.load(path)
    seq, orig = back.sequence_attributions[0], alti_out.sequence_attributions[0]
    assert isinstance(seq, TokenMapSequenceOutput)
    assert (seq._num_dimensions, seq._aggregator) == (1, ["mean"]), "settings lost through save/load"
    assert seq._attribution_dim_names["target_attributions"][2] == "Model Layer"
    torch.testing.assert_close(seq.target_attributions, orig.target_attributions, equal_nan=True)
    torch.testing.assert_close(seq.step_scores["entropy"], orig.step_scores["entropy"])
    torch.testing.assert_close(
        back.aggregate()[0].target_attributions, alti_out.aggregate()[0].target_attributions, equal_nan=True
    )
    merged = inseq.merge_attributions([alti_out, back])
    assert len(merged) == 2 and merged.info["attribution_method"] == "latim_alti"


def test_outputs_do_not_share_inseq_default_dict(mamba1, tok):
    from inseq.data.aggregation_functions import DEFAULT_ATTRIBUTION_AGGREGATE_DICT

    inseq.load_model(mamba1, "saliency", tokenizer=tok).attribute(PROMPT, TEXT, **FAST)  # pollutes the shared dict
    before = copy.deepcopy(DEFAULT_ATTRIBUTION_AGGREGATE_DICT)
    out = inseq.load_model(mamba1, "latim", tokenizer=tok).attribute(PROMPT, TEXT, **FAST)
    assert DEFAULT_ATTRIBUTION_AGGREGATE_DICT == before, "our outputs must not write Inseq's shared defaults"
    seq = out.sequence_attributions[0]
    assert seq._dict_aggregate_fn is not DEFAULT_ATTRIBUTION_AGGREGATE_DICT
    assert "scores" not in seq._dict_aggregate_fn["target_attributions"], "saliency's vnorm leaked into latim"
    raw = out.aggregate(normalize=False)[0].target_attributions
    torch.testing.assert_close(raw, seq.target_attributions[..., 0], equal_nan=True)
    # Inseq's default aggregation normalises every method's columns alike (Σ |score| = 1 per generated token)
    normed = out.aggregate()[0].target_attributions
    torch.testing.assert_close(normed.nan_to_num().abs().sum(0), torch.ones(normed.shape[1]))
    torch.testing.assert_close(normed, raw / raw.nan_to_num().abs().sum(0), equal_nan=True)


def test_output_step_attributions_round_trip(mamba1, tok, tmp_path):
    out = inseq.load_model(mamba1, "latim_l2", tokenizer=tok).attribute(
        PROMPT, TEXT, output_step_attributions=True, **FAST
    )
    assert len(out.step_attributions) == 3 and out.step_attributions[0].target_attributions.shape == (1, 4, 3)
    out.save(tmp_path / "steps.json")
    back = inseq.FeatureAttributionOutput.load(tmp_path / "steps.json")
    assert back.step_attributions[0]._num_dimensions == 1
    torch.testing.assert_close(
        back.step_attributions[2].target_attributions, out.step_attributions[2].target_attributions
    )


# ---------------------------------------------------------------- side by side with Inseq's built-in methods


def test_side_by_side_with_gradient_methods(mamba1, tok):
    outs = {}
    for method, extra in (
        ("saliency", {}),
        ("integrated_gradients", {"n_steps": 4}),
        ("input_x_gradient", {}),
        ("latim", {}),
    ):
        model = inseq.load_model(mamba1, method, tokenizer=tok)
        outs[method] = model.attribute(PROMPT, TEXT, step_scores=["probability"], **extra, **FAST)
    ref = outs["saliency"].sequence_attributions[0]
    for method, out in outs.items():
        seq = out.sequence_attributions[0]
        assert [t.id for t in seq.target] == [t.id for t in ref.target], method
        assert [t.id for t in seq.source] == [t.id for t in ref.source], method
        assert (seq.attr_pos_start, seq.attr_pos_end) == (ref.attr_pos_start, ref.attr_pos_end), method
        agg = out.aggregate().sequence_attributions[0].target_attributions
        ref_agg = outs["saliency"].aggregate().sequence_attributions[0].target_attributions
        assert agg.shape == ref_agg.shape, method
        assert torch.equal(torch.isnan(agg), torch.isnan(ref_agg)), f"{method}: token alignment differs"
        torch.testing.assert_close(seq.step_scores["probability"], ref.step_scores["probability"])


# ---------------------------------------------------------------- batching, padding, targets


def test_batch_with_padding_matches_single_sequences(mamba1, tok):
    prompts = ["w3 w4 w5 w6", "w7 w8"]
    for method in ("latim", "latim_alti"):
        model = inseq.load_model(mamba1, method, tokenizer=tok)
        batched = model.attribute(prompts, generation_args={"max_new_tokens": 3, "do_sample": False}, **FAST)
        assert len(batched) == 2
        for i, prompt in enumerate(prompts):
            text = batched.info["generated_texts"][i]
            single = model.attribute(prompt, text, **FAST)
            b, s = batched.sequence_attributions[i], single.sequence_attributions[0]
            assert [t.id for t in b.target] == [t.id for t in s.target]
            assert (b.attr_pos_start, b.attr_pos_end) == (s.attr_pos_start, s.attr_pos_end)
            torch.testing.assert_close(
                b.target_attributions, s.target_attributions, equal_nan=True, rtol=1e-4, atol=1e-5
            )


def test_attribute_target_flag_behaves_as_builtin(mamba1, tok):
    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    plain = model.attribute(PROMPT, TEXT, **FAST)
    flagged = model.attribute(PROMPT, TEXT, attribute_target=True, **FAST)  # decoder-only: Inseq ignores the flag
    torch.testing.assert_close(scores(plain), scores(flagged), equal_nan=True)
    assert scores(plain) is not None and plain.sequence_attributions[0].source_attributions is None


def test_attr_pos_window_matches_full_run(mamba1, tok):
    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    full = scores(model.attribute(PROMPT, TEXT, **FAST))
    window = model.attribute(PROMPT, TEXT, attr_pos_start=5, attr_pos_end=7, **FAST)
    seq = window.sequence_attributions[0]
    assert (seq.attr_pos_start, seq.attr_pos_end) == (5, 7)
    torch.testing.assert_close(
        seq.target_attributions[:, -2:], full[: seq.target_attributions.shape[0], -2:], equal_nan=True
    )


# ---------------------------------------------------------------- options: honoured or refused before any work


def test_left_padded_batch_on_biased_model_is_refused_not_truncated(tok):
    # an in-projection bias reaches the real tokens from the padding (through the convolution): the padded map
    # scores the padding columns, which Inseq drops, so the real columns would silently miss part of the logit
    prompts = ["w3 w4 w5 w6 w7", "w7 w8"]
    gen = {"generation_args": {"max_new_tokens": 2, "do_sample": False}, **FAST}
    for kind in ("mamba1", "mamba2"):
        biased = make_model(kind, use_bias=True)
        for method in ("latim", "latim_alti"):
            model = inseq.load_model(biased, method, tokenizer=tok)
            with pytest.raises(ValueError, match="padding columns .* one at a time"):
                model.attribute(prompts, **gen)
            out = model.attribute(prompts[1], **gen)  # one prompt: no padding, exact
            if method == "latim":
                full = ids_of(tok, out.info["generated_texts"][0])
                ref = latim_captum.alti_logit(biased, full, activation="silu_gate")
                got = scores(out)[..., 0]  # [tokens, steps]: step k reads row 1 + k
                want = ref.scores[0, 1:3, :].T.masked_fill(got.isnan(), float("nan"))
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    # a bias-free model's padding columns hold nothing: its batch is attributed (and equals single runs, above)
    plain = inseq.load_model(make_model("mamba2"), "latim", tokenizer=tok)
    assert len(plain.attribute(prompts, **gen)) == 2


def test_dtype_by_name_is_honoured_and_the_output_saves(mamba1, tok, tmp_path):
    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    base = scores(model.attribute(PROMPT, TEXT, **FAST))
    for given in (torch.float64, "float64", "torch.float64"):
        out = model.attribute(PROMPT, TEXT, dtype=given, **FAST)
        assert out.info["attribution_args"] == {"dtype": "float64"}
        torch.testing.assert_close(scores(out), base, rtol=1e-4, atol=1e-5, equal_nan=True)
        out.save(tmp_path / "out.json", overwrite=True)
        back = inseq.FeatureAttributionOutput.load(tmp_path / "out.json")
        torch.testing.assert_close(scores(back), scores(out), equal_nan=True)
    with pytest.raises(ValueError, match="dtype 'float16'"):
        model.attribute(PROMPT, TEXT, attribution_args={"dtype": "float16"}, **FAST)


def test_attribution_args_dict_is_checked_like_keywords(mamba1, tok):
    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    for args, match in (
        ({"layers": [0]}, "does not take layers"),
        ({"position": 2}, "does not take position"),
        ({"target": None}, "sets target itself"),
        ({"attention_mask": None}, "sets attention_mask itself"),
        ({"activaton": "silu"}, "takes no argument activaton"),
    ):
        with pytest.raises(ValueError, match=match):
            model.attribute(PROMPT, TEXT, attribution_args=args, **FAST)
    silu = scores(model.attribute(PROMPT, TEXT, attribution_args={"activation": "silu"}, **FAST))
    assert not torch.allclose(silu.nan_to_num(), scores(model.attribute(PROMPT, TEXT, **FAST)).nan_to_num())


def test_attributed_fn_args_that_change_nothing_are_refused(mamba1, tok):
    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    with pytest.raises(ValueError, match="attributed_fn_args temperature cannot be honoured"):
        model.attribute(PROMPT, TEXT, attributed_fn_args={"temperature": 2.0}, **FAST)
    # logprob=True (log-probability step scores) leaves the explained logit as the default probability does
    base = scores(model.attribute(PROMPT, TEXT, **FAST))
    logprob = model.attribute(PROMPT, TEXT, step_scores=["probability"], logprob=True, **FAST)
    torch.testing.assert_close(scores(logprob), base, equal_nan=True)
    assert bool((logprob[0].step_scores["probability"] <= 0).all())  # the step scores are log-probabilities


def test_unsupported_attributed_fn_is_refused_before_the_map(mamba1, tok, monkeypatch):
    from latim_captum.inseq import InseqTokenMapAttribution

    model = inseq.load_model(mamba1, "latim", tokenizer=tok)
    calls = []
    original = InseqTokenMapAttribution.compute_maps
    monkeypatch.setattr(InseqTokenMapAttribution, "compute_maps", lambda *a, **k: calls.append(1) or original(*a, **k))
    with pytest.raises(ValueError, match="attributed_fn=entropy"):
        model.attribute(PROMPT, TEXT, attributed_fn="entropy", **FAST)
    assert calls == []


def test_baselines_refuse_hybrids_at_load(tok):
    from test_hybrids import build_hybrid

    hybrid, _ = build_hybrid("bamba")
    for method in ("mamba_lrp", "mamba_attribution", "mamba_attention"):
        with pytest.raises(TypeError, match=f"'{method}' is defined for pure Mamba models, got the hybrid"):
            inseq.load_model(hybrid, method, tokenizer=tok)
    inseq.load_model(hybrid, "latim", tokenizer=tok)  # LaTIM decomposes hybrids


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_embedded_copy_models_label_every_token_and_generate(variant):
    """The shipped copy models' separator ``|`` is an ordinary token (their pad is ``<pad>``, never in a sample; they
    have no EOS): Inseq labels every character where it stands (a separator that was the pad token was left out of the
    labels, shifting each one after it), and Inseq's own decoding round-trips without ``--generated_texts``."""
    from latim_captum.models import copy_task_of, load_copy_model

    model, tokenizer = load_copy_model(variant)
    task, _ = copy_task_of(variant)
    text = task.encode_text(task.sample(1, seed=5))[0]
    prompt = text[: task.length + 1]  # the source and the separator
    attr = inseq.load_model(model, "latim", tokenizer=tokenizer)
    seq = attr.attribute(prompt, text, **FAST).sequence_attributions[0]
    assert [t.token for t in seq.target] == list(text)
    assert seq.attr_pos_start == len(prompt) and seq.target_attributions.shape[0] == len(text)
    # Inseq generates the copy itself: the text it decodes is the string of characters, and the model copies it
    generated = attr.attribute(prompt, generation_args={"max_new_tokens": task.length}, **FAST)
    out_text = generated.info["generated_texts"][0]
    assert out_text.startswith(prompt) and len(out_text) == len(text)
    assert [t.token for t in generated.sequence_attributions[0].target] == list(out_text)
    # a batch of prompts of two lengths is left-padded with <pad>: the model has no EOS, so generate tells the
    # padding from the text and each prompt continues as it does alone (an EOS equal to the pad token read it)
    prompts = [prompt, prompt[3:]]
    alone = [attr.attribute(p, generation_args={"max_new_tokens": 4}, **FAST).info["generated_texts"][0]
             for p in prompts]  # fmt: skip
    batched = attr.attribute(prompts, generation_args={"max_new_tokens": 4}, **FAST)
    assert batched.info["generated_texts"] == alone
