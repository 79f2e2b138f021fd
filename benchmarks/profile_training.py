"""Where a trainer's step goes: the copy / alignment trainers run a few steps under ``torch.profiler``.

A paper-scale copy step takes ~76 ms on an H100 for Mamba-1 and for Mamba-2 alike (``copy-train-*-paper.json``:
5,000 steps in 6.4 minutes), where the matmuls of an 8-layer, 512-wide model on 25,856 tokens need a few ms: this
says whether the step waits on the GPU (kernel time ≈ wall time) or on the host (launches, copies, Python).

Usage (the trainer's own flags after ``--``; ``--steps`` and ``--eval-every`` are set here)::

    python benchmarks/profile_training.py --task copy -- --variant mamba1 --scale paper --device cuda --bf16
    python benchmarks/profile_training.py --task copy -- --variant mamba2 --scale tiny --device cpu

Prints wall ms per profiled step, the GPU kernels' busy ms per step (CUDA only), and the top operators by self
device time and by self CPU time.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time

import torch

TRAINERS = {"copy": "latim_captum.copying.train", "alignment": "latim_captum.alignment.train"}
#: profiler warm-up steps between the waited and the recorded ones
_WARMUP = 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/profile_training.py", description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TRAINERS), default="copy")
    p.add_argument("--wait", type=int, default=15, help="steps before profiling (autotuning, allocator warm-up)")
    p.add_argument("--active", type=int, default=20, help="profiled steps")
    p.add_argument("--rows", type=int, default=25, help="operators per table")
    p.add_argument("trainer_args", nargs=argparse.REMAINDER, help="-- then the trainer's flags")
    args = p.parse_args(argv)
    rest = [a for a in args.trainer_args if a != "--"]
    cuda = "cuda" in rest
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    schedule = torch.profiler.schedule(wait=args.wait, warmup=_WARMUP, active=args.active, repeat=1)
    stamps: list[float] = []
    prof = torch.profiler.profile(activities=activities, schedule=schedule)
    # the trainers call the scheduler once per optimiser step (and once when it is built): the profiler steps there
    original = torch.optim.lr_scheduler.LambdaLR.step

    def step_and_mark(self, *a, **k):
        original(self, *a, **k)
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        prof.step()

    trainer = importlib.import_module(TRAINERS[args.task])
    steps = args.wait + _WARMUP + args.active + 1
    with tempfile.TemporaryDirectory() as out, prof:
        torch.optim.lr_scheduler.LambdaLR.step = step_and_mark
        try:
            trainer.main([*rest, "--steps", str(steps), "--eval-every", str(10 * steps), "--quiet", "--out", out])
        finally:
            torch.optim.lr_scheduler.LambdaLR.step = original
    # stamps[0] is the scheduler's construction; step k ends at stamps[k]
    first = 1 + args.wait + _WARMUP
    active = stamps[first : first + args.active + 1]
    wall_ms = 1e3 * (active[-1] - active[0]) / (len(active) - 1)
    events = prof.key_averages()
    print(f"wall per step (synchronised): {wall_ms:.1f} ms over {len(active) - 1} steps")
    if cuda:
        # the profiler's own "Self CUDA time total" (a sum over the events of device type CUDA did not match it)
        busy = sum(e.self_device_time_total for e in events) / 1e3 / args.active
        print(f"GPU kernels per step: {busy:.1f} ms ({100 * busy / wall_ms:.0f} % of the wall time)")
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
