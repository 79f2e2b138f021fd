"""Single-query ALTI-Logit at long N (e.g. 131072) on a model with mamba-130m / mamba2-130m widths and few layers.

The row's cost is the ALTI rows ``≤ q`` of every layer but the last, ``(L − 1)·q²·d·D`` FLOPs: per layer it does not
depend on the depth, so a model of ``--layers`` layers (default 2: one ALTI layer and two Δ rows) measures one
layer's time and the memory at that length, and the time of the 24-layer model is extrapolated as
``(24 − 1) × (time − Δ rows) / (L − 1)`` (printed as an extrapolation, not a measurement). The trace alone of the
24-layer model is ``L·N·(3·d + 3·D + …)`` floats (about 84 GiB for mamba2-130m at N = 131072): beyond an 80 GB GPU.

Checked on the result, at that length: with ``activation="silu_gate"`` (exact for SiLU models) the row sums to the
target logit minus its offset (eq 8), which the printed relative error shows.

Usage (CUDA)::

    python benchmarks/single_query_long.py --model mamba2 --n 131072 --layers 2 --out long
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latim_captum._environment import device_name
from latim_captum.bench_speed import build_model, matmul_peak, timed
from latim_captum.maps.tiles import dominant_flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mamba1", "mamba2"), default="mamba2")
    parser.add_argument("--n", type=int, default=131072)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test (with --backend fast and a short --n)")
    parser.add_argument("--profile", action="store_true", help="then print the row's CUDA kernels (torch.profiler)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import latim_captum as lc
    from latim_captum.single_query import alti_logit_row

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    precision = "bf16" if dtype == torch.bfloat16 else "tf32"
    gpu = device_name(device)
    peak_tflops = matmul_peak(precision, device)
    model = build_model(args.model, False, dtype, device, n_layers=args.layers)
    d_model = model.config.hidden_size
    d_inner = model.config.expand * d_model
    # warm-up at a short length (JIT and autotuning of every kernel the row uses)
    warm_ids = torch.randint(0, model.config.vocab_size, (1, min(512, args.n)), device=device)
    alti_logit_row(model, warm_ids, activation="silu_gate", precision=precision, backend=args.backend)
    ids = torch.randint(0, model.config.vocab_size, (1, args.n), device=device)
    t_trace, trace_gib, tr = timed(lambda: lc.trace(model, ids), device)
    print(f"trace: {t_trace:.1f} s, peak {trace_gib:.1f} GiB", flush=True)
    start = time.perf_counter()
    wall, peak_gib, row = timed(
        lambda: alti_logit_row(tr, activation="silu_gate", precision=precision, backend=args.backend), device
    )
    total = row.scores.sum(-1)
    target_sum = row.logits - row.offset
    rel_err = float(((total - target_sum).abs() / target_sum.abs().clamp_min(1e-12)).max())
    # the Δ rows (one query row per layer) are timed alone to leave the ALTI layers' share
    t_rows, _, _ = timed(
        lambda: [
            lc.layer_maps(layer, "silu_gate", ("logit",), projection=torch.zeros_like(tr.embeddings),
                          backend=args.backend, precision=precision, rows=(args.n - 1, args.n))
            for layer in tr.layers
        ],
        device,
    )  # fmt: skip
    per_alti_layer = (wall - t_rows) / max(1, args.layers - 1)
    flops_layer = dominant_flops(args.n, d_inner, d_model)
    result = {
        "gpu": gpu, "model": args.model, "dtype": args.dtype, "precision": precision, "N": args.n,
        "layers": args.layers, "trace_s": t_trace, "trace_peak_gib": trace_gib, "row_s": wall,
        "row_peak_gib": peak_gib, "delta_rows_s": t_rows, "per_alti_layer_s": per_alti_layer,
        "tflops": flops_layer / per_alti_layer / 1e12, "peak_tflops": peak_tflops,
        "frac_peak": flops_layer / per_alti_layer / 1e12 / peak_tflops,
        "sum_rel_err": rel_err, "extrapolated_24_layers_s": 23 * per_alti_layer + t_rows / args.layers * 24,
        "elapsed_s": time.perf_counter() - start,
    }  # fmt: skip
    print(json.dumps(result, indent=1), flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            alti_logit_row(tr, activation="silu_gate", precision=precision, backend=args.backend)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=50)
        print(table, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"single-query-{args.model}-{args.dtype}-{args.n}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
