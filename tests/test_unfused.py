"""The unfused training forward (:mod:`latim_captum.tasks.unfused`) with reference kernels against HF's own PyTorch
forward: the same logits and the same gradients, for every activation the trainers offer."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_ops_forward_is_the_model, perturb_
from latim_captum.tasks.models import build_model
from latim_captum.tasks.unfused import REFERENCE_OPS, ScanOps, install_unfused_forward_


def _model(variant: str, act: str) -> torch.nn.Module:
    m = build_model(variant, layers=2, d_model=16, state=4, vocab=12, head_dim=8, seq_len=12, act=act)
    # moved away from the init (Δ bias, A, D, norms, convs), in float64 so a wrong term cannot hide in rounding
    return perturb_(m, seed=3).double()


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
@pytest.mark.parametrize("act", ["silu", "relu", "linear"])
def test_unfused_forward_is_the_model(variant, act):
    torch.manual_seed(0)
    # eval mode: HF's plain PyTorch path in float64 (in train mode, transformers routes Mamba-1 through a reference
    # of mamba-ssm's fused function that computes in float32); Mamba has no dropout, so nothing else changes
    assert_ops_forward_is_the_model(_model(variant, act).eval(), REFERENCE_OPS, torch.randint(0, 12, (2, 11)))


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_each_kernel_is_used(variant):
    """A wrong kernel changes the logits: the forward really goes through the ops it is given."""
    model = _model(variant, "relu").eval()
    ids = torch.randint(0, 12, (1, 9))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    for field in ("conv", "selective_scan" if variant == "mamba1" else "mamba2_tail"):
        real = getattr(REFERENCE_OPS, field)
        wrong = ScanOps(**{**REFERENCE_OPS.__dict__, field: lambda *a, _real=real: 1.01 * _real(*a)})
        patched = _model(variant, "relu").eval()
        install_unfused_forward_(patched, wrong, on_cpu=True)
        with torch.no_grad():
            assert not torch.allclose(patched(input_ids=ids).logits, reference, atol=1e-6), field


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_cpu_inputs_keep_the_models_own_forward_unless_asked(variant):
    """Without ``on_cpu`` a CPU input takes the mixer's own forward (the trainers' device check compares the kernels
    with it). With it, a mask of ones is no mask (Mamba-1 hands every mixer the raw mask), and a padding mask is
    refused: falling back to the mixer's own forward would, on CUDA in train mode, be the fused kernel's SiLU."""
    calls = []

    def spy(*args):
        calls.append(1)
        return REFERENCE_OPS.conv(*args)

    spied = ScanOps(spy, REFERENCE_OPS.selective_scan, REFERENCE_OPS.mamba2_tail)
    model = _model(variant, "relu").train()
    install_unfused_forward_(model, spied)
    model(input_ids=torch.randint(0, 12, (2, 5)))
    assert not calls
    on_cpu = _model(variant, "relu").train()
    install_unfused_forward_(on_cpu, spied, on_cpu=True)
    on_cpu(input_ids=torch.randint(0, 12, (2, 5)), attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert len(calls) == 2  # one per layer
    with pytest.raises(ValueError, match="takes no padding"):
        on_cpu(input_ids=torch.randint(0, 12, (2, 5)), attention_mask=torch.tensor([[0, 1, 1, 1, 1], [1] * 5]))


def test_other_mixers_are_refused():
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    falcon = FalconMambaForCausalLM(FalconMambaConfig(hidden_size=16, state_size=4, num_hidden_layers=1,
                                                      vocab_size=12))  # fmt: skip
    with pytest.raises(TypeError, match="not FalconMambaMixer"):
        install_unfused_forward_(falcon, REFERENCE_OPS)


def test_the_kernels_are_named_when_missing():
    import importlib.util

    from latim_captum.tasks.unfused import kernel_ops

    if importlib.util.find_spec("mamba_ssm") is not None:
        pytest.skip("mamba-ssm is installed here")
    with pytest.raises(ImportError, match="--kernels unfused needs causal-conv1d and mamba-ssm"):
        kernel_ops()


def test_mamba2_clamps_the_time_step_as_the_model_does():
    """Mamba-2's Δ is clamped to ``time_step_limit``: with a limit that binds, both forwards clamp alike."""
    torch.manual_seed(0)
    model = _model("mamba2", "relu").eval()
    for module in model.modules():
        if hasattr(module, "time_step_limit"):
            module.time_step_limit = (0.0, 0.02)
    ids = torch.randint(0, 12, (2, 11))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        install_unfused_forward_(model, REFERENCE_OPS, on_cpu=True)
        got = model(input_ids=ids).logits
        unclamped = _model("mamba2", "relu").eval()(input_ids=ids).logits
    assert float((got - reference).abs().max()) < 1e-6 * float(reference.abs().max())
    assert float((unclamped - reference).abs().max()) > 1e-3  # the limit binds


def test_the_trainers_refuse_unfused_kernels_off_cuda(tmp_path, capsys):
    from latim_captum.copying.train import main

    rc = main(["--variant", "mamba2", "--act", "relu", "--kernels", "unfused", "--out", str(tmp_path / "m"),
               "--steps", "2", "--length", "4", "--vocab", "8", "--n-train", "16", "--n-eval", "4"])  # fmt: skip
    assert rc == 2
    assert "--kernels unfused runs mamba-ssm's CUDA kernels" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_missing_kernels_are_one_error_line_for_the_trainers():
    """On a CUDA machine without mamba-ssm, ``--kernels unfused`` is a ValueError naming the packages (the trainers
    print ValueErrors as one line), before any forward pass."""
    import importlib.util

    from latim_captum.tasks.training import ready_model

    if importlib.util.find_spec("mamba_ssm") is not None:
        pytest.skip("mamba-ssm is installed here")
    # widths causal-conv1d accepts (the layout check before it refuses an in-projection width not a multiple of 8)
    model = build_model("mamba2", layers=1, d_model=32, state=4, vocab=12, head_dim=8, seq_len=12, act="relu")
    with pytest.raises(ValueError, match="needs causal-conv1d and mamba-ssm"):
        ready_model(model, torch.device("cuda"), act="relu", check_len=12, kernels="unfused")


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_the_device_checks_reference_is_hfs_pytorch_path_even_where_transformers_calls_kernels_on_cpu(
    variant, monkeypatch
):
    """transformers 5.17, the GPU machines' release, picks kernel or PyTorch once, at import, whatever the inputs'
    device: with causal-conv1d installed, HF's CPU forward called the CUDA kernel there, and the trainers' device
    check failed before its reference ("Expected x.is_cuda() to be true"). Simulated here with the release's own
    wrapper around a stand-in package that is not on the device of the inputs."""
    import sys
    import types

    from transformers.activations import ACT2FN
    from transformers.integrations import hub_kernels

    from latim_captum.tasks.models import check_device_forward, hf_torch_path
    from latim_captum.tasks.unfused import unfused_mixer_forward

    modeling = sys.modules[type(_model(variant, "relu")).__module__]
    kernel_calls = []

    def torch_conv(hidden_states, weight, bias=None, activation=None, **kwargs):
        out = REFERENCE_OPS.conv(hidden_states, weight, bias)
        return out if activation is None else ACT2FN[activation](out)

    def cuda_only_kernel(x, weight, bias=None, activation=None, **kwargs):
        kernel_calls.append(x.device.type)
        if not x.is_cuda:
            raise RuntimeError("Expected x.is_cuda() to be true")
        return torch_conv(x, weight, bias, activation)

    # 5.17's wrapper, reduced to what it does with the package installed (its code compiled as hub_kernels.py's, as
    # 5.17's is; later releases wrap the function in a module that falls back by device, which needs no swap)
    source = (
        "import functools\n"
        "def make(torch_function, implementation):\n"
        "    @functools.wraps(torch_function)\n"
        "    def wrapped(*args, **kwargs):\n"
        "        return implementation(*args, **kwargs)\n"
        "    return wrapped\n"
    )
    namespace: dict = {}
    exec(compile(source, hub_kernels.__file__, "exec"), namespace)
    wrapper = namespace["make"](torch_conv, cuda_only_kernel)
    monkeypatch.setattr(modeling, "causal_conv1d_fn", wrapper)

    model = _model(variant, "relu").float().eval()
    ids = torch.randint(0, 12, (2, 9))
    with pytest.raises(RuntimeError, match="is_cuda"):
        model(input_ids=ids)  # what HF's CPU forward did on the GPU machines
    with hf_torch_path(model) as swapped:
        reference = model(input_ids=ids).logits
    assert swapped >= 1 and modeling.causal_conv1d_fn is wrapper, "swapped for the block, then put back"
    kernel_calls.clear()
    # "the device" here is train mode: the mixers run the unfused forward on the reference ops, as CUDA inputs run
    # it on the kernels; the check's reference (eval mode, as CPU inputs) is the mixers' own forward, HF's
    for mixer in (m for m in model.modules() if type(m).__name__.endswith("Mixer")):

        def forward(self, hidden_states, *args, _own=mixer.forward, **kwargs):
            if self.training:
                return unfused_mixer_forward(self, hidden_states, REFERENCE_OPS)
            return _own(hidden_states, *args, **kwargs)

        mixer.forward = types.MethodType(forward, mixer)
    assert max(check_device_forward(model, torch.device("cpu"), seq_len=9)) < 1e-5
    assert kernel_calls == [], "the reference takes HF's PyTorch path, not the kernel"
    with torch.no_grad(), hf_torch_path(model):
        assert torch.allclose(model.train()(input_ids=ids).logits, reference, atol=1e-5), "the stand-in device side"


@pytest.mark.parametrize("before", [None, "tf32"])
def test_full_fp32_matmuls_sets_and_puts_back(monkeypatch, before):
    """Inside: TF32 off for PyTorch and Triton; after, even through an error, each setting as it was."""
    import os

    from latim_captum.tasks.models import full_fp32_matmuls

    if before is None:
        monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    else:
        monkeypatch.setenv("TRITON_F32_DEFAULT", before)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # cuBLASModule's attributes are properties monkeypatch cannot restore: set and put back here
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with pytest.raises(KeyError), full_fp32_matmuls():
            assert os.environ["TRITON_F32_DEFAULT"] == "ieee"
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            raise KeyError("inside")
        assert os.environ.get("TRITON_F32_DEFAULT") == before
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_device_side_of_the_check_runs_in_full_fp32(monkeypatch):
    """check_device_forward's device forward (train mode) sees full-precision products; its CPU reference does not
    need them and runs as the process is set."""
    import os

    from latim_captum.tasks.models import check_device_forward

    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    model = _model("mamba2", "relu").float()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, os.environ.get("TRITON_F32_DEFAULT"))))
    check_device_forward(model, torch.device("cpu"), seq_len=9)
    assert seen == [(False, None), (True, "ieee")]
    assert "TRITON_F32_DEFAULT" not in os.environ
