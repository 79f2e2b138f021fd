"""The tutorials' code, with LaTIM swapped in: Captum's LLM tutorial (``Llama2_LLM_Attribution``), its IMDB and
BERT-SQuAD ``attribute`` calls and NoiseTunnel, Inseq's README and tutorial notebook (contrastive attribution,
aggregation, save/load, the CLI), on Mamba, FalconMamba and Mamba-2 models with an ordinary tokenizer: it prepends a
BOS and pads on the right, as Hugging Face tokenizers do by default.

Each cell keeps the tutorial's shape (the same calls and arguments); what it checks is an invariant of the maths, never
a number copied from a run: ALTI-Logit rows sum to the logit (difference) minus the offset, a right-padded batch equals
each example alone with its padding columns exactly 0, a LaTIM LLM result lines up column for column with Captum's
own ``LLMAttribution`` / ``LLMGradientAttribution`` results.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from captum.attr import (
    FeatureAblation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMAttributionResult,
    LLMGradientAttribution,
    NoiseTunnel,
    TextTemplateInput,
    TextTokenInput,
)

import latim_captum
from conftest import VOCAB, build
from latim_captum import LatimALTI, LatimALTILogit, LatimL2, LatimLLMAttribution, MambaLRP

inseq = pytest.importorskip("inseq")

PAD, EOS, UNK, BOS = 0, 1, 2, 3
WORDS = ["<pad>", "<eos>", "<unk>", "<bos>"] + [f"w{i}" for i in range(VOCAB - 4)]
F64 = torch.float64

EVAL_PROMPT = "w4 w9 w12 w7 w20 w5"  # "Dave lives in Palm Coast, FL and is a lawyer. His personal interests include"
TARGET = "w8 w30 w11"  # "playing golf, hiking, and cooking."


def make_tokenizer():
    """WordLevel tokenizer that prepends ``<bos>`` (a TemplateProcessing post-processor) and pads on the right."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture
def tokenizer():
    tok = make_tokenizer()  # a fresh one per test: inseq.load_model sets padding_side = "left" on the one it gets
    assert tok("w5 w6").input_ids == [BOS, 9, 10] and tok.padding_side == "right"
    return tok


@pytest.fixture(scope="module", params=["mamba1", "falcon", "mamba2"])
def model(request):
    m = build(request.param, seed=31)
    m.config.pad_token_id, m.config.eos_token_id, m.config.bos_token_id = PAD, EOS, BOS
    m.generation_config.pad_token_id, m.generation_config.eos_token_id = PAD, EOS
    return m


def logit_rows(model, ids: torch.Tensor, **kw):
    """ALTI-Logit of every row, each explaining the true next token (the oracle the cells are checked against)."""
    return latim_captum.alti_logit(model, ids[:, :-1], target=ids[:, 1:], **kw)


# ============================================================ Captum: the LLM tutorial (Llama2_LLM_Attribution)


def test_llm_tutorial_text_token_input_lines_up_with_feature_ablation_and_lig(model, tokenizer):
    # fa = FeatureAblation(model); llm_attr = LLMAttribution(fa, tokenizer)   ->   LaTIM
    llm_attr = LatimLLMAttribution(LatimALTILogit(model), tokenizer)
    skip_tokens = [BOS]  # the tutorial skips Llama's BOS (id 1)
    inp = TextTokenInput(EVAL_PROMPT, tokenizer, skip_tokens=skip_tokens)
    attr_res = llm_attr.attribute(inp, target=TARGET)
    assert isinstance(attr_res, LLMAttributionResult)
    n_words, n_target = len(EVAL_PROMPT.split()), len(TARGET.split())
    assert attr_res.seq_attr.shape == (n_words,) and attr_res.token_attr.shape == (n_target, n_words)
    fig, ax = attr_res.plot_token_attr(show=False)
    assert fig is not None and attr_res.plot_seq_attr(show=False)[0] is not None

    # the same input through Captum's own wrappers: same columns (BOS dropped), same rows
    fa_res = LLMAttribution(FeatureAblation(model), tokenizer).attribute(inp, target=TARGET)
    lig = LayerIntegratedGradients(model, model.backbone.embeddings)
    lig_res = LLMGradientAttribution(lig, tokenizer).attribute(inp, target=TARGET, n_steps=4)
    for other in (fa_res, lig_res):
        assert other.input_tokens == attr_res.input_tokens == EVAL_PROMPT.split()
        assert other.output_tokens == attr_res.output_tokens
        assert other.token_attr.shape == attr_res.token_attr.shape and other.seq_attr.shape == attr_res.seq_attr.shape

    # maths: row k is the ALTI-Logit row that predicts target token k, minus the BOS column
    ids = tokenizer(EVAL_PROMPT + " " + TARGET, return_tensors="pt").input_ids
    res = logit_rows(model, ids)
    rows = torch.arange(n_words, n_words + n_target)  # BOS + n_words prompt tokens: row n_words predicts token 0
    torch.testing.assert_close(attr_res.token_attr, res.scores[0, rows, 1 : n_words + 1])
    # add back the skipped BOS and the earlier target tokens (they are in the map, not among Captum's columns)
    complete = attr_res.token_attr.sum(-1) + res.scores[0, rows, 0] + res.scores[0, rows, n_words + 1 :].sum(-1)
    gap = complete - (res.logits[0, rows] - res.offset[0, rows])
    assert float(gap.abs().max()) < 1e-4 * float(res.logits.abs().max()), "each row sums to its logit (eq 8)"
    torch.testing.assert_close(attr_res.seq_attr, attr_res.token_attr.sum(0))


def test_llm_tutorial_templates_masks_trials_and_generation(model, tokenizer):
    llm_attr = LatimLLMAttribution(LatimALTILogit(model), tokenizer)
    template = "{} w9 {} w7 {} w5 {}"  # "{} lives in {}, {} and is a {}. ..."
    values = ["w4", "w12 w13", "w20", "w6"]
    inp = TextTemplateInput(template=template, values=values)
    attr_res = llm_attr.attribute(inp, target=TARGET)
    assert attr_res.input_tokens == values and attr_res.token_attr.shape == (3, 4)
    # a value's score is the sum of its tokens' scores (template words are no feature)
    by_token = llm_attr.attribute(TextTokenInput("w4 w9 w12 w13 w7 w20 w5 w6", tokenizer), target=TARGET)
    cols = {0: [1], 1: [3, 4], 2: [6], 3: [8]}  # token columns (BOS at 0) of each value
    for v, idx in cols.items():
        torch.testing.assert_close(attr_res.token_attr[:, v], by_token.token_attr[:, idx].sum(-1))
    fa = LLMAttribution(FeatureAblation(model), tokenizer).attribute(inp, target=TARGET)
    assert fa.input_tokens == attr_res.input_tokens and fa.token_attr.shape == attr_res.token_attr.shape

    # mask groups values into one feature, as in the tutorial (mask=[0, 1, 1, 2, 0])
    grouped = llm_attr.attribute(TextTemplateInput(template, values=values, mask=[0, 1, 1, 0]), target=TARGET)
    torch.testing.assert_close(grouped.token_attr[:, 0], attr_res.token_attr[:, [0, 3]].sum(-1))
    torch.testing.assert_close(grouped.token_attr[:, 1], grouped.token_attr[:, 2])
    torch.testing.assert_close(grouped.token_attr[:, 1], attr_res.token_attr[:, [1, 2]].sum(-1))

    # num_trials: accepted; LaTIM is deterministic
    trials = llm_attr.attribute(inp, target=TARGET, num_trials=3)
    torch.testing.assert_close(trials.token_attr, attr_res.token_attr)

    # baselines and callable templates have no LaTIM meaning: one clear sentence each
    with pytest.raises(ValueError, match="LaTIM needs no baselines"):
        llm_attr.attribute(TextTemplateInput(template, values=values, baselines=["w1", "w2", "w3", "w4"]), target="w8")
    with pytest.raises(ValueError, match="callable template"):
        llm_attr.attribute(TextTemplateInput(lambda *v: " ".join(v), values=values), target="w8")

    # target=None generates, with gen_args as in Captum (and the same greedy tokens Captum's wrapper explains)
    gen_args = {"max_new_tokens": 3, "do_sample": False}
    token_inp = TextTokenInput(EVAL_PROMPT, tokenizer, skip_tokens=[BOS])
    ours = llm_attr.attribute(token_inp, gen_args=gen_args)
    theirs = LLMAttribution(FeatureAblation(model), tokenizer).attribute(token_inp, gen_args=gen_args)
    assert ours.output_tokens == theirs.output_tokens and ours.token_attr.shape == theirs.token_attr.shape
    with pytest.raises(ValueError, match="gen_args and max_new_tokens must be None when a target is given"):
        llm_attr.attribute(token_inp, target=TARGET, gen_args=gen_args)
    # target as ids, and the default generation length is Captum's (25 new tokens, or fewer at an EOS)
    ids_target = torch.tensor(tokenizer.encode(TARGET, add_special_tokens=False))
    torch.testing.assert_close(llm_attr.attribute(token_inp, target=ids_target).token_attr,
                               llm_attr.attribute(token_inp, target=TARGET).token_attr)  # fmt: skip
    default = llm_attr.attribute(token_inp)
    assert 1 <= len(default.output_tokens) <= 25


def test_llm_attribution_refuses_a_batch_of_prompts(model, tokenizer):
    llm_attr = LatimLLMAttribution(LatimALTI(model), tokenizer)
    batch = tokenizer(["w4 w5 w6", "w7 w8"], return_tensors="pt", padding=True).input_ids
    with pytest.raises(ValueError, match="attributes one prompt, got a batch of 2"):
        llm_attr.attribute(batch, target="w9")
    one = llm_attr.attribute(batch[:1], target="w9")  # [1, N] ids are one prompt
    assert one.token_attr.shape == (1, 4)


# ============================================================ Captum: IMDB / SQuAD-style attribute calls


def test_imdb_style_call_and_side_by_side_with_lig(model, tokenizer):
    enc = tokenizer(EVAL_PROMPT, return_tensors="pt")
    input_indices = enc.input_ids
    reference_indices = torch.full_like(input_indices, PAD)  # token_reference.generate_reference(...)
    lig = LayerIntegratedGradients(lambda ids: model(ids).logits[:, -1], model.backbone.embeddings)
    pred = int(model(input_indices).logits[0, -1].argmax())
    attributions_ig, delta_ig = lig.attribute(
        input_indices, reference_indices, target=pred, n_steps=8, return_convergence_delta=True
    )
    # swap LayerIntegratedGradients for LatimALTILogit, keep the call (no baseline: drop reference_indices)
    latim = LatimALTILogit(model, dtype=F64)
    with pytest.warns(UserWarning, match="n_steps is ignored"):
        attributions, delta = latim.attribute(input_indices, target=pred, n_steps=500, return_convergence_delta=True)
    assert attributions_ig.shape == (1, input_indices.shape[1], model.config.hidden_size)  # [B, N, D] per dim
    assert attributions.shape == attributions_ig.sum(dim=2).shape == input_indices.shape  # [B, N] per token
    assert float(delta.abs().max()) < 1e-5 and delta_ig.shape == delta.shape
    with pytest.raises(ValueError, match="positional baselines"):
        latim.attribute(input_indices, reference_indices, return_convergence_delta=True)


def test_squad_style_call_on_a_right_padded_batch(model, tokenizer):
    questions = ["w4 w9 w12 w7 w20", "w6 w11", "w13 w14 w15"]
    enc = tokenizer(questions, return_tensors="pt", padding=True)  # right padding, HF's default
    input_ids, attention_mask = enc.input_ids, enc.attention_mask
    assert bool((input_ids[1, -2:] == PAD).all()), "the tokenizer pads on the right"
    for cls in (LatimALTILogit, LatimALTI, LatimL2, MambaLRP):
        method = cls(model, dtype=F64)
        kwargs = {"return_convergence_delta": True} if cls is LatimALTILogit else {}
        out = method.attribute(inputs=input_ids, baselines=None, additional_forward_args=(attention_mask,), **kwargs)
        attributions = out[0] if kwargs else out
        for b, question in enumerate(questions):
            alone = tokenizer(question, return_tensors="pt").input_ids
            n_b = alone.shape[1]
            torch.testing.assert_close(attributions[b, :n_b], method.attribute(alone)[0], rtol=1e-6, atol=1e-9)
            assert bool((attributions[b, n_b:] == 0).all()), f"{cls.__name__}: padding columns must be exactly 0"
        if kwargs:
            assert float(out[1].abs().max()) < 1e-5, "each example's row sums to its own last real token's logit"
    with pytest.raises(ValueError, match="points at padding in example 1"):
        LatimALTILogit(model).attribute(input_ids, additional_forward_args=(attention_mask,), position=-1)


def test_noise_tunnel(model, tokenizer):
    ids = tokenizer(["w4 w5 w6 w7"], return_tensors="pt").input_ids
    nt = NoiseTunnel(LatimALTILogit(model, dtype=F64))
    with pytest.raises(ValueError, match="pass inputs_embeds"):
        nt.attribute(ids, nt_type="smoothgrad_sq", nt_samples=2, stdevs=0.1)
    embeds = model.get_input_embeddings()(ids).detach()
    attr, delta = nt.attribute(embeds, nt_type="smoothgrad", nt_samples=3, stdevs=0.01, target=5,
                               return_convergence_delta=True)  # fmt: skip
    assert attr.shape == embeds.shape and float(delta.abs().max()) < 1e-5


# ============================================================ Inseq: README and tutorial notebook


def test_inseq_readme_and_tutorial_cells(model, tokenizer, tmp_path):
    attribution_model = inseq.load_model(model, "latim", tokenizer=tokenizer)
    # README: model.attribute("Hello ladies and", generation_args={"max_new_tokens": 9}, n_steps=500, ...).show()
    # (with a tokenizer that adds a BOS, Inseq needs skip_special_tokens=True to match its own generations, for its
    # built-in methods too)
    out = attribution_model.attribute(
        "w4 w5 w6", generation_args={"max_new_tokens": 3}, n_steps=500, internal_batch_size=50,
        skip_special_tokens=True, show_progress=False,
    )  # fmt: skip
    out.show(display=False)
    assert [t.token for t in out[0].target][:3] == ["w4", "w5", "w6"] and len(out[0].target) == 6
    # tutorial: attribute_target, step scores, save / load, html, tokens view
    out = attribution_model.attribute(
        input_texts="w4 w5 w6", generated_texts="w4 w5 w6 w7 w8", attribute_target=True,
        step_scores=["probability", "logit"], show_progress=False,
    )  # fmt: skip
    seq = out[0]
    ids = tokenizer("w4 w5 w6 w7 w8", return_tensors="pt").input_ids
    res = logit_rows(model, ids)
    n_prompt = 4  # BOS + 3 words
    for col, step in enumerate(range(n_prompt, ids.shape[1])):
        scores = seq.target_attributions[:step, col, 0]
        torch.testing.assert_close(scores, res.scores[0, step - 1, :step])
        gap = float(scores.sum()) - float(seq.step_scores["logit"][col] - res.offset[0, step - 1])
        assert abs(gap) < 1e-4 * max(1.0, float(res.logits.abs().max())), "a step sums to Inseq's own logit"
    out.save(tmp_path / "latim_attribution.json")
    reloaded_out = inseq.FeatureAttributionOutput.load(tmp_path / "latim_attribution.json")
    html = reloaded_out.show(display=False, return_html=True)
    assert html.startswith("<p><i>latim:"), "the html states the scale first"
    torch.testing.assert_close(reloaded_out[0].target_attributions, seq.target_attributions, equal_nan=True)
    out.show_tokens(step_score_highlight="probability", display=False)
    # aggregation cells: select one slot, no normalisation; then the default pipeline
    first = out[0].aggregate("mean", select_idx=0, normalize=False, do_post_aggregation_checks=False)
    torch.testing.assert_close(first.target_attributions, seq.target_attributions[..., 0], equal_nan=True)
    last = out[0].aggregate("scores", select_idx=-1, normalize=False)
    torch.testing.assert_close(last.target_attributions, first.target_attributions, equal_nan=True)
    out.aggregate("subwords").show(display=False)
    # explain, generate
    inseq.explain("latim")
    assert attribution_model.generate("w4 w5", max_new_tokens=2, skip_special_tokens=True)[0].startswith("w4 w5")
    # the tutorial's "he" vs "she" pair: two forced generations in one batch, then the pair aggregator
    pair = attribution_model.attribute(
        input_texts=["w4 w5 w6", "w4 w5 w6"], generated_texts=["w4 w5 w6 w7 w8", "w4 w5 w6 w9 w8"],
        step_scores=["probability"], show_progress=False,
    )  # fmt: skip
    pair[0].aggregate("pair", paired_attr=pair[1], do_post_aggregation_checks=False).show(display=False)
    torch.testing.assert_close(pair[0].target_attributions, seq.target_attributions, equal_nan=True)


def test_inseq_contrastive_readme_example(model, tokenizer):
    """README: attributed_fn="contrast_prob_diff", contrast_targets=..., step_scores=["contrast_prob_diff"]."""
    attribution_model = inseq.load_model(model, "latim", tokenizer=tokenizer)
    out = attribution_model.attribute(
        "w4 w5 w6",
        "w4 w5 w6 w7 w8 w9",
        attributed_fn="contrast_prob_diff",
        contrast_targets="w4 w5 w6 w10 w8 w9",
        step_scores=["contrast_prob_diff"],
        show_progress=False,
    )
    out.show(display=False)
    ids = tokenizer("w4 w5 w6 w7 w8 w9", return_tensors="pt").input_ids
    c_ids = tokenizer("w4 w5 w6 w10 w8 w9", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    res = latim_captum.alti_logit(model, ids[:, :-1], target=ids[:, 1:], contrast=c_ids[:, 1:])
    step = 4  # the first generated token: w7 against w10, at the same prefix
    got = out[0].target_attributions[:step, 0, 0]
    diff = logits[step - 1, ids[0, step]] - logits[step - 1, c_ids[0, step]]
    assert abs(float(got.sum()) + float(res.offset[0, step - 1]) - float(diff)) < 1e-4 * float(logits.abs().max())
    assert float(out[0].target_attributions[:, 1:].nan_to_num().abs().max()) == 0.0, "same token: no difference"


def test_inseq_batch_of_prompts_with_a_right_padding_tokenizer(model, tokenizer):
    attribution_model = inseq.load_model(model, "latim", tokenizer=tokenizer)
    prompts, texts = ["w4 w5 w6 w7", "w8 w9"], ["w4 w5 w6 w7 w10 w11", "w8 w9 w12 w13"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = attribution_model.attribute(prompts, texts, show_progress=False)
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        single = attribution_model.attribute(prompt, text, show_progress=False)
        torch.testing.assert_close(batch[i].target_attributions, single[0].target_attributions, equal_nan=True,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def test_inseq_command_line(model, tokenizer, tmp_path):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "latim_captum.cli", "inseq", "attribute", "--model_name_or_path", str(folder),
           "--attribution_method", "latim", "--device", "cpu", "--input_texts", "w4 w5 w6",
           "--generated_texts", "w4 w5 w6 w7 w8", "--step_scores", "probability",
           "--save_path", str(save)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "latim:" in res.stdout, "the console view states the scale"
    out = inseq.FeatureAttributionOutput.load(str(save))
    direct = inseq.load_model(model, "latim", tokenizer=tokenizer).attribute("w4 w5 w6", "w4 w5 w6 w7 w8",
                                                                            show_progress=False)  # fmt: skip
    torch.testing.assert_close(out[0].target_attributions, direct[0].target_attributions, equal_nan=True)
