"""Several threads on one model: each call gets the maps of its own input, and the model's modes, its hooks and the
global TF32 flags come back as they were.

The threads are made to overlap, not left to luck: a rendezvous hook on the first block holds every forward pass
until each thread's forward is inside the model, so every call's hooks are registered while the other calls'
forward passes run (before the fix each pass fed every caller's hooks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

import latim_captum
from conftest import build, random_ids
from latim_captum._model_state import eval_mode
from latim_captum._precision import fp32_math
from latim_captum.adapters import get_adapter

THREADS = 3
ROUNDS = 4


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


class Rendezvous:
    """A forward pre-hook that holds each forward pass at a module until ``parties`` of them are there."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)

    def __call__(self, *_args) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:  # a thread failed before its forward: let the others run on
            pass


def run_overlapping(model: torch.nn.Module, module: torch.nn.Module, calls: list[Callable[[], object]]) -> list:
    """Run ``calls[k]`` on thread k, ``ROUNDS`` times, every round's forward passes meeting at ``module``; returns
    per thread the list of results (an exception where a call raised)."""
    results: list[list] = [[] for _ in calls]
    handle = module.register_forward_pre_hook(Rendezvous(len(calls)))

    def worker(k: int) -> None:
        for _ in range(ROUNDS):
            try:
                results[k].append(calls[k]())
            except Exception as err:  # noqa: BLE001 - recorded and asserted on below
                results[k].append(err)

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a thread hung"
    finally:
        handle.remove()
    return results


def _assert_each_call_got_its_own(results: list[list], expected: list[torch.Tensor]) -> None:
    for k, got in enumerate(results):
        errors = [r for r in got if isinstance(r, Exception)]
        assert not errors, f"thread {k}: {type(errors[0]).__name__}: {errors[0]}"
        for r in got:
            assert torch.allclose(r, expected[k], atol=1e-6, rtol=1e-5), f"thread {k} got another input's maps"


@pytest.mark.parametrize("method", ["alti", "alti_logit"])
def test_threads_on_one_model_get_their_own_maps_and_leave_it_as_found(method):
    model = build("mamba1", seed=2).train()
    inputs = [random_ids(1, 6 + k // 2, seed=10 + k) for k in range(THREADS)]  # two of one length: no shape error
    expected = [latim_captum.interactions(model, ids, method=method) for ids in inputs]
    model.backbone.layers[0].eval()  # a per-module flag that must come back as it is
    modes = _modes(model)

    calls = [lambda ids=ids: latim_captum.interactions(model, ids, method=method) for ids in inputs]
    results = run_overlapping(model, model.backbone.layers[0], calls)

    _assert_each_call_got_its_own(results, expected)
    assert _modes(model) == modes, "train/eval flags changed"
    assert _hook_count(model) == 0


def test_threads_sharing_one_captum_object_and_a_hybrid():
    """One Captum object (one adapter) used from several threads, on a hybrid whose adapter records attention
    keyword arguments per call."""
    from test_hybrids import build_hybrid

    model, _ = build_hybrid("jamba", seed=3)
    method = latim_captum.LatimALTI(model)
    inputs = [random_ids(2, 5 + k, seed=20 + k) for k in range(THREADS)]
    expected = [method.attribute(ids, layer="all") for ids in inputs]
    calls = [lambda ids=ids: method.attribute(ids, layer="all") for ids in inputs]
    results = run_overlapping(model, get_adapter(model).blocks[0], calls)
    _assert_each_call_got_its_own(results, expected)
    assert _hook_count(model) == 0


def test_gradient_baseline_beside_latim_on_one_model():
    """Mamba-Attribution's gradient pass (its own hooks, its own eval scope) and LaTIM maps at once."""
    from latim_captum.baselines import mamba_attribution

    model = build("mamba2", seed=4).train()
    modes = _modes(model)
    ids_a, ids_b = random_ids(1, 7, seed=1), random_ids(1, 9, seed=2)
    expected_a = mamba_attribution(model, ids_a, position=-1)
    expected_b = latim_captum.interactions(model, ids_b, method="l2")
    # Mamba-Attribution makes two forward passes (its gradient pass, then the trace): so does the LaTIM thread
    calls = [
        lambda: mamba_attribution(model, ids_a, position=-1),
        lambda: [latim_captum.interactions(model, ids_b, method="l2") for _ in range(2)][0],
    ]
    results = run_overlapping(model, model.backbone.layers[0], calls)
    _assert_each_call_got_its_own(results, [expected_a, expected_b])
    assert _modes(model) == modes and _hook_count(model) == 0


def test_tf32_flags_hold_while_another_thread_leaves_and_come_back():
    """Thread A enters, thread B enters, A leaves while B still computes: B must still see TF32 off, and the
    user's flags come back only when B leaves (before the fix A put them back under B, and B then restored A's)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, tuple[bool, bool]] = {}

    def flags() -> tuple[bool, bool]:
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    def a() -> None:
        with fp32_math():
            a_in.set()
            assert b_in.wait(5)
        a_out.set()

    def b() -> None:
        assert a_in.wait(5)
        with fp32_math():
            b_in.set()
            assert a_out.wait(5)
            seen["b after a left"] = flags()

    try:
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen["b after a left"] == (False, False), "TF32 came back on under a running computation"
        assert flags() == (True, True), "the user's TF32 flags were not restored"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_tf32_matmul_only_while_every_open_block_allows_it():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with fp32_math(tf32_matmul=True):
            assert torch.backends.cuda.matmul.allow_tf32
            with fp32_math():
                assert not torch.backends.cuda.matmul.allow_tf32  # the stricter block wins
            assert torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_eval_scope_is_counted_across_threads():
    """The first thread in saves the flags, the last out restores them; the model stays in eval in between."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(), torch.nn.Linear(2, 2)).train()
    model[1].eval()
    modes = _modes(model)
    a_in, a_out = threading.Event(), threading.Event()
    seen = []

    def a() -> None:
        with eval_mode(model):
            a_in.set()
        a_out.set()

    def b() -> None:
        assert a_in.wait(5)
        with eval_mode(model):
            assert a_out.wait(5)
            seen.append(_modes(model))

    with eval_mode(model):  # the main thread holds a scope too, so A's exit is never the last
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen == [[False] * len(modes)]
    assert _modes(model) == modes
