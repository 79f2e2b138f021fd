"""Options and inputs that used to be dropped or misread without a word: every one is now honoured or refused.

- ``latim attribute --target`` was glued to ``--text`` (``"w3 w4" + "w5 w6"`` read as ``w3 w4w5 w6``); it is
  tokenised apart, as ``latim attribute-dataset`` and Captum's LLM attribution do.
- Text outside the tokenizer's vocabulary became the unknown token (on the embedded copy models, before they had
  an ``<unk>`` of their own: the separator ``|``), and the map was of another input; it is refused.
- ``latim attribute`` records the activation strategy it used (the JSON and the figure's title).
- Inseq: ``position=`` reached the baselines' maps (a ``[B, L, N]`` row read as a token map) and ``layers=`` was
  dropped by aggregated methods; both are refused.
- ``latim inseq ...`` failures are one ``latim: error:`` line like every other command (``--debug``: traceback).
- Captum: under ``NoiseTunnel`` a method that explains a token needs ``target=`` (each noisy copy's own prediction
  was explained); ``contrast`` errors name ``contrast``; a bad compute ``dtype`` is refused by the constructor.
- ``latim bench speed`` / ``whole-sequence`` name a missing device instead of PyTorch's ``AssertionError``.
"""

from __future__ import annotations

import json

import pytest
import torch
from captum.attr import NoiseTunnel
from test_cli_hardening import _one_error_line

import latim_captum.attr as attr
from conftest import build, random_ids
from latim_captum.cli import main


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """A tiny Mamba-1 with a WordLevel tokenizer (``w0 w1 ...``, ``<unk>``), saved as a folder."""
    from test_inseq import make_model, make_tokenizer

    path = tmp_path_factory.mktemp("words") / "tiny"
    make_model("mamba1", layers=2).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _attribute_json(model, tmp_path, *argv: str) -> dict:
    out = tmp_path / "s.json"
    rc = main(["attribute", "--model", str(model), "--out", str(tmp_path / "f.png"), "--json", str(out), *argv])
    assert rc == 0
    return json.loads(out.read_text())


def test_target_is_tokenised_apart_from_the_text(word_model, tmp_path):
    got = _attribute_json(word_model, tmp_path, "--text", "w3 w4", "--target", "w5 w6", "--method", "alti_logit")
    assert got["tokens"] == ["w3", "w4", "w5", "w6"]
    assert got["explains"].startswith("true next token")
    assert len(got["scores"]) == 4


def test_text_outside_the_vocabulary_is_refused(word_model, tmp_path, capsys):
    rc = main(["attribute", "--model", str(word_model), "--text", "w3 hello w4", "--out", str(tmp_path / "f.png")])
    assert rc == 2
    _one_error_line(capsys, "outside the tokenizer's vocabulary")
    rc = main(["attribute", "--model", str(word_model), "--text", "w3 w4", "--target", "w5 bye",
               "--out", str(tmp_path / "f.png")])  # fmt: skip
    assert rc == 2
    _one_error_line(capsys, "--target 'w5 bye'")
    rc = main(["error-report", "--model", str(word_model), "--text", "w3 hello"])
    assert rc == 2
    _one_error_line(capsys, "outside the tokenizer's vocabulary")


def test_the_embedded_models_refuse_characters_outside_their_alphabet(tmp_path, capsys):
    rc = main(["attribute", "--model", "mamba1", "--text", "hello world", "--out", str(tmp_path / "f.png")])
    assert rc == 2
    _one_error_line(capsys, "read as its unknown token '<unk>'")
    got = _attribute_json("mamba1", tmp_path, "--text", "abc|ab", "--target", "c", "--method", "l2")
    assert got["tokens"] == ["a", "b", "c", "|", "a", "b", "c"]  # a typed separator is the separator


@pytest.mark.parametrize(("flags", "activation"), [((), "silu_gate"), (("--activation", "silu"), "silu"),
                                                   (("--method", "saliency"), None)])  # fmt: skip
def test_the_activation_used_is_recorded(word_model, tmp_path, flags, activation, capsys):
    argv = ("--text", "w3 w4 w5", *(("--method", "l2") if "--method" not in flags else ()), *flags)
    got = _attribute_json(word_model, tmp_path, *argv)
    assert got["activation"] == activation
    assert f"activation {activation}" in capsys.readouterr().out


# -- Inseq ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inseq_model():
    inseq = pytest.importorskip("inseq")
    from test_inseq import make_model, make_tokenizer

    import latim_captum  # noqa: F401  (registers the methods)

    return inseq, make_model("mamba1", layers=8), make_tokenizer()


@pytest.mark.parametrize(("method", "kwargs", "fragment"), [
    ("latim", {"layers": [0]}, "latim does not take layers"),
    ("latim_alti_logit", {"layers": [0]}, "does not take layers"),
    ("mamba_attention", {"position": -1}, "does not take position"),
    ("mamba_lrp", {"position": -1}, "does not take position"),
])  # fmt: skip
def test_inseq_refuses_options_its_map_would_drop(inseq_model, method, kwargs, fragment):
    """With 8 layers and 4 query rows, ``mamba_attention(position=-1)`` gave a ``[B, 8, 4]`` row per layer that
    passed as a token map: each step showed another layer's attention of the last row."""
    inseq, model, tok = inseq_model
    attributor = inseq.load_model(model, method, tokenizer=tok)
    with pytest.raises(ValueError, match=fragment):
        attributor.attribute("w3 w17 w5", "w3 w17 w5 w8 w22", show_progress=False, **kwargs)
    out = attributor.attribute("w3 w17 w5", "w3 w17 w5 w8 w22", show_progress=False)  # the plain call works
    assert out.sequence_attributions[0].target_attributions.shape[:2] == (5, 2)


def test_latim_inseq_failures_are_one_line(word_model, tmp_path, capsys):
    pytest.importorskip("inseq")
    argv = ["inseq", "attribute", "-m", str(word_model), "-a", "latim", "--device", "cpu", "--input_texts", "w3 w4",
            "--generated_texts", "w3 w4 w5", "--hide_attributions", "--save_path", str(tmp_path / "o.json"),
            "--attribution_kwargs", '{"layers": [0]}']  # fmt: skip
    assert main(argv) == 2
    _one_error_line(capsys, "does not take layers")
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("latim: error:")


# -- Captum ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls_name", ["LatimALTILogit", "LatimALTILogitLayers", "MambaLRP", "MambaAttribution"])
def test_noise_tunnel_without_a_target_is_refused(cls_name):
    """Each noisy copy's default target is its own prediction: copies whose prediction flips would explain another
    logit, averaged with the rest. Captum's own methods refuse the call too; with ``target=`` it runs."""
    model = build("mamba1", seed=3)
    ids = random_ids(2, 6, seed=1)
    embeds = model.get_input_embeddings()(ids).detach()
    method = getattr(attr, cls_name)(model)
    with pytest.raises(ValueError, match="under NoiseTunnel needs target="):
        NoiseTunnel(method).attribute(embeds, nt_samples=2, stdevs=0.1)
    pred = model(ids).logits[:, -1].argmax(-1)
    torch.manual_seed(0)
    out = NoiseTunnel(method).attribute(embeds, nt_samples=2, stdevs=0.1, target=pred)
    assert out.shape[0] == 2 and bool(torch.isfinite(out).all())
    assert method.attribute(embeds).shape[0] == 2  # outside NoiseTunnel the default target stays the prediction


def test_contrast_errors_name_contrast():
    model = build("mamba1")
    with pytest.raises(ValueError, match=r"^contrast has shape \(3,\).*NoiseTunnel"):
        attr.LatimALTILogit(model).attribute(random_ids(2, 5), target=[4, 7], contrast=[5, 6, 7])
    with pytest.raises(ValueError, match="^contrast token id 99 is out of the vocabulary"):
        attr.LatimALTILogit(model).attribute(random_ids(2, 5), target=4, contrast=99)


@pytest.mark.parametrize("cls_name", ["LatimL2", "LatimALTI", "LatimALTILogit", "MambaLRP", "MambaAttention"])
@pytest.mark.parametrize("dtype", ["float64", "torch.bfloat16"])
def test_a_bad_compute_dtype_is_refused_by_the_constructor(cls_name, dtype):
    value = torch.bfloat16 if dtype == "torch.bfloat16" else dtype
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        getattr(attr, cls_name)(build("mamba1"), dtype=value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("bench", ["speed", "whole-sequence"])
def test_benchmarks_name_a_missing_device(bench, tmp_path, capsys):
    """They read ``--device`` themselves; PyTorch's own message was "AssertionError: Torch not compiled with CUDA"."""
    assert main(["bench", bench, "--device", "cuda", "--out", str(tmp_path / "b")]) == 2
    _one_error_line(capsys, "device 'cuda' given but cuda is not available on this machine")
