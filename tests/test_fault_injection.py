"""Faults injected into a call: a forward pass that raises midway, a hook that corrupts a mixer's output, NaN weights,
and a ``KeyboardInterrupt`` in the forward pass or in the decomposition. After each, whatever the call did:

* no hook of the call is left on any module (forward, pre-forward or backward),
* each module's train/eval flag, the TF32 flags, the grad mode, every parameter's dtype, ``requires_grad`` and
  ``.grad`` are as they were, and no eval scope or precision block is left open,
* the next call on the same model returns what it returned before the fault.

A fault the maps cannot explain is refused (an error naming it), never returned as maps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch

import latim_captum
from conftest import build, random_ids
from latim_captum import _model_state, _precision
from latim_captum.adapters import TraceMismatchError, get_adapter
from latim_captum.baselines import mamba_attribution, mamba_lrp
from latim_captum.methods import get_method


class Injected(RuntimeError):
    """The fault this module raises on purpose."""


def _first_tensor(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "scores"):
        return out.scores
    return _first_tensor(out[0])


LATIM = {
    "interactions": lambda m, ids: latim_captum.interactions(m, ids, method="alti"),
    "alti_logit": lambda m, ids: latim_captum.alti_logit(m, ids, activation="silu_gate"),
    "alti_logit_row": lambda m, ids: latim_captum.alti_logit_row(m, ids),
    "captum": lambda m, ids: latim_captum.LatimALTILogit(m).attribute(ids),
}
GRADIENT = {
    "saliency": lambda m, ids: get_method("saliency")(m, ids),
    "integrated_gradients": lambda m, ids: get_method("integrated_gradients")(m, ids),
    "mamba_attribution": lambda m, ids: mamba_attribution(m, ids, position=-1),
    "mamba_lrp": lambda m, ids: mamba_lrp(m, ids, position=-1),
}
EVERY = {**LATIM, **GRADIENT}


def _state(model: torch.nn.Module) -> dict:
    """Everything a call may change on the model or in the process."""
    return {
        "hooks": sum(
            len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
            for m in model.modules()
        ),
        "modes": [m.training for m in model.modules()],
        "tf32": (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32),
        "grad_mode": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "default_dtype": torch.get_default_dtype(),
        "params": [(n, p.dtype, p.requires_grad, p.grad is None) for n, p in model.named_parameters()],
        "open_eval_scopes": len(_model_state._scopes),
        "open_precision_blocks": len(_precision._open),
    }


@pytest.fixture
def model() -> Iterator[torch.nn.Module]:
    """A tiny Mamba-1 in a state no top-level mode describes, with TF32 flags that are not PyTorch's defaults."""
    model = build("mamba1", seed=11)
    model.train()
    get_adapter(model).blocks[0].eval()
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
    try:
        yield model
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


IDS = random_ids(1, 6, seed=3)


def _after_the_fault(model, call: Callable, before: dict, expected: torch.Tensor) -> None:
    assert _state(model) == before, "the fault left state behind"
    again = _first_tensor(call(model, IDS))
    assert torch.equal(again, expected), "the call after the fault differs from the call before it"
    assert _state(model) == before


@contextlib.contextmanager
def _patched_forward(module: torch.nn.Module, forward: Callable) -> Iterator[None]:
    """``module``'s forward replaced on the instance (its hooks still run around it)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@pytest.mark.parametrize("fault", [Injected, KeyboardInterrupt])
@pytest.mark.parametrize("front_end", list(EVERY))
def test_forward_that_raises_midway(model, front_end, fault, monkeypatch):
    """The second block raises (an error, or Ctrl-C) in the middle of the forward pass. MambaLRP never calls the
    model (it replays the blocks from their weights under its rules): its replay raises, after its first pass."""
    call = EVERY[front_end]
    before = _state(model)
    expected = _first_tensor(call(model, IDS))
    assert _state(model) == before, "a clean call left state behind"
    block = get_adapter(model).blocks[1]

    def broken(*args, **kwargs):
        raise fault("injected in the forward pass of block 1")

    if front_end == "mamba_lrp":
        import importlib

        lrp_module = importlib.import_module("latim_captum.baselines.mamba_lrp")  # the package exports the function
        replay, passes = lrp_module.replay_logits, []

        def replay_then_break(*args, **kwargs):
            passes.append(1)
            if len(passes) == 2:
                broken()
            return replay(*args, **kwargs)

        monkeypatch.setattr(lrp_module, "replay_logits", replay_then_break)
        with pytest.raises(fault, match="injected"):
            call(model, IDS)
        monkeypatch.undo()
    else:
        with _patched_forward(block, broken), pytest.raises(fault, match="injected"):
            call(model, IDS)
    _after_the_fault(model, call, before, expected)


@pytest.mark.parametrize("front_end", list(LATIM))
def test_interrupted_decomposition(model, front_end, monkeypatch):
    """Ctrl-C after the forward pass, while a layer is recomputed inside the float32 precision block."""
    call = LATIM[front_end]
    before = _state(model)
    expected = _first_tensor(call(model, IDS))
    assert _state(model) == before, "a clean call left state behind"
    adapter_cls = type(get_adapter(model))
    original = adapter_cls.mixer_trace
    seen = []

    def interrupted(self, block, captured, dtype):
        seen.append(len(_precision._open))
        if len(seen) == 2:
            raise KeyboardInterrupt("injected while recomputing layer 1")
        return original(self, block, captured, dtype)

    monkeypatch.setattr(adapter_cls, "mixer_trace", interrupted)
    with pytest.raises(KeyboardInterrupt, match="injected"):
        call(model, IDS)
    assert seen and all(n >= 1 for n in seen), "the recomputation should run inside the precision block"
    monkeypatch.undo()
    _after_the_fault(model, call, before, expected)


@pytest.mark.parametrize("corruption", ["scaled", "nan"])
@pytest.mark.parametrize("front_end", list(LATIM))
def test_hook_that_corrupts_the_mixer_output_is_refused(model, front_end, corruption):
    """A user's forward hook changes layer 0's mixer output: the recomputation from the weights cannot agree, so the
    call refuses rather than explain a model that is not the one whose weights it reads."""
    call = LATIM[front_end]
    before = _state(model)
    expected = _first_tensor(call(model, IDS))
    assert _state(model) == before, "a clean call left state behind"
    mixer = get_adapter(model).mixer(get_adapter(model).blocks[0])

    def corrupt(_module, _args, output):
        return output * 1.5 if corruption == "scaled" else torch.full_like(output, float("nan"))

    handle = mixer.register_forward_hook(corrupt)
    try:
        error, says = (TraceMismatchError, "layer 0") if corruption == "scaled" else (ValueError, "layer 0: the mixer")
        with pytest.raises(error, match=says):
            call(model, IDS)
        assert _state(model)["hooks"] == before["hooks"] + 1, "only the user's own hook may remain"
    finally:
        handle.remove()
    _after_the_fault(model, call, before, expected)


@pytest.mark.parametrize("front_end", list(EVERY))
def test_nan_weights(model, front_end):
    """A NaN in layer 1's ``out_proj``: LaTIM refuses it by name; every front end leaves the model as it found it,
    and the next call, with the weight put back, is the call before."""
    call = EVERY[front_end]
    before = _state(model)
    expected = _first_tensor(call(model, IDS))
    assert _state(model) == before, "a clean call left state behind"
    weight = get_adapter(model).mixer(get_adapter(model).blocks[1]).out_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    try:
        if front_end in LATIM:
            with pytest.raises(ValueError, match="layer 1: the mixer output holds NaN or inf"):
                call(model, IDS)
        else:
            with contextlib.suppress(ValueError, RuntimeError):  # a gradient of a NaN model may be NaN, or refused
                call(model, IDS)
        assert _state(model) == before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    _after_the_fault(model, call, before, expected)


def test_two_faults_in_a_row_leave_nothing_open(model):
    """A fault inside an eval scope and a precision block, then another: the counted scopes close each time (a leak
    would keep the model in eval mode or the TF32 flags overridden for every later call)."""
    call = LATIM["interactions"]
    before = _state(model)
    expected = _first_tensor(call(model, IDS))
    assert _state(model) == before, "a clean call left state behind"
    block = get_adapter(model).blocks[0]

    def broken(*args, **kwargs):
        raise Injected("injected")

    for fault in range(2):
        with _patched_forward(block, broken), pytest.raises(Injected):
            call(model, IDS)
        assert _state(model) == before, f"after fault {fault + 1}"
    _after_the_fault(model, call, before, expected)
