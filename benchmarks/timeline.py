"""Where the GPU waits for the host: idle gaps of one run's CUDA timeline and the host code running during each.

Runs one workload (one layer's maps, all layers' maps, or the single-query ALTI-Logit row) on a random-weight model
with the shapes of mamba-130m / mamba2-130m, after a warm-up run (JIT and autotuning), then

* once under ``torch.cuda.set_sync_debug_mode("warn")``: every operation that makes the host wait for the GPU,
  counted by the line of our code that called it;
* once under ``torch.profiler`` with Python stacks: the union of the GPU's busy intervals, the idle gaps longer than
  ``--min-gap-us``, and for each gap the innermost Python frames of ``latim_captum`` that the host was in.

Usage (CUDA)::

    python benchmarks/timeline.py --what layer --model mamba2 --measures l2 --n 2048 --out timeline
    python benchmarks/timeline.py --what row --model mamba1 --n 2048 --layers 4
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from latim_captum.bench_speed import build_model


def workload(args, device):
    """A no-argument callable running the chosen workload once."""
    import latim_captum as lc
    from latim_captum.maps import layer_maps_fast
    from latim_captum.single_query import alti_logit_row

    model = build_model(args.model, False, torch.float32, device)
    ids = torch.randint(0, model.config.vocab_size, (1, args.n), device=device)
    trace = lc.trace(model, ids)
    if args.layers:
        trace = dataclasses.replace(trace, layers=trace.layers[: args.layers])
    measures = tuple(args.measures.split("+"))
    if args.what == "layer":
        return lambda: layer_maps_fast(trace.layers[0], "silu", measures, precision=args.precision, kernel="triton")
    if args.what == "layers":
        return lambda: lc.interactions(trace, method=measures[0], precision=args.precision, backend="triton")
    return lambda: alti_logit_row(trace, activation="silu", precision=args.precision, backend="triton")


def sync_sites(run) -> collections.Counter:
    """Lines of ``latim_captum`` whose operations synchronised the host with the GPU during ``run()``."""
    sites: collections.Counter = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return sites


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")


def busy_intervals(events: list[dict]) -> list[tuple[float, float]]:
    """Merged [start, end) µs of every GPU kernel, copy and set."""
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    merged: list[list[float]] = []
    for s, t in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], t)
        else:
            merged.append([s, t])
    return [(s, t) for s, t in merged]


def host_frames(events: list[dict], lo: float, hi: float) -> collections.Counter:
    """µs that the host spent in each innermost ``latim_captum`` (or triton/torch runtime) frame during [lo, hi)."""
    spent: collections.Counter = collections.Counter()
    inside = [e for e in events if e.get("ph") == "X" and e["ts"] < hi and e["ts"] + e.get("dur", 0) > lo]
    for e in inside:
        if e.get("cat") == "python_function" and "latim_captum" in e["name"]:
            overlap = min(hi, e["ts"] + e["dur"]) - max(lo, e["ts"])
            # the innermost latim frame: no latim frame nested inside it overlaps the gap
            nested = any(
                o is not e and o.get("cat") == "python_function" and "latim_captum" in o["name"]
                and o["ts"] >= e["ts"] and o["ts"] + o["dur"] <= e["ts"] + e["dur"] and o["dur"] < e["dur"]
                and o["ts"] < hi and o["ts"] + o["dur"] > lo
                for o in inside
            )  # fmt: skip
            if not nested:
                spent[e["name"].split("/")[-1]] += overlap
        elif e.get("cat") == "cuda_runtime" and e["name"] not in LAUNCHES:
            spent["runtime " + e["name"]] += min(hi, e["ts"] + e["dur"]) - max(lo, e["ts"])
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--what", choices=("layer", "layers", "row"), default="layer")
    parser.add_argument("--model", choices=("mamba1", "mamba2"), default="mamba2")
    parser.add_argument("--measures", default="l2")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=0, help="keep only the first layers of the trace (0: all)")
    parser.add_argument("--precision", default="tf32")
    parser.add_argument("--min-gap-us", type=float, default=20.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    device = torch.device("cuda")
    run = workload(args, device)
    run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    label = f"{args.what} {args.model} {args.measures} N={args.n}" + (f" layers={args.layers}" if args.layers else "")
    print(f"# {label}: {1e3 * wall:.2f} ms", flush=True)
    try:
        sites = sync_sites(run)
    except Exception:  # noqa: BLE001 - a diagnostic: report and go on to the timeline
        traceback.print_exc()
        sites = collections.Counter()
    print("host-GPU synchronisations by line:", dict(sites.most_common()) or "none", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        run()
        torch.cuda.synchronize()
    path = Path(args.out or "/tmp") / f"timeline-{args.what}-{args.model}-{args.n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    busy = busy_intervals(events)
    starts = [e["ts"] for e in events if e.get("ph") == "X" and e.get("cat") == "python_function"]
    lo, hi = min(starts), busy[-1][1]
    gaps = [(lo, busy[0][0])] + [(a[1], b[0]) for a, b in zip(busy, busy[1:])]
    gaps = [(s, t) for s, t in gaps if t - s >= args.min_gap_us]
    busy_us = sum(t - s for s, t in busy)
    idle_ms = sum(t - s for s, t in gaps) / 1e3
    print(f"profiled span {(hi - lo) / 1e3:.2f} ms, GPU busy {busy_us / 1e3:.2f} ms, "
          f"{len(gaps)} gaps ≥ {args.min_gap_us:.0f} µs totalling {idle_ms:.2f} ms")  # fmt: skip
    total: collections.Counter = collections.Counter()
    for s, t in sorted(gaps, key=lambda g: g[0] - g[1])[:12]:
        frames = host_frames(events, s, t)
        total.update(frames)
        top = ", ".join(f"{name} {us:.0f}" for name, us in frames.most_common(4))
        print(f"  gap {(t - s):8.0f} µs at +{(s - lo) / 1e3:7.2f} ms: {top}")
    print("host time inside the 12 largest gaps, by frame (µs):")
    for name, us in total.most_common(15):
        print(f"  {us:9.0f}  {name}")
    path.unlink()  # large with stacks; the summary above is what we keep
    return 0


if __name__ == "__main__":
    sys.exit(main())
