"""Inseq's conventions on the LaTIM methods: explain, attributed_fn (contrastive or refused), aggregation of every
method's output, the scale stated by show(), padding, and Inseq's own CLI through ``latim inseq``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

inseq = pytest.importorskip("inseq")

from test_inseq import make_model, make_tokenizer  # noqa: E402

import latim_captum  # noqa: E402,F401  (registers the methods)
from latim_captum.inseq import INSEQ_METHODS  # noqa: E402

FAST = dict(show_progress=False)
PROMPT = "w3 w17 w5"
TEXT = "w3 w17 w5 w8 w9"
CONTRAST = "w3 w17 w5 w10 w9"  # differs at the first generated token only


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_model("mamba2", seed=4)


def test_explain_knows_every_method(capsys):
    for name in INSEQ_METHODS:
        inseq.explain(name)
        assert capsys.readouterr().out.strip(), f"inseq.explain({name!r}) printed nothing"
    inseq.explain("latim")
    assert "ALTI-Logit" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["latim", "latim_alti_logit"])
def test_contrastive_attribution_decomposes_the_logit_difference(model, tok, method):
    """attributed_fn="contrast_prob_diff" with contrast_targets: step k decomposes logit(target_k) − logit(contrast_k)
    at the original prefix, checked against the model's own logits (rows sum to it minus the offset)."""
    am = inseq.load_model(model, method, tokenizer=tok)
    out = am.attribute(PROMPT, TEXT, attributed_fn="contrast_prob_diff", contrast_targets=CONTRAST, **FAST)
    seq = out[0]
    ids = tok(TEXT, return_tensors="pt").input_ids
    c_ids = tok(CONTRAST, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    res = latim_captum.alti_logit(model, ids[:, :-1], target=ids[:, 1:], contrast=c_ids[:, 1:])
    n_prompt = len(PROMPT.split())
    for col, step in enumerate(range(n_prompt, ids.shape[1])):
        got = seq.target_attributions[:step, col, 0]
        torch.testing.assert_close(got, res.scores[0, step - 1, :step].float())
        diff = logits[step - 1, ids[0, step]] - logits[step - 1, c_ids[0, step]]
        total = float(got.sum()) + float(res.offset[0, step - 1])
        assert abs(total - float(diff)) < 1e-4 * max(1.0, float(logits.abs().max())), f"step {step}"
    # the second generated token is the same in both continuations: a zero difference, so zero scores
    assert float(seq.target_attributions[: n_prompt + 1, 1].abs().max()) == 0.0
    assert float(seq.target_attributions[:n_prompt, 0].abs().max()) > 0.0
    # contrast_logits_diff is the same logit difference
    other = am.attribute(PROMPT, TEXT, attributed_fn="contrast_logits_diff", contrast_targets=CONTRAST, **FAST)
    torch.testing.assert_close(other[0].target_attributions, seq.target_attributions, equal_nan=True)


def test_attributed_fn_is_honoured_or_refused(model, tok):
    am = inseq.load_model(model, "latim", tokenizer=tok)
    plain = am.attribute(PROMPT, TEXT, **FAST)[0].target_attributions
    as_logit = am.attribute(PROMPT, TEXT, attributed_fn="logit", **FAST)[0].target_attributions
    torch.testing.assert_close(plain, as_logit, equal_nan=True)
    for fn in ("entropy", "perplexity", "contrast_prob", "kl_divergence"):
        with pytest.raises(ValueError, match=f"attributed_fn={fn}_fn is not supported"):
            am.attribute(PROMPT, TEXT, attributed_fn=fn, contrast_targets=CONTRAST, **FAST)
    with pytest.raises(ValueError, match="needs contrast_targets"):
        am.attribute(PROMPT, TEXT, attributed_fn="contrast_prob_diff", **FAST)
    with pytest.raises(ValueError, match="contrast_force_inputs=True is not supported"):
        am.attribute(PROMPT, TEXT, attributed_fn="contrast_prob_diff", contrast_targets=CONTRAST,
                     contrast_force_inputs=True, **FAST)  # fmt: skip
    for method in ("mamba_lrp", "mamba_attribution"):  # they explain a logit, but no logit difference
        with pytest.raises(ValueError, match="attributed_fn=contrast_prob_diff_fn is not supported"):
            inseq.load_model(model, method, tokenizer=tok).attribute(
                PROMPT, TEXT, attributed_fn="contrast_prob_diff", contrast_targets=CONTRAST, **FAST
            )


@pytest.mark.parametrize("method", ["latim", "latim_alti_logit", "mamba_lrp", "mamba_attribution", "latim_alti"])
def test_aggregate_select_idx_and_normalize(model, tok, method):
    out = inseq.load_model(model, method, tokenizer=tok).attribute(PROMPT, TEXT, **FAST)
    raw = out[0].target_attributions  # [T_attr, T_steps, L] (L = 1: every layer aggregated)
    first = out.aggregate("mean", select_idx=0, normalize=False)[0].target_attributions
    torch.testing.assert_close(first, raw[..., 0], equal_nan=True)
    normed = out.aggregate("mean", select_idx=0, normalize=True)[0].target_attributions
    col_sums = normed.nan_to_num().abs().sum(0)
    torch.testing.assert_close(col_sums, torch.ones_like(col_sums), msg=f"{method}: normalize=True is a no-op")
    torch.testing.assert_close(normed, first / first.nan_to_num().abs().sum(0), equal_nan=True)
    assert out.show(display=False, return_html=True).startswith("<p><i>")


def test_show_states_the_scale_beside_saliency(model, tok, capsys):
    latim = inseq.load_model(model, "latim", tokenizer=tok).attribute(PROMPT, TEXT, **FAST)
    saliency = inseq.load_model(model, "saliency", tokenizer=tok).attribute(PROMPT, TEXT, **FAST)
    latim.show()
    saliency.show()
    shown = capsys.readouterr().out
    assert "Inseq's default normalize=True, as for gradient methods" in shown
    assert "logit contributions (each generated token's column sums to its logit minus the offset)" in shown
    latim.show(normalize=False)
    assert "latim: raw scores, logit contributions" in capsys.readouterr().out
    html = latim.show(display=False, return_html=True, normalize=False)
    assert "raw scores" in html.split("</p>")[0]


def test_right_padded_batches_are_refused_not_misread(model, tok):
    method = inseq.load_model(model, "latim", tokenizer=tok).attribution_method
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match="padded on the right"):
        method.compute_maps(ids, mask)


def test_latim_inseq_command_line(model, tok, tmp_path):
    """`latim inseq attribute -a latim ...` is Inseq's own CLI with our methods among its choices; `inseq` alone
    cannot list them (its choices are built when it is imported)."""
    folder = tmp_path / "mamba"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out_file = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "latim_captum.cli", "inseq", "attribute", "-m", str(folder), "-a", "latim",
           "--device", "cpu", "--input_texts", PROMPT, "--generated_texts", TEXT, "--hide_attributions",
           "--save_path", str(out_file), "--attribution_kwargs", '{"activation": "silu"}']  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    saved = inseq.FeatureAttributionOutput.load(str(out_file))
    assert saved.info["attribution_method"] == "latim"
    assert saved.info["attribution_args"] == {"activation": "silu"}
    direct = inseq.load_model(model, "latim", tokenizer=tok).attribute(PROMPT, TEXT, activation="silu", **FAST)
    torch.testing.assert_close(saved[0].target_attributions, direct[0].target_attributions, equal_nan=True)
    bad = subprocess.run([sys.executable, "-m", "latim_captum.cli", "inseq", "attribute", "-a", "nope"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "latim_alti_logit" in bad.stderr  # Inseq's own argument error lists ours
    json.loads(out_file.read_text())  # a plain Inseq JSON file


def test_contrast_read_at_another_prefix_than_inseqs_is_said(model, tok):
    """After the contrast text has differed, Inseq's own contrastive functions read the contrast logit at the contrast
    text's prefix; the map reads it at the attributed text's (one forward pass): a warning names those steps, and an
    attribution ended where the texts part has none."""
    import warnings

    am = inseq.load_model(model, "latim", tokenizer=tok)
    n_prompt = len(PROMPT.split())
    with pytest.warns(UserWarning, match=f"differs from the attributed text at position {n_prompt}; .*attr_pos_end"):
        am.attribute(PROMPT, TEXT, attributed_fn="contrast_prob_diff", contrast_targets=CONTRAST, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        am.attribute(PROMPT, TEXT, attributed_fn="contrast_prob_diff", contrast_targets=CONTRAST,
                     attr_pos_end=n_prompt + 1, **FAST)  # fmt: skip
    other_prompt = " ".join(["w30", *TEXT.split()[1:]])  # differs inside the prompt: every step reads another prefix
    with pytest.warns(UserWarning, match=f"at steps {n_prompt} to .*shares the prompt"):
        am.attribute(PROMPT, TEXT, attributed_fn="contrast_prob_diff", contrast_targets=other_prompt, **FAST)
