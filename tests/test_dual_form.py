"""Mamba-2's training forward without kernels (``--kernels dual``, :data:`latim_captum.tasks.unfused.DUAL_OPS`):
the quadratic form of the scan against HF's own chunked PyTorch forward and the sequential reference, and the
trainers' runs on it against their runs on HF's path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_ops_forward_is_the_model, perturb_
from latim_captum.tasks.models import build_model
from latim_captum.tasks.unfused import (
    DUAL_OPS,
    _chunk_scan_ref,
    install_unfused_forward_,
    quadratic_scan,
)


def _model(act: str, *, groups: int = 1, chunk: int | None = None) -> torch.nn.Module:
    m = build_model("mamba2", layers=2, d_model=16, state=4, vocab=12, head_dim=8, seq_len=12, act=act)
    if groups != 1 or chunk is not None:
        from transformers import Mamba2ForCausalLM

        config = m.config
        config.n_groups, config.chunk_size = groups, chunk or config.chunk_size
        m = Mamba2ForCausalLM(config)
    return perturb_(m, seed=3).double()


@pytest.mark.parametrize("act", ["silu", "relu", "linear"])
@pytest.mark.parametrize(("groups", "chunk"), [(1, None), (2, 4)])
def test_the_dual_form_is_the_model(act, groups, chunk):
    """Values and gradients as HF's PyTorch forward computes them, with one chunk and with HF's scan crossing
    chunks (11 tokens in chunks of 4) and two groups of B, C (each shared by two heads)."""
    torch.manual_seed(0)
    # the bounds of test_unfused.py's sequential references: HF's path casts parts of the scan to float32
    model = _model(act, groups=groups, chunk=chunk).eval()
    assert_ops_forward_is_the_model(model, DUAL_OPS, torch.randint(0, 12, (2, 11)))


def _scan_inputs(length: int, dtype: torch.dtype, *, decay: float):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, length, 4, 3, generator=gen, dtype=dtype)
    dt = torch.randn(2, length, 4, generator=gen, dtype=dtype)
    B, C = (torch.randn(2, length, 2, 5, generator=gen, dtype=dtype) for _ in range(2))
    A = -decay * torch.rand(4, generator=gen, dtype=dtype)
    D, dt_bias = torch.randn(4, generator=gen, dtype=dtype), torch.full((4,), 1.0, dtype=dtype)
    return x, dt, A, B, C, 256, D, dt_bias, (0.0, float("inf"))


def test_long_sequences_keep_float32_precision():
    """200 tokens whose decays add up to about −350 along the sequence: the decay between neighbours is a sum of a
    few terms, not the difference of two sums near −350, so float32 stays within 1e-7 of the float64 recurrence
    (measured 9e-8 of the largest output); the difference form, which loses ~350 · 6e-8 in each exponent, errs by
    2e-6."""
    args64 = _scan_inputs(200, torch.float64, decay=2.0)
    exact = _chunk_scan_ref(*args64)
    args32 = tuple(a.float() if torch.is_tensor(a) else a for a in args64)
    got = quadratic_scan(*args32).double()
    assert float((got - exact).abs().max()) < 5e-7 * float(exact.abs().max())


def test_strong_decays_give_finite_gradients():
    """The masked upper triangle would be exp(+large) = inf there; masked before the exp, its gradient is 0."""
    x, dt, A, B, C, *rest = _scan_inputs(64, torch.float32, decay=60.0)
    x.requires_grad_(True)
    dt.requires_grad_(True)
    y = quadratic_scan(x, dt, A, B, C, *rest)
    grads = torch.autograd.grad(y.square().sum(), (x, dt))
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)
    exact = _chunk_scan_ref(*(a.double() if torch.is_tensor(a) else a for a in (x.detach(), dt.detach(), A, B, C)),
                            *rest)  # fmt: skip
    assert float((y.double() - exact).abs().max()) < 1e-5 * float(exact.abs().max())


def test_mamba1_is_refused():
    model = build_model("mamba1", layers=1, d_model=16, state=4, vocab=12, act="relu")
    install_unfused_forward_(model, DUAL_OPS, on_cpu=True)
    with pytest.raises(ValueError, match="quadratic dual form is Mamba-2's"):
        model(input_ids=torch.randint(0, 12, (1, 5)))


_COPY = ["--steps", "6", "--n-train", "32", "--n-eval", "8", "--batch", "8", "--length", "4", "--vocab", "8",
         "--eval-every", "3", "--layers", "2", "--d-model", "16", "--head-dim", "8", "--state", "4", "--warmup",
         "2", "--quiet"]  # fmt: skip


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture
def dual_calls(monkeypatch) -> list[int]:
    """Counts the trainers' calls of the dual form's scan (so a run that silently took another path fails)."""
    from latim_captum.tasks import unfused

    calls: list[int] = []
    real = unfused.DUAL_OPS

    def tail(*args):
        calls.append(1)
        return real.mamba2_tail(*args)

    monkeypatch.setattr(unfused, "DUAL_OPS", unfused.ScanOps(real.conv, real.selective_scan, tail))
    return calls


@pytest.mark.parametrize("act", ["silu", "linear"])
def test_a_run_on_the_dual_form_trains_the_model_hfs_path_trains(act, tmp_path, dual_calls):
    """Six steps of the copy trainer on the dual form and on HF's own PyTorch path, same seed: the same weights to
    float32 rounding (a wrong scan would move them by the learning rate's order)."""
    from latim_captum.copying.train import main

    assert main(["--variant", "mamba2", "--act", act, *_COPY, "--out", str(tmp_path / "hf")]) == 0
    assert main(["--variant", "mamba2", "--act", act, *_COPY, "--kernels", "dual", "--out", str(tmp_path / "d")]) == 0
    assert len(dual_calls) >= 6 * 2, "every step's two layers ran the dual form"
    hf, dual = _weights(tmp_path / "hf"), _weights(tmp_path / "d")
    start = _weights_of_fresh_run(tmp_path, act)
    for name, w in hf.items():
        moved = float((w - start[name]).abs().max())
        assert float((dual[name] - w).abs().max()) < 1e-3 * max(moved, 1e-6), name
    meta = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert meta["eval_loss"] == pytest.approx(json.loads((tmp_path / "hf" / "metrics.json").read_text())["eval_loss"],
                                              rel=1e-4)  # fmt: skip
    assert json.loads((tmp_path / "d" / "training_args.json").read_text())["kernels"] == "dual"


def _weights_of_fresh_run(tmp_path, act: str) -> dict[str, torch.Tensor]:
    """The weights the runs start from (a 0-step run is refused, so: the model the trainer builds for this seed)."""
    from latim_captum.copying.train import main

    assert main(["--variant", "mamba2", "--act", act, *_COPY, "--stop-at", "1", "--lr", "0",
                 "--out", str(tmp_path / "start")]) == 0  # fmt: skip
    return _weights(tmp_path / "start")


def test_a_switch_on_the_dual_form_is_the_switch_on_the_references(tmp_path, dual_calls):
    """``--switch-from`` with ``--kernels dual`` blends the activations as the reference ops do."""
    from latim_captum.copying.train import main

    assert main(["--variant", "mamba2", *_COPY, "--out", str(tmp_path / "silu")]) == 0
    switch = ["--variant", "mamba2", "--switch-from", str(tmp_path / "silu"), "--act", "relu", "--steps", "6",
              "--warmup", "2", "--decay", "2", "--eval-every", "3", "--quiet"]  # fmt: skip
    assert main([*switch, "--out", str(tmp_path / "ref")]) == 0
    assert not dual_calls, "without --kernels dual the CPU switch runs the sequential references"
    assert main([*switch, "--kernels", "dual", "--out", str(tmp_path / "dual")]) == 0
    assert len(dual_calls) >= 6 * 2
    ref, dual, source = _weights(tmp_path / "ref"), _weights(tmp_path / "dual"), _weights(tmp_path / "silu")
    for name, w in ref.items():
        moved = float((w - source[name]).abs().max())
        assert float((dual[name] - w).abs().max()) < 1e-3 * max(moved, 1e-6), name
    assert json.loads((tmp_path / "dual" / "config.json").read_text())["hidden_act"] == "relu"


def test_the_trainers_refuse_the_dual_form_for_mamba1(tmp_path, capsys):
    from latim_captum.copying.train import main

    assert main(["--variant", "mamba1", *_COPY, "--kernels", "dual", "--out", str(tmp_path / "m")]) == 2
    assert "--kernels dual is Mamba-2's scan in its quadratic form" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
