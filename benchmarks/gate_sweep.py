"""The staged step 1 (``gate_kernel``: ``G`` of the causal tiles written once) against the GPU's write bandwidth.

Step 1 only writes ``G`` (``pairs × d_inner`` values, fp32 or bf16) and reads small per-row / per-column operands, so
its floor is the time to write that many bytes. For each point this script times every candidate ``(BC, num_warps)``
of the kernel (Triton's own autotuner benchmark, ``configs_timings``) and, in the same run, ``Tensor.fill_`` of a
buffer of ``G``'s size (the write-bandwidth floor) and the whole launch with the shipped candidates (mixing, gate,
project and sums).

Points are ``N:rows``: one launch of the last ``rows`` query rows of a one-layer model with the widths of
mamba-130m / mamba2-130m at length ``N`` (``rows = N``: the whole map in one launch, as at N = 2048; few rows at
long N, as in the single-query mode).

Usage (CUDA)::

    python benchmarks/gate_sweep.py --points 2048:2048,32768:24 --out gate
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from latim_captum.bench_speed import build_model

#: step 1's (BC, num_warps) swept here; larger BC spill registers (docs/performance.md)
CANDIDATES = tuple((bc, warps) for bc in (16, 32, 64) for warps in (2, 4, 8))


def _bench(fn) -> float:
    """Median milliseconds of ``fn`` (Triton's ``do_bench``, the autotuner's own timer)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, return_mode="median"))


def _fill_ms(numel: int, dtype: torch.dtype) -> float:
    """Milliseconds to write ``numel`` values of ``dtype`` (``fill_``: the write-bandwidth floor of step 1)."""
    buffer = torch.empty(numel, dtype=dtype, device="cuda")
    return _bench(lambda: buffer.fill_(1.0))


def sweep_point(layer, rows: int, precision: str, candidates, channels_contiguous: bool = False) -> dict:
    """Every candidate's gate time for one launch of the last ``rows`` rows, the fill floor and the whole launch;
    ``channels_contiguous``: the tap shares' layout (the kernel config's ``channel_shares``).

    The sweep swaps the launcher's step-1 autotuner (``launch.gate_autotuned``) for one over ``candidates`` that
    keeps every candidate's time: a profiling script's access to the kernel internals, restored afterwards."""
    import triton

    from latim_captum.maps import layer_maps_fast
    from latim_captum.maps.triton import kernels, launch
    from latim_captum.maps.triton.workspace import causal_tile_counts

    n = layer.residual.shape[1]
    d_inner = layer.out_gate.shape[-1]
    bi, bj = kernels.STAGED_TILE[layer.variant]
    if layer.variant == "mamba1" and rows % bi:
        raise ValueError(f"Mamba-1 rows per launch must be a multiple of {bi}, got {rows}")
    sweep = triton.autotune(
        configs=[triton.Config({"BC": bc}, num_warps=warps) for bc, warps in candidates],
        # the launch's rows in the key: Triton's disk cache of autotuning (TRITON_CACHE_AUTOTUNING) would otherwise
        # return the timings of another point
        key=["d_inner", "K", "HEAD_DIM", "STATE", "ANCHOR", "PRECISION", "BI", "BJ", "r0", "r1", "ss_c"],
        cache_results=False,
    )(kernels.gate)
    kept, launch.gate_autotuned = launch.gate_autotuned, sweep
    config = {"channel_shares": channels_contiguous}
    try:
        anchor = rows if layer.variant == "mamba1" and rows < 128 else None
        layer_maps_fast(
            layer, "silu", ("l2",), precision=precision, kernel="triton", rows=(n - rows, n), block=rows,
            anchor_rows=anchor, kernel_config=config,
        )  # fmt: skip
        if layer.residual.is_cuda:
            torch.cuda.synchronize()
    finally:
        launch.gate_autotuned = kept
    tiles = int(causal_tile_counts(n - rows, n, bi, bj)[0].sum())
    elem = 2 if precision == "bf16" else 4
    g_bytes = tiles * bi * bj * d_inner * elem
    fill_ms = _fill_ms(g_bytes // elem, torch.bfloat16 if elem == 2 else torch.float32)
    measured = getattr(sweep, "configs_timings", None)
    if not measured:
        raise RuntimeError("Triton's autotuner timed no candidate (the interpreter does not benchmark)")
    timings = {
        (cfg.kwargs["BC"], cfg.num_warps): float(t[0] if isinstance(t, (list, tuple)) else t)
        for cfg, t in measured.items()
    }
    best = min(timings, key=timings.get)
    # the whole launch with the shipped gate candidates (mixing + gate + project + sums), same timer and layout
    launch_ms = _bench(
        lambda: layer_maps_fast(
            layer, "silu", ("l2",), precision=precision, kernel="triton", rows=(n - rows, n), block=rows,
            anchor_rows=anchor, kernel_config=config,
        )
    )  # fmt: skip
    return {
        "variant": layer.variant, "N": n, "rows": rows, "precision": precision,
        "shares": "channels" if channels_contiguous else "sequence", "g_gib": g_bytes / 2**30,
        "fill_ms": fill_ms, "fill_tb_s": g_bytes / fill_ms / 1e9,
        "candidates": {f"BC={bc},warps={w}": ms for (bc, w), ms in sorted(timings.items())},
        "best": f"BC={best[0]},warps={best[1]}", "best_ms": timings[best],
        "best_tb_s": g_bytes / timings[best] / 1e9, "best_vs_fill": fill_ms / timings[best],
        "launch_ms": launch_ms,
    }  # fmt: skip


def to_markdown(results: list[dict], gpu: str) -> str:
    lines = [
        f"# `gate_kernel` against the write bandwidth ({gpu})",
        "",
        "| model | N | rows | precision | shares contiguous along | G GiB | fill ms (TB/s) | best config | "
        "gate ms (TB/s) | fill / gate | whole launch ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['N']} | {r['rows']} | {r['precision']} | {r['shares']} | {r['g_gib']:.2f} | "
            f"{r['fill_ms']:.2f} ({r['fill_tb_s']:.2f}) | {r['best']} | {r['best_ms']:.2f} ({r['best_tb_s']:.2f}) | "
            f"{r['best_vs_fill']:.2f} | {r['launch_ms']:.2f} |"
        )
    lines += ["", "Every candidate (ms):", ""]
    for r in results:
        cells = ", ".join(f"{k}: {v:.2f}" for k, v in r["candidates"].items())
        lines.append(f"* {r['variant']} N={r['N']} rows={r['rows']} {r['precision']} {r['shares']}: {cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mamba2,mamba1")
    parser.add_argument("--precisions", default="tf32,bf16")
    parser.add_argument("--points", default="2048:2048,32768:24", help="comma-separated N:rows")
    parser.add_argument("--shares", default="sequence,channels", help="memory layouts of the tap shares to time")
    parser.add_argument("--candidates", default=None, help="BC:num_warps,... (default: all of CANDIDATES)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gate_sweep.py times CUDA kernels: no CUDA device here", file=sys.stderr)
        return 2
    import latim_captum as lc

    device = torch.device("cuda")
    gpu = torch.cuda.get_device_name(device)
    candidates = CANDIDATES
    if args.candidates:
        candidates = tuple(tuple(int(v) for v in c.split(":")) for c in args.candidates.split(","))
    results = []
    for variant in args.models.split(","):
        model = build_model(variant, False, torch.float32, device, n_layers=1)
        for point in args.points.split(","):
            n, rows = (int(v) for v in point.split(":"))
            if variant == "mamba1":  # whole anchors, and few enough rows for int32 offsets of the folded factors
                rows = max(16, min(rows, 512) // 16 * 16)
            ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
            layer = lc.trace(model, ids).layers[0]
            for precision in args.precisions.split(","):
                for layout in args.shares.split(","):
                    try:
                        result = sweep_point(layer, rows, precision, candidates, layout == "channels")
                    except Exception as err:  # one point's failure (a candidate that does not compile) ends no run
                        print(f"{variant} {point} {precision} {layout}: {type(err).__name__}: {err}", file=sys.stderr)
                        continue
                    print(json.dumps(result), flush=True)
                    results.append(result)
            del layer
            torch.cuda.empty_cache()
    report = to_markdown(results, gpu)
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gate_sweep.json").write_text(json.dumps({"gpu": gpu, "results": results}, indent=1))
        (out / "gate_sweep.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
