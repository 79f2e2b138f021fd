"""The gradual activation switch of continued training (the paper's App. B.3; :mod:`latim_captum.tasks.switch`):
the blend and its schedule by hand, the switching model against HF's own models at both ends, and the trainers'
``--switch-from`` runs end to end (saved as the new activation's model, refused when cut mid-switch, resumed)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import perturb_
from latim_captum.tasks.models import build_model
from latim_captum.tasks.switch import (
    CUT_ACT,
    SwitchActivation,
    install_switch_,
    mark_cut_,
    set_alpha_,
    switch_alpha,
    uncut_,
)
from latim_captum.tasks.training import wsd
from latim_captum.tasks.unfused import REFERENCE_OPS, install_unfused_forward_


def test_alpha_schedule_by_hand():
    # App. B.3: min(1, step / (total − decay))², 1 over the last `decay` steps
    assert [switch_alpha(s, steps=200, decay=100) for s in (0, 50, 100, 150, 199)] == [0.0, 0.25, 1.0, 1.0, 1.0]
    assert switch_alpha(30, steps=100, decay=40) == pytest.approx(0.25)
    for decay in (0, 100):
        with pytest.raises(ValueError, match="1 <= decay < steps"):
            switch_alpha(1, steps=100, decay=decay)


def test_wsd_schedule_by_hand():
    f = wsd(warmup=4, total=20, decay=5)
    # warm-up 1/4 .. 1, stable to step 15, then (20 − s + 1)/5 over steps 16..20, down to 1/5 (s = index + 1)
    assert [f(i) for i in range(20)] == [0.25, 0.5, 0.75] + [1.0] * 13 + [0.8, 0.6, 0.4, 0.2]
    assert wsd(warmup=1, total=3, decay=1)(2) == 1.0, "a one-step decay phase trains"
    with pytest.raises(ValueError, match="decay >= 1"):
        wsd(warmup=4, total=20, decay=0)
    with pytest.raises(ValueError, match="warmup \\+ decay <= steps"):
        wsd(warmup=16, total=20, decay=5)


@pytest.mark.parametrize("new", ["relu", "linear"])
def test_the_blend_and_its_derivative(new):
    x = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    relu_or_id = torch.relu if new == "relu" else (lambda t: t)
    act = SwitchActivation(new)
    assert torch.equal(act(x), F.silu(x)), "α = 0: SiLU itself"
    act.alpha = 1.0
    assert torch.equal(act(x), relu_or_id(x)), "α = 1: the new activation itself"
    act.alpha = 0.3
    got = act(x)
    torch.testing.assert_close(got, 0.7 * F.silu(x) + 0.3 * relu_or_id(x), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(got.sum(), x)
    sig = torch.sigmoid(x.detach())
    silu_prime = sig * (1 + x.detach() * (1 - sig))
    new_prime = (x.detach() > 0).double() if new == "relu" else torch.ones_like(x.detach())
    torch.testing.assert_close(grad, 0.7 * silu_prime + 0.3 * new_prime, rtol=1e-12, atol=1e-12)
    assert "silu -> " + new in repr(act)


def _pair(variant: str, new: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(SiLU model moved off its init, the same weights as a `new` model, the SiLU one made to switch to `new`)."""
    kw = dict(layers=2, d_model=16, state=4, vocab=12, head_dim=8, seq_len=12)
    silu = perturb_(build_model(variant, act="silu", **kw), seed=5).double().eval()
    target = build_model(variant, act=new, **kw).double().eval()
    target.load_state_dict(silu.state_dict())
    switching = build_model(variant, act="silu", **kw).double().eval()
    switching.load_state_dict(silu.state_dict())
    return silu, target, switching


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
@pytest.mark.parametrize("new", ["relu", "linear"])
def test_the_switching_model_is_hfs_silu_model_at_0_and_its_new_model_at_1(variant, new):
    silu, target, switching = _pair(variant, new)
    switches = install_switch_(switching, new)
    assert len(switches) == 2 and switching.config.hidden_act == new
    install_unfused_forward_(switching, REFERENCE_OPS, on_cpu=True)
    ids = torch.randint(0, 12, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_silu, want_new = silu(input_ids=ids).logits, target(input_ids=ids).logits
        assert float((want_silu - want_new).abs().max()) > 1e-3, "the two activations' models differ"
        for alpha, want in ((0.0, want_silu), (1.0, want_new)):
            set_alpha_(switches, alpha)
            got = switching(input_ids=ids).logits
            # float32 rounding of HF's PyTorch path (tests/test_unfused.py)
            assert float((got - want).abs().max()) < 1e-6 * float(want.abs().max()), alpha
        set_alpha_(switches, 0.5)
        between = switching(input_ids=ids).logits
    assert float((between - want_silu).abs().max()) > 1e-4 and float((between - want_new).abs().max()) > 1e-4


def test_a_model_without_mixers_is_refused():
    class NoMixer(torch.nn.Module):
        config = None

    with pytest.raises(ValueError, match="no Mamba mixer"):
        install_switch_(NoMixer(), "relu")


def test_a_cut_config_names_no_activation_until_resumed():
    from transformers import Mamba2Config

    config = Mamba2Config(hidden_act="relu")
    mark_cut_(config, 0.25)
    mark_cut_(config, 0.5)  # a resumed run cut again keeps the new activation's name
    assert (config.hidden_act, config.latim_switch_to, config.latim_switch_alpha) == (CUT_ACT, "relu", 0.5)
    uncut_(config)
    assert config.hidden_act == "relu"
    with pytest.raises(ValueError, match="has ended"):
        mark_cut_(config, 1.0)


def test_a_folder_cut_mid_switch_is_refused_before_it_is_built(tmp_path):
    from latim_captum._loading import ModelLoadError, load_pretrained

    # written before latim_switch_to existed: hidden_act already the new activation's
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba2", "hidden_act": "linear",
                                                      "latim_switch_alpha": 0.3}))  # fmt: skip
    with pytest.raises(ModelLoadError, match=r"to 'linear' \(alpha 0.300 < 1\)"):
        load_pretrained(tmp_path, tokenizer=False)


_SMALL = ["--layers", "2", "--d-model", "16", "--head-dim", "8", "--state", "4", "--warmup", "2", "--quiet"]
_SOURCE = {
    "copy": ["--variant", "mamba2", "--steps", "8", "--n-train", "64", "--n-eval", "8", "--batch", "8",
             "--length", "4", "--vocab", "8", "--eval-every", "4", *_SMALL],
    "alignment": ["--variant", "mamba1", "--steps", "6", "--n-train", "16", "--n-eval", "4", "--batch", "4",
                  "--eval-every", "3", *_SMALL],
}  # fmt: skip
_SWITCH = ["--steps", "8", "--warmup", "2", "--decay", "3", "--eval-every", "4", "--quiet"]


def _main(task: str):
    if task == "copy":
        from latim_captum.copying.train import main
    else:
        from latim_captum.alignment.train import main
    return main


def _evaluate_saved(task: str, folder) -> float:
    """Held-out loss of the folder's model as HF loads it (no switch, no unfused forward): a continuous number, so
    that a saved model other than the one trained (its config's activation, say) shows."""
    from latim_captum.tasks.reports import load_model_dir

    model, _, _ = load_model_dir(folder)
    args = json.loads((folder / "training_args.json").read_text())
    if task == "copy":
        from latim_captum.copying.data import CopyTask
        from latim_captum.copying.train import evaluate_copy

        copy_task = CopyTask(length=args["length"], vocab_size=args["vocab"])
        return evaluate_copy(
            model, copy_task, copy_task.splits(args["n_train"], args["n_eval"], seed=args["seed"])[1]
        )["loss"]
    from latim_captum.alignment.train import evaluate_translation, task_of_scale

    align = task_of_scale(args["scale"])
    return evaluate_translation(
        model, align.encode(align.splits(args["n_train"], args["n_eval"], seed=args["seed"])[1])
    )["loss"]


@pytest.mark.parametrize("task", ["copy", "alignment"])
def test_a_switch_run_ends_as_the_new_activations_model(task, tmp_path):
    from transformers import AutoModelForCausalLM

    from latim_captum._loading import ModelLoadError, load_pretrained

    main = _main(task)
    variant = _SOURCE[task][1]
    assert main([*_SOURCE[task], "--seed", "1", "--out", str(tmp_path / "silu")]) == 0
    switch = ["--variant", variant, "--switch-from", str(tmp_path / "silu"), "--act", "relu", *_SWITCH]
    with pytest.raises(SystemExit, match=r"drop --seed 0 \(the source run's: 1\)"):
        main([*switch, "--seed", "0", "--out", str(tmp_path / "seed0")])
    assert main([*switch, "--out", str(tmp_path / "relu")]) == 0
    meta = json.loads((tmp_path / "relu" / "metrics.json").read_text())
    args = json.loads((tmp_path / "relu" / "training_args.json").read_text())
    config = json.loads((tmp_path / "relu" / "config.json").read_text())
    assert config["hidden_act"] == "relu" and config["latim_switch_alpha"] == 1.0
    assert meta["switch"] == {"from": str(tmp_path / "silu"), "from_act": "silu", "to": "relu", "alpha": 1.0,
                              "alpha_one_at_step": 5}  # fmt: skip
    # the source run's task, data and model; the switch's own recipe
    assert args["seed"] == 1 and args["schedule"] == "wsd" and args["clip"] == 5.0 and args["mimetic_layers"] == []
    assert meta["steps"] == 8 and [h["step"] for h in meta["history"]] == [4, 8]
    # what the trainer evaluated last (the switching model at α = 1, unfused on the reference kernels) is the model
    # HF loads from the folder
    assert _evaluate_saved(task, tmp_path / "relu") == pytest.approx(meta["eval_loss"], rel=1e-5)

    # cut before α reaches 1: saved for a resume, refused by the loaders, then finished
    assert main([*switch, "--out", str(tmp_path / "cut"), "--stop-at", "3"]) == 0
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["switch"]["alpha"] == pytest.approx((2 / 5) ** 2), "the α of the last step made (2 steps done)"
    with pytest.raises(ModelLoadError, match="mid-way through switching .* to 'relu' .* resume the run"):
        load_pretrained(tmp_path / "cut")
    # transformers' own loader (Inseq's load_model, a user's script) refuses it too, naming the cut activation,
    # rather than building a ReLU model from weights trained for a blend
    with pytest.raises(KeyError, match="latim_switch_cut"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    resume = ["--variant", variant, "--resume", str(tmp_path / "cut"), "--out", str(tmp_path / "on"), "--quiet"]
    assert main(resume) == 0
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["switch"]["alpha"] == 1.0
    load_pretrained(tmp_path / "on")


def test_switch_refusals(tmp_path):
    main = _main("copy")
    assert main([*_SOURCE["copy"], "--act", "linear", "--out", str(tmp_path / "linear")]) == 0
    base = ["--variant", "mamba2", "--act", "relu", "--out", str(tmp_path / "x"), *_SWITCH]
    with pytest.raises(SystemExit, match="a linear model; the switch starts from silu"):
        main([*base, "--switch-from", str(tmp_path / "linear")])
    with pytest.raises(SystemExit, match="no training_args.json"):
        main([*base, "--switch-from", str(tmp_path / "nothing")])
    assert main([*_SOURCE["copy"], "--out", str(tmp_path / "silu")]) == 0
    with pytest.raises(
        SystemExit, match=r"keeps the source run's task.*; drop --length 6 \(the source run's: 4\)"
    ):
        main([*base, "--switch-from", str(tmp_path / "silu"), "--length", "6"])
    with pytest.raises(SystemExit, match="drop --mimetic-layers"):
        main([*base, "--switch-from", str(tmp_path / "silu"), "--mimetic-layers", "0"])
    with pytest.raises(SystemExit, match="1 <= decay < steps, got decay 0"):
        main([*base, "--switch-from", str(tmp_path / "silu"), "--decay", "0"])


def test_options_a_run_would_ignore_are_refused(tmp_path, capsys):
    main = _main("copy")
    run = [*_SOURCE["copy"], "--out", str(tmp_path / "m")]
    assert main([*run, "--decay", "3"]) == 2, "decay is the wsd schedule's; the copy preset's is inverse_sqrt"
    assert "--decay 3 is the wsd schedule's decay; this run's schedule is inverse_sqrt" in capsys.readouterr().err
    assert main([*run, "--clip", "0"]) == 2
    assert "--clip must be > 0" in capsys.readouterr().err
    # a run saved before --switch-from existed: resuming it as a switch would change its recipe
    assert main([*run, "--stop-at", "3"]) == 0
    saved = tmp_path / "m" / "training_args.json"
    args = json.loads(saved.read_text())
    for key in ("switch_from", "decay", "clip"):
        args.pop(key)
    saved.write_text(json.dumps(args))
    resume = ["--variant", "mamba2", "--resume", str(tmp_path / "m"), "--out", str(tmp_path / "on"), "--quiet"]
    with pytest.raises(SystemExit, match=r"drop --switch-from .* \(the run's: not set\)"):
        main([*resume, "--switch-from", str(tmp_path / "m")])
    assert main(resume) == 0
