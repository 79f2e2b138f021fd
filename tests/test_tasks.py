"""What the task benchmarks share: models with a chosen conv activation, the kernel checks, schedules, method names,
decomposition errors per strategy."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import latim_captum
from latim_captum.tasks.models import HIDDEN_ACTS, block_kernels, build_model, check_device_forward
from latim_captum.tasks.reports import exact_strategy, reconstruction_errors, resolve_method
from latim_captum.tasks.training import cosine, inverse_sqrt, make_optimizer


def _tiny(variant: str, act: str = "silu"):
    kw = dict(head_dim=16) if variant == "mamba2" else {}
    return build_model(variant, layers=1, d_model=32, state=8, vocab=20, seq_len=12, act=act, **kw)


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_build_model_sets_the_conv_activation(variant):
    x = torch.randn(2, 6, 64)  # the conv's input channels of a d_model 32 model (expand 2)
    for act in HIDDEN_ACTS:
        model = _tiny(variant, act)
        assert model.config.hidden_act == act and not model.config.use_cache
        mixer = model.backbone.layers[0].mixer
        # what the PyTorch path applies after the conv (by name, or the module): none for "linear"
        expected = {"silu": torch.nn.functional.silu(x), "relu": x.clamp_min(0), "linear": x}[act]
        assert mixer.activation == act and torch.allclose(mixer.act(x), expected)
    with pytest.raises(ValueError, match="activation"):
        _tiny(variant, "gelu")
    with pytest.raises(ValueError, match="variant"):
        build_model("mamba3", layers=1, d_model=32, state=8, vocab=20)


def test_exact_strategy_per_activation_and_its_decomposition_error():
    ids = torch.randint(0, 20, (2, 10), generator=torch.Generator().manual_seed(0))
    # every strategy that is exact on the model: its named one, act_gate (any activation), act for no activation
    for act, exact, also_exact in (
        ("silu", "silu_gate", {"act_gate"}),
        ("linear", "identity", {"act_gate", "act"}),
        ("relu", "act_gate", set()),
    ):
        model = _tiny("mamba2", act).eval()
        assert exact_strategy(model) == exact
        errors = reconstruction_errors(model, ids)
        assert set(errors) == set(latim_captum.ACTIVATIONS)
        for name in {exact} | also_exact:
            assert max(errors[name]) < 1e-5, (act, name, errors[name])
        # the SiLU strategies (silu_gate holds σ(ψ) fixed; the others approximate SiLU) are refused (None) on a model
        # without SiLU, never reported as a number
        for name in ("silu", "taylor1", "taylor2", "silu_gate"):
            assert (errors[name] is None) == (act != "silu"), (act, name)
        for name, errs in errors.items():
            if errs is not None and name not in {exact} | also_exact:
                assert min(errs) > 1e-3, f"{name} is not exact on a {act} model"


def test_the_device_check_catches_a_training_forward_that_ignores_the_activation():
    model = _tiny("mamba1", "relu")
    assert check_device_forward(model, torch.device("cpu"), seq_len=8) == (0.0, 0.0)  # same path on both sides

    class SiluInTraining(torch.nn.Module):
        """What mamba-ssm's fused Mamba-1 training path does to a ReLU model: SiLU in the conv while training."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

        def forward(self, **kwargs):
            mixer = self.inner.backbone.layers[0].mixer
            mixer.activation, mixer.act = ("silu", torch.nn.SiLU()) if self.training else ("relu", torch.nn.ReLU())
            try:
                return self.inner(**kwargs)
            finally:
                mixer.activation, mixer.act = "relu", torch.nn.ReLU()

    with pytest.raises(ValueError, match="does not follow hidden_act='relu'"):
        check_device_forward(SiluInTraining(model), torch.device("cpu"), seq_len=8)


class _StraightThroughReLU(torch.nn.Module):
    """ReLU's values with the identity's derivative: a training path whose forward is the model and whose backward
    is not (what a kernel with the wrong activation flag in its backward would give)."""

    def forward(self, x):
        return x + (torch.relu(x) - x).detach()


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_the_device_check_catches_a_backward_that_is_not_the_forwards(variant):
    import types

    from latim_captum.tasks.unfused import REFERENCE_OPS, unfused_mixer_forward

    model = _tiny(variant, "relu")
    straight_through = {"on": False}
    # "the device" is train mode, where the mixers run the unfused forward on the reference kernels (it applies the
    # mixer's own act; HF's train-mode CPU path in recent releases is a reference of the fused kernel, which does not)
    for mixer in (m for m in model.modules() if type(m).__name__.endswith("Mixer")):

        def forward(self, hidden_states, *args, _own=mixer.forward, **kwargs):
            if not self.training:
                return _own(hidden_states, *args, **kwargs)
            act = self.act
            self.act = _StraightThroughReLU() if straight_through["on"] else act
            try:
                return unfused_mixer_forward(self, hidden_states, REFERENCE_OPS)
            finally:
                self.act = act

        mixer.forward = types.MethodType(forward, mixer)
    assert max(check_device_forward(model, torch.device("cpu"), seq_len=8)) < 1e-5
    straight_through["on"] = True
    with pytest.raises(ValueError, match="backward differs from the PyTorch one: .*gradient by"):
        check_device_forward(model, torch.device("cpu"), seq_len=8)
    # the forward alone is the model's: the logits agree, so only the gradients can have failed it
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        assert torch.allclose(model.train()(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5)


def test_block_kernels_refuses_when_too_late_and_hides_the_kernels_otherwise():
    import transformers.models.mamba.modeling_mamba  # noqa: F401 (the tests have imported it already anyway)

    with pytest.raises(ValueError, match="before"):
        block_kernels()
    code = (
        "from latim_captum.tasks.models import block_kernels; block_kernels()\n"
        "import importlib.util, sys\n"
        "for name in ('mamba_ssm', 'causal_conv1d'):\n"
        "    assert importlib.util.find_spec(name) is None\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit(f'{name} importable')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_schedules_hand_values():
    f = inverse_sqrt(4)
    assert [f(s) for s in (0, 3, 15)] == [0.25, 1.0, 0.5]  # steps 1, 4, 16: 1/4, 1, sqrt(4/16)
    g = cosine(warmup=2, total=6)
    # warm-up 1/2, 1; then ½(1 + cos(π·k/4)) for k = 1..4
    assert [g(s) for s in range(6)] == pytest.approx(
        [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in (1, 2, 3, 4)]
    )
    assert g(100) == 0.0
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, lr=0.1, weight_decay=0.0, warmup=2, schedule="cosine", steps=6)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="schedule"):
        make_optimizer(model, lr=0.1, weight_decay=0.0, warmup=2, schedule="step", steps=6)


def test_resolve_method_names_strategies_outside_the_registry():
    model = _tiny("mamba2", "linear").eval()
    ids = torch.randint(0, 20, (1, 7), generator=torch.Generator().manual_seed(1))
    method = resolve_method("l2_identity")
    assert (method.activation, method.per_layer, method.label) == ("identity", True, "LaTIM (ℓ2) f=identity")
    maps = method(model, ids)
    assert torch.allclose(maps, latim_captum.interactions(model, ids, method="l2", activation="identity"))
    logit = resolve_method("alti_logit_identity")(model, ids)
    assert logit.shape == (1, 7, 7)
    assert resolve_method("l2") is resolve_method("l2")  # registry entries come back as they are
    with pytest.raises(ValueError, match="unknown method"):
        resolve_method("l2_relu")


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_prepare_for_kernels_hands_them_none_and_keeps_the_model(variant, tmp_path):
    """The kernels take ``activation=None`` for "no activation" and refuse the name "linear": a linear model gets
    None, computes the same logits on the PyTorch path, and is saved as "linear"."""
    from latim_captum.tasks.models import prepare_for_kernels_

    ids = torch.randint(0, 20, (2, 9), generator=torch.Generator().manual_seed(2))
    model = _tiny(variant, "linear").eval()
    before = model(input_ids=ids).logits
    prepare_for_kernels_(model)
    assert [b.mixer.activation for b in model.backbone.layers] == [None]
    assert torch.allclose(model(input_ids=ids).logits, before, atol=1e-6)
    model.save_pretrained(tmp_path)
    assert '"hidden_act": "linear"' in (tmp_path / "config.json").read_text()
    silu = prepare_for_kernels_(_tiny(variant, "silu"))
    assert silu.backbone.layers[0].mixer.activation == "silu"


@pytest.mark.parametrize("module", ["latim_captum.copying.train", "latim_captum.alignment.train"])
def test_trainers_hide_the_kernels_first_or_say_why_not(module, tmp_path, capsys):
    """``--kernels off`` runs before anything else in the trainers; in this process HF's Mamba modules are loaded
    already, so it must refuse (in a fresh process it hides the kernels: the subprocess test above)."""
    import importlib

    main = importlib.import_module(module).main
    assert main(["--variant", "mamba2", "--out", str(tmp_path), "--kernels", "off", "--steps", "1"]) == 2
    assert "--kernels off must come before" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()
