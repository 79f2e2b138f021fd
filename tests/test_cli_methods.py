"""Method registry and the ``latim`` command line (demo, attribute, error-report, bench copying, errors)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from latim_captum.cli import main
from latim_captum.methods import METHOD_REGISTRY, available_methods, get_method, next_token_targets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    from PIL import Image

    with open(path, "rb") as fh:
        if fh.read(8) != PNG_MAGIC:
            return False
    with Image.open(path) as img:
        return img.size[0] > 100 and img.size[1] > 100


def test_registry_shapes_and_causality():
    from conftest import build

    model = build("mamba2", layers=2)
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(0))
    for name in ("l2", "alti_silu_gate", "alti_logit", "saliency", "input_x_gradient", "integrated_gradients"):
        maps = get_method(name)(model, ids)
        assert maps.shape == ((2, 2, 6, 6) if METHOD_REGISTRY[name].per_layer else (2, 6, 6)), name
        assert not maps.triu(1).any(), f"{name} must be causal"
    assert not model.training
    assert {"mamba_attention", "mamba_attribution", "mamba_lrp"} <= set(METHOD_REGISTRY)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def test_method_options_backend_and_max_sequences():
    """LaTIM entries give the same maps on either backend; row-replicating ones the same with any replica cap."""
    from conftest import build

    model = build("mamba1", layers=2)
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(1))
    for name in ("l2", "alti_silu_gate", "alti_logit"):
        ref, fast = (get_method(name)(model, ids, backend=b) for b in ("ref", "fast"))
        assert float((fast - ref).abs().max() / ref.abs().max()) < 1e-4, name
    for name in ("saliency", "mamba_lrp"):
        torch.testing.assert_close(
            get_method(name)(model, ids, max_sequences=1), get_method(name)(model, ids, max_sequences=256)
        )
    with pytest.raises(ValueError, match="max_sequences must be >= 1, got 0"):
        get_method("saliency")(model, ids, max_sequences=0)
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        get_method("l2")(model, ids, backend="gpu")


def test_saliency_row_is_gradient_of_next_token_logit():
    from conftest import build

    model = build("mamba1", layers=2)
    ids = torch.tensor([[3, 7, 1, 9, 4]])
    maps = get_method("saliency")(model, ids)
    row = 2
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logit = model(inputs_embeds=emb).logits[0, row, ids[0, row + 1]]
    (grad,) = torch.autograd.grad(logit, emb)
    torch.testing.assert_close(maps[0, row, : row + 1], grad[0, : row + 1].norm(dim=-1), rtol=1e-4, atol=1e-6)
    assert torch.equal(next_token_targets(ids), torch.tensor([[7, 1, 9, 4, 4]]))


def test_alti_logit_entry_explains_true_next_token():
    from conftest import build
    from latim_captum import alti_logit

    model = build("mamba2", layers=2)
    ids = torch.tensor([[5, 2, 8, 1]])
    res = alti_logit(model, ids, activation="silu_gate", target=next_token_targets(ids))
    torch.testing.assert_close(get_method("alti_logit_silu_gate")(model, ids), res.scores)
    assert res.targets[0, :3].tolist() == [2, 8, 1]


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    # one variant and three methods keep it fast; the full default demo is the same code path
    rc = main(["demo", "--out", str(out), "--variants", "mamba2", "--methods", "l2", "alti_logit", "saliency"])
    assert rc == 0
    printed = capsys.readouterr().out
    for text in ("mamba2", "LaTIM (ℓ2)", "LaTIM (ALTI-Logit)", "Saliency", "AUC", "0.98 / 0.86 / 0.74"):
        assert text in printed, text
    for variant in ("mamba2",):
        for name in ("l2", "l2_layers", "alti_logit", "saliency", "side_by_side"):
            assert _is_png(out / f"{variant}_{name}.png"), f"{variant}_{name}.png"
        scores = json.loads((out / f"{variant}_scores.json").read_text())
        assert scores["accuracy"] >= 0.9
        assert 0.0 <= scores["methods"]["l2"]["auc"] <= 1.0


@pytest.fixture
def saved_model(tmp_path):
    from conftest import VOCAB, build
    from latim_captum.copying import copy_tokenizer

    model = build("mamba1", layers=2)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    copy_tokenizer(VOCAB).save_pretrained(path)
    return path


@pytest.fixture
def saved_untied_model(tmp_path):
    """A saved tiny model whose LM head is its own: its predictions are not its input tokens (a tied random model
    predicts the token it reads)."""
    from conftest import VOCAB, build
    from latim_captum.copying import copy_tokenizer

    model = build("mamba1", layers=2, tie_word_embeddings=False)
    path = tmp_path / "untied"
    model.save_pretrained(path)
    copy_tokenizer(VOCAB).save_pretrained(path)
    return path


@pytest.mark.parametrize("method", ["alti_logit", "l2", "saliency"])
def test_attribute_on_saved_model(saved_model, tmp_path, method):
    fig, scores = tmp_path / "fig.png", tmp_path / "s.json"
    rc = main(
        [
            "attribute",
            "--model",
            str(saved_model),
            "--text",
            "abc|ab",
            "--target",
            "c",
            "--method",
            method,
            *(["--layer", "1"] if method == "l2" else []),
            "--out",
            str(fig),
            "--json",
            str(scores),
        ]
    )
    assert rc == 0 and _is_png(fig)
    data = json.loads(scores.read_text())
    assert data["tokens"] == list("abc|abc")
    matrix = torch.tensor(data["scores"])
    assert matrix.shape == (7, 7) and not matrix.triu(1).any()


@pytest.mark.parametrize("name, activation", [("alti_rollout", None), ("alti_rollout", "silu"),
                                              ("alti_rollout_silu_gate", None)])  # fmt: skip
def test_attribute_alti_rollout_is_the_rollout_of_the_api(saved_model, tmp_path, name, activation):
    from latim_captum import alti_rollout
    from latim_captum.cli import load_model

    scores = tmp_path / "s.json"
    extra = [] if activation is None else ["--activation", activation]
    argv = ["attribute", "--model", str(saved_model), "--text", "abc|ab", "--method", name, *extra]
    assert main([*argv, "--out", str(tmp_path / "f.png"), "--json", str(scores)]) == 0
    data = json.loads(scores.read_text())
    used = activation or "silu_gate"
    assert data["activation"] == used and data["layer"] == "all" and data["explains"] is None
    model, tok = load_model(str(saved_model), "cpu")
    ids = tok("abc|ab", return_tensors="pt").input_ids
    want = alti_rollout(model, ids, activation=used)[0]
    got = torch.tensor(data["scores"])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(-1), torch.ones(len(data["tokens"])))  # every rollout row sums to 1
    assert not got.triu(1).any()


def test_attribute_alti_rollout_refuses_what_it_cannot_use(saved_model, tmp_path, capsys):
    argv = ["attribute", "--model", str(saved_model), "--text", "abc|ab", "--out", str(tmp_path / "f.png")]
    assert main([*argv, "--method", "alti_rollout", "--layer", "1"]) == 2
    assert "aggregates every layer" in capsys.readouterr().err
    assert main([*argv, "--method", "alti_rollout_silu_gate", "--activation", "silu"]) == 2
    assert "means activation silu_gate" in capsys.readouterr().err
    assert main([*argv, "--method", "alti_rolout"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'alti_rolout'" in err and "alti_rollout_silu_gate" in err and "saliency" in err


def test_error_report(saved_model, capsys):
    assert main(["error-report", "--model", str(saved_model), "--text", "abcd|abcd"]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.strip()}
    assert float(lines["silu_gate"][0]) < 1e-4, "silu_gate is exact"
    assert float(lines["silu"][0]) > float(lines["silu_gate"][0])


def test_bench_copying_tiny(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "copying",
            "--variant",
            "mamba2",
            "--n-samples",
            "4",
            "--methods",
            "l2",
            "alti_logit",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "copying-mamba2-tiny.json").read_text())
    assert report["accuracy"]["token_acc"] >= 0.9
    assert len(report["methods"]["l2"]["layers"]) == report["n_layers"]
    assert set(report["reconstruction_error"]) >= {"silu", "silu_gate"}
    md = (tmp_path / "copying-mamba2-tiny.md").read_text()
    assert "0.98 / 0.86 / 0.74" in md and "Decomposition error" in md
    # the command that made it, and the model-free rows a method has to beat
    assert report["meta"]["command"].startswith("latim bench copying --variant mamba2 --scale tiny --device cpu")
    assert f"- command: `{report['meta']['command']}`" in md
    free = report["model_free"]
    assert free["random"]["by_rows"]["predict"]["auc"] == pytest.approx(0.5, abs=0.1)
    assert free["same_token"]["by_rows"]["predict"]["auc"] > 0.55, "the band holds the row's own token's twin"
    assert "*Random map (no model)*" in md and "*Same token as the row's input (no model)*" in md
    # a misspelt method fails before any work: no partial report of the methods before it
    bad = tmp_path / "bad"
    argv = ["bench", "copying", "--variant", "mamba2", "--scale", "tiny", "--device", "cpu", "--n-samples", "4",
            "--methods", "l2", "alti_logti", "--out", str(bad), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert not bad.exists() or not any(bad.iterdir())


def test_copying_report_is_written_after_every_method(tmp_path):
    """A run cut short by a time limit keeps the rows it finished: the report is rewritten after each method."""
    from latim_captum.copying.data import CopyTask
    from latim_captum.copying.evaluate import evaluate_model, load_model_dir, render_markdown
    from latim_captum.models import copy_model_path

    model, _, meta = load_model_dir(copy_model_path("mamba1"))
    seen: list[tuple[list[str], bool]] = []

    def on_update(report: dict) -> None:
        render_markdown({**report, "meta": {}})  # a partial report must render
        seen.append((list(report["methods"]), bool(report["reconstruction_error"])))

    final = evaluate_model(
        model, CopyTask(**meta["task"]), n_samples=2, methods=["l2", "alti"], quiet=True, on_update=on_update
    )
    assert seen == [([], True), (["l2"], True), (["l2", "alti"], True)]
    assert list(final["methods"]) == ["l2", "alti"]


def test_copying_resume_runs_only_the_missing_methods(tmp_path, capsys):
    """``--resume`` continues a report cut short: the finished methods are kept as they were (not recomputed), the
    missing ones are computed as a fresh run computes them; another model's or another sample count's report is
    refused by name."""

    def bench(out, *extra, variant="mamba2", n="3"):
        argv = ["bench", "copying", "--variant", variant, "--n-samples", n, "--out", str(tmp_path / out), "--quiet"]
        return main([*argv, *extra])

    def report(out, variant="mamba2"):
        return json.loads((tmp_path / out / f"copying-{variant}-tiny.json").read_text())

    assert bench("cut", "--methods", "l2") == 0
    assert bench("fresh", "--methods", "alti") == 0
    first = report("cut")
    cut = str(tmp_path / "cut" / "copying-mamba2-tiny.json")
    assert bench("resumed", "--methods", "l2", "alti", "--resume", cut) == 0
    resumed = report("resumed")
    assert list(resumed["methods"]) == ["l2", "alti"]
    assert resumed["methods"]["l2"] == first["methods"]["l2"], "a finished method is kept, seconds included"
    fresh = report("fresh")["methods"]["alti"]
    assert resumed["methods"]["alti"]["by_rows"] == fresh["by_rows"]
    assert resumed["accuracy"] == first["accuracy"]
    assert resumed["meta"]["resumed_from"] == [first["meta"]["command"]]
    assert resumed["meta"]["command"].endswith(f"--resume {cut}"), "the command that wrote the report, resume included"
    md = (tmp_path / "resumed" / "copying-mamba2-tiny.md").read_text()
    assert f"computed by: `{first['meta']['command']}`" in md, "the report says which command computed kept rows"
    assert "computed by" not in (tmp_path / "cut" / "copying-mamba2-tiny.md").read_text()
    assert resumed["backend"] == "auto"
    # the record names every path the rows came from
    assert bench("by-ref", "--methods", "l2", "alti", "--resume", cut, "--backend", "ref") == 0
    assert report("by-ref")["backend"] == "auto, ref"
    by_ref = str(tmp_path / "by-ref" / "copying-mamba2-tiny.json")
    assert bench("again", "--methods", "l2", "alti", "--resume", by_ref, "--backend", "ref") == 0
    assert report("again")["backend"] == "auto, ref", "each path once"
    capsys.readouterr()

    assert bench("other", "--methods", "alti", "--resume", cut, variant="mamba1") == 2
    assert "other weights" in capsys.readouterr().err
    assert bench("fewer", "--methods", "alti", "--resume", cut, n="2") == 2
    assert "differs from this run in n_samples" in capsys.readouterr().err
    old = {**first, "meta": {k: v for k, v in first["meta"].items() if k != "weights"}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert bench("old", "--methods", "alti", "--resume", str(tmp_path / "old.json")) == 2
    assert "no weights fingerprint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["attribute", "--model", "/no/such/dir", "--text", "ab", "--out", "x.png"], "no model at"),
        (["attribute", "--model", "mamba2", "--text", "ab", "--method", "nope", "--out", "x.png"], "unknown method"),
        (["bench", "copying", "--variant", "mamba3"], "invalid choice"),
        (["demo", "--seed", "x"], "invalid int value"),
        (["bench", "copying", "--variant", "mamba1", "--scale", "paper", "--model", "/no/such"], "no trained model"),
    ],
)
def test_cli_errors_are_one_line(argv, fragment, capsys):
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("latim: error:") and fragment in err, err


def test_unsupported_model_is_one_line(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from latim_captum.copying import copy_tokenizer

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=16)).save_pretrained(path)
    copy_tokenizer(16).save_pretrained(path)
    capsys.readouterr()  # drop save_pretrained's progress output
    assert main(["attribute", "--model", str(path), "--text", "ab", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GPT2LMHeadModel" in err, err


def test_console_script_help():
    proc = subprocess.run(
        [sys.executable, "-m", "latim_captum.cli", "bench", "copying", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--variant" in proc.stdout and "--scale" in proc.stdout


def test_available_methods_without_baselines():
    names = available_methods()
    assert {"l2", "alti", "alti_logit", "l2_silu_gate", "saliency", "integrated_gradients"} <= set(names)


def _attribute_json(model_dir, tmp_path, *extra) -> dict:
    out, js = tmp_path / "f.png", tmp_path / "s.json"
    assert main(["attribute", "--model", str(model_dir), "--out", str(out), "--json", str(js), *extra]) == 0
    return json.loads(js.read_text())


@pytest.mark.parametrize("method", ["alti_logit_silu_gate", "saliency", "mamba_lrp", "mamba_attribution"])
def test_attribute_explains_the_same_tokens_for_every_method(saved_untied_model, tmp_path, method):
    """Without --target every logit-explaining method explains the model's own prediction at each row, with
    --target each true next token: the CLI's map equals the registry's with those targets, computed here from the
    model's logits, and the two readings differ (the option acts)."""
    from transformers import AutoModelForCausalLM

    from conftest import VOCAB
    from latim_captum.copying import copy_tokenizer

    model = AutoModelForCausalLM.from_pretrained(saved_untied_model)
    tok = copy_tokenizer(VOCAB)
    text = "abcab|cba"
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        predicted = model(ids).logits.argmax(-1)
    true_next = torch.cat([ids[:, 1:], predicted[:, -1:]], 1)  # the last row has no next token: its prediction
    assert (predicted != true_next).any(), "the test needs rows where the prediction is not the next token"
    assert predicted[0, -1] != ids[0, -1], "the test needs a last row whose own token is not its prediction"
    fn = get_method(method)
    expected = {"predicted": fn(model, ids, target=predicted)[0], "next": fn(model, ids, target=true_next)[0]}
    assert float((expected["predicted"] - expected["next"]).abs().max()) > 1e-3
    got = _attribute_json(saved_untied_model, tmp_path, "--text", text, "--method", method)
    assert got["explains"] == "predicted next token"
    torch.testing.assert_close(torch.tensor(got["scores"]), expected["predicted"].float(), atol=1e-5, rtol=1e-4)
    got = _attribute_json(saved_untied_model, tmp_path, "--text", text[:-1], "--target", text[-1], "--method", method)
    assert got["explains"].startswith("true next token")
    torch.testing.assert_close(torch.tensor(got["scores"]), expected["next"].float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "method, flags, fragment",
    [
        ("saliency", ["--activation", "silu"], "--activation: LaTIM options only"),
        ("mamba_lrp", ["--backend", "fast", "--precision", "tf32"], "--backend and --precision: LaTIM options only"),
        ("saliency", ["--dtype", "float64"], "--dtype: --method saliency computes in the model's dtype"),
        ("alti_logit", ["--layer", "0"], "aggregates every layer"),
        ("saliency", ["--layer", "1"], "aggregates every layer"),
    ],
)
def test_attribute_refuses_an_option_that_cannot_act(saved_model, tmp_path, method, flags, fragment, capsys):
    out = tmp_path / "x.png"
    argv = ["attribute", "--model", str(saved_model), "--text", "abc|ab", "--method", method, "--out", str(out)]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert fragment in err and not out.exists()


def test_registry_targets():
    """``target=`` of a registry method: "next" is the default, "predicted" the model's argmax, a tensor as given;
    bad values and a target for a method that explains none are refused."""
    from conftest import build, random_ids
    from latim_captum.methods import row_targets

    model = build("mamba2", layers=2, seed=5)
    ids = random_ids(2, 6, seed=1)
    fn = get_method("saliency")
    torch.testing.assert_close(fn(model, ids), fn(model, ids, target=torch.cat([ids[:, 1:], ids[:, -1:]], 1)))
    with torch.no_grad():
        predicted = model(ids).logits.argmax(-1)
    torch.testing.assert_close(row_targets(model, ids, "predicted"), predicted)
    model.train()
    row_targets(model, ids, "predicted")
    assert model.training, "the model's mode comes back"
    with pytest.raises(ValueError, match="unknown target 'gold'"):
        fn(model, ids, target="gold")
    with pytest.raises(ValueError, match=r"\[B, N\] = \(2, 6\) tensor"):
        fn(model, ids, target=ids[:, :3])
    with pytest.raises(ValueError, match="must lie in"):
        fn(model, ids, target=ids + 10_000)
    for dtype in (torch.bool, torch.float32, torch.complex64):
        with pytest.raises(ValueError, match=f"integer token ids, got dtype {dtype}"):
            fn(model, ids, target=torch.ones_like(ids, dtype=dtype))
    with pytest.raises(ValueError, match="explains no target token"):
        get_method("l2")(model, ids, target="predicted")


@pytest.mark.parametrize("method, layer", [("alti_logit", []), ("alti", ["--layer", "0"])])
def test_attribute_dtype_is_the_compute_dtype(saved_model, tmp_path, method, layer):
    """``--dtype float64`` computes LaTIM in float64 (the JSON keeps its digits, and says so); the float32 map agrees
    to float32 rounding and is not the float64 one."""
    from latim_captum.api import alti_logit, interactions
    from latim_captum.cli import load_model

    argv = ["--text", "abc|ab", "--method", method, *layer]
    got32 = _attribute_json(saved_model, tmp_path, *argv)
    got64 = _attribute_json(saved_model, tmp_path, *argv, "--dtype", "float64")
    assert (got32["dtype"], got64["dtype"]) == ("float32", "float64")
    model, tok = load_model(str(saved_model), "cpu")
    ids = torch.tensor([tok.convert_tokens_to_ids(list("abc|ab"))])
    target = get_method(method).spec.uses_target
    predicted = model(ids).logits.argmax(-1) if target else None
    if method == "alti_logit":
        expected = alti_logit(model, ids, target=predicted, dtype=torch.float64).scores[0]
    else:
        expected = interactions(model, ids, method="alti", layers=0, dtype=torch.float64)[0, 0]
    torch.testing.assert_close(torch.tensor(got64["scores"], dtype=torch.float64), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.tensor(got32["scores"], dtype=torch.float64), expected, rtol=1e-4, atol=1e-5)
    assert got32["scores"] != got64["scores"]


def test_registry_dtype_reaches_latim_and_the_baselines():
    from conftest import build, random_ids

    model = build("mamba1")
    ids = random_ids(1, 5)
    for name in ("l2", "alti_logit", "mamba_attention", "mamba_attribution", "mamba_lrp"):
        assert get_method(name)(model, ids, dtype=torch.float64).dtype == torch.float64, name
        assert get_method(name)(model, ids).dtype == torch.float32, name
    with pytest.raises(ValueError, match="computes in the model's dtype"):
        get_method("saliency")(model, ids, dtype=torch.float64)
