"""The fast path's three ways of making one layer's ℓ2 / ALTI sums, timed against each other in one run.

* ``torch``: the PyTorch tiles (``G`` and ``T`` written to memory, cuBLAS GEMM);
* ``fused``: one Triton kernel that rebuilds ``G`` in registers for every block of ``d_model`` (``staged=False``);
* ``staged``: ``G`` of the causal tiles stored once, then a Triton GEMM that reduces ``T`` in its epilogue (default).

One layer of a random-weight model with the shapes of mamba-130m / mamba2-130m (d_model 768, d_inner 1536), float32
model, TF32 (or bf16) ``W_o`` product. Each point is warmed up first (autotuning), then timed as the best of
``--repeats`` runs. Reported: ms per layer, TFLOP/s of the dense-GEMM floor ``2·N(N+1)/2·d_inner·d_model``, its
fraction of the matmul peak measured in the same run, and the ratios between the paths.

Usage (CUDA)::

    python benchmarks/kernel_paths.py --lengths 512,2048 --out bench_paths
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latim_captum.bench_speed import build_model, matmul_peak, timed
from latim_captum.maps import layer_maps_fast
from latim_captum.maps.tiles import dominant_flops

PATHS = {"torch": ("torch", None), "fused": ("triton", {"staged": False}), "staged": ("triton", {"staged": True})}


def time_path(layer, measures, path: str, precision: str, device, repeats: int) -> float:
    """Best wall seconds of one layer's maps on ``path`` (after one untimed run: JIT and autotuning)."""
    kernel, config = PATHS[path]

    def run():
        return layer_maps_fast(layer, "silu", measures, precision=precision, kernel=kernel, kernel_config=config)

    run()
    return min(timed(run, device)[0] for _ in range(repeats))


def profile(layer, measures, path: str, precision: str, rows: int = 12) -> None:
    """Print the CUDA kernels of one run on ``path``, by total device time (where the time goes)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    kernel, config = PATHS[path]
    with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        layer_maps_fast(layer, "silu", measures, precision=precision, kernel=kernel, kernel_config=config)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default="512,2048")
    parser.add_argument("--models", default="mamba2,mamba1")
    parser.add_argument("--measures", default="l2,alti", help="comma-separated measure sets, '+' inside a set")
    parser.add_argument("--precision", default="tf32", choices=("tf32", "bf16", "highest"))
    parser.add_argument("--paths", default="staged,fused,torch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--profile", action="store_true", help="print each point's CUDA kernels (torch.profiler)")
    args = parser.parse_args(argv)
    import latim_captum as lc

    device = torch.device("cuda")
    peak = matmul_peak(args.precision, device)
    gpu = torch.cuda.get_device_name(device)
    rows = []
    print(f"{gpu}; {args.precision} matmul peak {peak:.1f} TFLOP/s", flush=True)
    for kind in args.models.split(","):
        model = build_model(kind, False, torch.float32, device)
        d_inner, d_model = 2 * model.config.hidden_size, model.config.hidden_size
        for n in map(int, args.lengths.split(",")):
            ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
            layer = lc.trace(model, ids).layers[0]
            flops = dominant_flops(n, d_inner, d_model)
            for measures in args.measures.split(","):
                point = {"model": kind, "N": n, "measures": measures, "ms": {}}
                for path in args.paths.split(","):
                    wall = time_path(layer, tuple(measures.split("+")), path, args.precision, device, args.repeats)
                    point["ms"][path] = 1e3 * wall
                    if args.profile:
                        profile(layer, tuple(measures.split("+")), path, args.precision)
                    print(f"{kind} N={n} {measures} {path}: {1e3 * wall:.1f} ms, {flops / wall / 1e12:.1f} TFLOP/s "
                          f"({100 * flops / wall / 1e12 / peak:.0f}% of peak)", flush=True)  # fmt: skip
                point["tflops"] = {p: flops / (ms / 1e3) / 1e12 for p, ms in point["ms"].items()}
                rows.append(point)
            del layer
    results = {"gpu": gpu, "precision": args.precision, "peak_tflops": peak, "points": rows}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kernel_paths.json").write_text(json.dumps(results, indent=1))
        (out / "kernel_paths.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def to_markdown(results: dict) -> str:
    paths = list(results["points"][0]["ms"]) if results["points"] else []
    lines = [
        f"# One layer's maps by path ({results['gpu']}, {results['precision']} W_o product)",
        "",
        f"Matmul peak measured in the same run: {results['peak_tflops']:.1f} TFLOP/s. "
        "Floor: 2·N(N+1)/2·1536·768 FLOPs per layer.",
        "",
        "| model | N | measures | " + " | ".join(f"{p} ms (% peak)" for p in paths)
        + " | staged vs fused | staged vs torch |",
        "|---|---|---|" + "---|" * len(paths) + "---|---|",
    ]  # fmt: skip
    for pt in results["points"]:
        cells = [f"{pt['ms'][p]:.1f} ({100 * pt['tflops'][p] / results['peak_tflops']:.0f}%)" for p in paths]
        ratio = {other: pt["ms"].get(other, float("nan")) / pt["ms"].get("staged", float("nan")) for other in paths}
        lines.append(
            f"| {pt['model']} | {pt['N']} | {pt['measures']} | " + " | ".join(cells)
            + f" | {ratio.get('fused', float('nan')):.2f}× | {ratio.get('torch', float('nan')):.2f}× |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
