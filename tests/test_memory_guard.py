"""The memory guard: a request that cannot fit raises LatimMemoryError, naming its estimate and what to do, before the
forward pass; requests that fit run as before.

The real test runs in a child process whose address space is capped (``RLIMIT_AS``), so that a failure cannot take
the machine's memory: before the guard, ``interactions`` at N = 8192 ran the forward pass and then died in the
allocator.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import latim_captum
from conftest import build, random_ids
from latim_captum.maps import LatimMemoryError, memory
from latim_captum.maps.memory import RequestSizes, available_bytes, check_fits, estimate
from latim_captum.methods import get_method

TESTS = Path(__file__).resolve().parent

CHILD = textwrap.dedent(
    """
    import json, os, resource, sys
    import torch
    torch.set_num_threads(1)  # every thread reserves address space of its own
    sys.path.insert(0, {tests!r})
    from conftest import build, random_ids
    import latim_captum
    from latim_captum.maps import LatimMemoryError

    model = build("mamba2", seed=0)
    forwards = []
    model.register_forward_pre_hook(lambda *args: forwards.append(1))
    latim_captum.interactions(model, random_ids(1, 8))  # warm up (lazy imports) before the cap
    used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + {headroom} * 2**20, resource.RLIM_INFINITY))

    calls = {{
        "interactions": lambda: latim_captum.interactions(model, random_ids(1, 8192), method="alti"),
        "alti_logit": lambda: latim_captum.alti_logit(model, random_ids(1, 8192)),
        "alti_rollout": lambda: latim_captum.alti_rollout(model, random_ids(1, 8192)),
        "contributions": lambda: latim_captum.contributions(model, random_ids(1, 1024), layer=0),
        "captum": lambda: latim_captum.LatimL2(model).attribute(random_ids(1, 8192), layer="all"),
        "small": lambda: latim_captum.interactions(model, random_ids(1, 64), method="alti"),
    }}
    for name, call in calls.items():
        forwards.clear()
        try:
            call()
            out = {{"name": name, "raised": None}}
        except Exception as err:
            out = {{"name": name, "raised": type(err).__name__, "message": str(err)}}
        out["forwards"] = len(forwards)
        print(json.dumps(out), flush=True)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm: Linux")
def test_requests_that_cannot_fit_are_refused_before_the_forward_pass():
    headroom_mib = 512
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS), headroom=headroom_mib)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    for name in ("interactions", "alti_logit", "alti_rollout", "contributions", "captum"):
        r = results[name]
        assert r["raised"] == "LatimMemoryError", f"{name}: {r}"
        assert r["forwards"] == 0, f"{name}: the forward pass ran before the refusal"
        msg = r["message"]
        assert re.search(r"needs about [0-9.]+ [MG]iB", msg) and "RLIMIT_AS" in msg, msg  # MiB under 1 GiB
    assert "[1, 2, 8192, 8192]" in results["interactions"]["message"]  # both layers of the tiny model
    assert "layers=" in results["interactions"]["message"] and "alti_logit_row" in results["alti_logit"]["message"]
    assert "[1, 1024, 1024, 32]" in results["contributions"]["message"]
    assert results["small"]["raised"] is None, results["small"]  # what fits still runs, under the same cap


def _refuse_everything(monkeypatch):
    """Pretend the device has 1 MiB free."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: (2**20, "a test's 1 MiB"))


FRONT_ENDS = {
    "interactions": lambda m, ids: latim_captum.interactions(m, ids),
    "interactions alti_logit": lambda m, ids: latim_captum.interactions(m, ids, method="alti_logit"),
    "alti_logit": lambda m, ids: latim_captum.alti_logit(m, ids),
    "alti_logit_layers": lambda m, ids: latim_captum.alti_logit_layers(m, ids),
    "interactions alti_logit_layers": lambda m, ids: latim_captum.interactions(m, ids, method="alti_logit_layers"),
    "LatimALTILogitLayers row": lambda m, ids: latim_captum.LatimALTILogitLayers(m).attribute(ids),
    "alti_rollout": lambda m, ids: latim_captum.alti_rollout(m, ids),
    "contributions": lambda m, ids: latim_captum.contributions(m, ids, layer=0),
    "trace": lambda m, ids: latim_captum.trace(m, ids),
    "alti_logit_row": lambda m, ids: latim_captum.alti_logit_row(m, ids),
    "LatimL2 row": lambda m, ids: latim_captum.LatimL2(m).attribute(ids),
    "LatimL2 matrix": lambda m, ids: latim_captum.LatimL2(m).attribute(ids, return_matrix=True),
    "LatimALTI rollout row": lambda m, ids: latim_captum.LatimALTI(m).attribute(ids, layer="rollout"),
    "LatimALTILogit row": lambda m, ids: latim_captum.LatimALTILogit(m).attribute(ids),
    "registry": lambda m, ids: get_method("alti_silu_gate")(m, ids),
}


@pytest.mark.parametrize("front_end", list(FRONT_ENDS))
def test_every_front_end_checks_before_its_forward_pass(front_end, monkeypatch):
    model = build("mamba1", seed=1)
    forwards = []
    handle = model.register_forward_pre_hook(lambda *args: forwards.append(1))
    _refuse_everything(monkeypatch)
    try:
        with pytest.raises(LatimMemoryError, match=r"needs about .*more than the 1\.0 MiB available \(a test's"):
            FRONT_ENDS[front_end](model, random_ids(1, 256))
    finally:
        handle.remove()
    assert not forwards, "the forward pass ran before the memory check"


def test_a_trace_passed_in_is_checked_without_counting_it_again(monkeypatch):
    model = build("mamba2", seed=1)
    tr = latim_captum.trace(model, random_ids(1, 64))
    sizes = dict(batch=1, seq=64, sublayers=2, d_model=32, d_inner=64)
    maps_only = estimate("interactions", RequestSizes(**sizes), layers=2, with_trace=False).total
    monkeypatch.setattr(memory, "available_bytes", lambda device: (maps_only - 1, "just too little"))
    with pytest.raises(LatimMemoryError, match="just too little"):
        latim_captum.interactions(tr, method="l2")
    monkeypatch.setattr(memory, "available_bytes", lambda device: (maps_only, "just enough"))
    assert latim_captum.interactions(tr, method="l2").shape == (1, 2, 64, 64)


def test_estimated_results_are_the_returned_tensors():
    """The estimate's result part is the size of what comes back (shapes × itemsize, no guessing)."""
    model = build("mamba1", seed=2)
    ids = random_ids(2, 24)
    sizes = RequestSizes(batch=2, seq=24, **latim_captum.adapters.get_adapter(model).sizes())
    for front_end, out in (
        ("interactions", latim_captum.interactions(model, ids, layers=[0, 1])),
        ("alti_logit", latim_captum.alti_logit(model, ids).scores),
        ("contributions", latim_captum.contributions(model, ids, layer=1)),
    ):
        got = estimate(front_end, sizes, layers=2).result
        assert got == out.numel() * out.element_size(), front_end
    assert sizes.d_inner == 64 and sizes.state == 4 and sizes.vocab == 40 and sizes.sublayers == 2


def test_model_sizes_come_from_the_modules():
    from test_hybrids import build_hybrid

    mamba2 = latim_captum.adapters.get_adapter(build("mamba2")).sizes()
    assert (mamba2["d_inner"], mamba2["state"], mamba2["attention_heads"]) == (64, 1, 0)
    jamba, _ = build_hybrid("jamba", seed=0)
    sizes = latim_captum.adapters.get_adapter(jamba).sizes()
    attn = [b.self_attn for b in jamba.model.layers if getattr(b, "self_attn", None) is not None]
    assert attn and sizes["attention_heads"] == sum(a.config.num_attention_heads for a in attn)


def test_cpu_free_memory_is_the_least_of_ram_cgroup_and_address_space(monkeypatch):
    files = {
        "/proc/meminfo": "MemTotal: 100000 kB\nMemAvailable:    8000000 kB\n",
        "/sys/fs/cgroup/memory.max": "3000000000\n",
        "/sys/fs/cgroup/memory.current": "1000000000\n",
    }
    monkeypatch.setattr(memory, "_read", files.get)
    monkeypatch.setattr(memory, "_address_space_headroom", lambda: None)
    assert available_bytes("cpu") == (2_000_000_000, "the cgroup's memory limit")
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert available_bytes("cpu") == (8_000_000 * 1024, "available RAM (MemAvailable)")
    monkeypatch.setattr(memory, "_address_space_headroom", lambda: 5 * 2**20)
    assert available_bytes("cpu") == (5 * 2**20, "the address-space limit (RLIMIT_AS)")


def test_cgroup_v1_without_a_limit_is_no_limit(monkeypatch):
    files = {
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes": "1000\n",
    }
    monkeypatch.setattr(memory, "_read", files.get)
    assert memory._cgroup_headroom() is None
    files["/sys/fs/cgroup/memory/memory.limit_in_bytes"] = "4096\n"
    assert memory._cgroup_headroom() == 3096


def test_cuda_free_memory_counts_the_allocators_cached_blocks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**30)
    assert available_bytes("cuda:0") == (4 * 2**30, "free on cuda:0")
    need = memory.Estimate(result=5 * 2**30)
    with pytest.raises(LatimMemoryError, match=r"needs about 5\.0 GiB \(result 5\.0 GiB\), more than the 4\.0 GiB "):
        check_fits(need, "cuda:0", "interactions", "ask for less")
    assert available_bytes("meta") is None  # a device that says nothing is not checked
    check_fits(need, "meta", "interactions", "ask for less")


MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from conftest import build, random_ids
    import latim_captum
    from latim_captum.adapters import get_adapter
    from latim_captum.maps.memory import RequestSizes, estimate

    model = build({kind!r}, seed=0)
    latim_captum.interactions(model, random_ids(1, 16), method={method!r})  # warm up

    def status_kib(field):
        return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024

    try:  # reset the peak (VmHWM) to the present, so the peak read after is the request's (Linux >= 4.0)
        open("/proc/self/clear_refs", "w").write("5")
        reset = True
    except OSError:
        reset = False  # then the lifetime peak, which an earlier high-water mark (imports) can inflate
    start = status_kib("VmRSS")
    latim_captum.interactions(model, random_ids(1, 1024), method={method!r})
    peak = status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sizes = RequestSizes(batch=1, seq=1024, **get_adapter(model).sizes())
    front_end = "alti_logit" if {method!r} == "alti_logit" else "interactions"
    print(json.dumps({{"measured": peak - start, "estimate": estimate(front_end, sizes, layers=2).total}}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and ru_maxrss in kilobytes: Linux")
@pytest.mark.parametrize("kind, method", [("mamba2", "alti"), ("mamba2", "alti_logit")])
def test_estimate_is_near_the_measured_peak(kind, method):
    """The estimate is within a factor of two of the peak resident memory the request really adds (measured in a
    fresh process, N = 1024): a realistic floor of the large allocations, neither blind to them nor far above."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE.format(tests=str(TESTS), kind=kind, method=method)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    measured, need = got["measured"], got["estimate"]
    assert measured > 100 * 2**20, "the request should add hundreds of MiB (its reference row blocks)"
    ratio = need / measured
    assert 0.5 <= ratio <= 2, f"estimate {need / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB"


def test_the_models_own_forward_running_out_of_memory_is_said_in_one_sentence(monkeypatch):
    """An out-of-memory error inside the model's forward (Hugging Face's PyTorch scan without mamba-ssm, on a long
    input) becomes a LatimMemoryError with the fix; the model is left as found and the next call works."""
    from latim_captum._memory import forward_memory_error

    model = build("mamba2", seed=1)
    ids = random_ids(1, 16)

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 48.00 GiB")

    handle = model.register_forward_pre_hook(out_of_memory)
    try:
        with pytest.raises(LatimMemoryError, match=r"own forward pass ran out of memory on cpu for a \[1, 16\] input"):
            latim_captum.interactions(model, ids)
    finally:
        handle.remove()
    assert not model.training and latim_captum.interactions(model, ids).shape == (1, 2, 16, 16)
    # on CUDA without mamba-ssm the first fix named is the kernels
    adapter = latim_captum.adapters.get_adapter(model)
    monkeypatch.setattr(type(adapter), "device", property(lambda self: torch.device("cuda", 0)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "install the mamba extra" in str(forward_memory_error(adapter, ids, None))
