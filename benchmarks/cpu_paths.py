"""Which LaTIM path is faster on a CPU: the reference (``backend="ref"``) against the PyTorch tiles (``"fast"``).

Times ``interactions(model, ids, method=...)`` end to end (trace and maps) with each backend on random Mamba-1 and
Mamba-2 models, in one run, and prints the ratio and the largest relative difference of the maps. Writes
``cpu-paths.{md,json}`` under ``--out``.

Usage (repository root)::

    python benchmarks/cpu_paths.py --lengths 64 256 512 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import latim_captum as lc
from latim_captum._environment import command_line, device_name
from latim_captum.bench_speed import timed
from latim_captum.tasks.models import build_model

METHODS = ("l2", "alti", "alti_logit")


def timed_maps(model: torch.nn.Module, ids: torch.Tensor, method: str, backend: str) -> tuple[float, torch.Tensor]:
    wall, _, maps = timed(lambda: lc.interactions(model, ids, method=method, backend=backend), torch.device("cpu"))
    return wall, maps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/cpu_paths.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 512])
    p.add_argument("--variants", nargs="+", default=["mamba1", "mamba2"])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = device_name("cpu")
    points = []
    for variant in args.variants:
        model = build_model(variant, layers=args.layers, d_model=args.d_model, state=16, vocab=64).eval()
        for backend in ("ref", "fast"):  # untimed: first calls allocate and load
            lc.interactions(model, torch.randint(0, 64, (1, 16)), method="alti_logit", backend=backend)
        for n in args.lengths:
            ids = torch.randint(0, 64, (1, n))
            for method in METHODS:
                t_ref, ref = timed_maps(model, ids, method, "ref")
                t_fast, fast = timed_maps(model, ids, method, "fast")
                diff = float((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                points.append({"variant": variant, "n": n, "method": method, "ref_s": t_ref, "fast_s": t_fast,
                               "max_rel_diff": diff})  # fmt: skip
                print(f"{variant} N={n} {method}: ref {t_ref:.2f} s, fast {t_fast:.2f} s "
                      f"(ref / fast {t_ref / t_fast:.2f}), max rel diff {diff:.1e}", flush=True)  # fmt: skip
    command = command_line("python benchmarks/cpu_paths.py", argv)
    report = {"device": device, "torch": torch.__version__, "command": command, "d_model": args.d_model,
              "layers": args.layers, "points": points}  # fmt: skip
    lines = [
        "# LaTIM on a CPU: reference path against the PyTorch tiles",
        "",
        f"- device: {device}; torch {torch.__version__}; command: `{command}`",
        f"- random models, {args.layers} layers, d_model {args.d_model} (d_inner {2 * args.d_model}), state 16, "
        "float32; `interactions(model, ids, method=...)` end to end, one call each after an untimed one",
        "",
        "| model | N | method | ref s | fast s | ref / fast | largest relative difference |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {q['variant']} | {q['n']} | {q['method']} | {q['ref_s']:.2f} | {q['fast_s']:.2f} | "
        f"{q['ref_s'] / q['fast_s']:.2f} | {q['max_rel_diff']:.1e} |"
        for q in points
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu-paths.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "cpu-paths.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'cpu-paths'}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
