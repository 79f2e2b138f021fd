"""The decomposition error (Table 5) in its two forms, same run: the materialised sums against the scan form.

For every activation strategy a task report records (:data:`latim_captum.tasks.reports.ACTIVATIONS`), times
:func:`latim_captum.api.reconstruction_error_terms` with ``backend="ref"`` (``Σ_j T_i(x_j)`` summed from the
``[rows, N, D]`` blocks) and with the default scan form (:mod:`latim_captum.row_sums`), on one trace of a random model
of the copy task's paper shape, beside the model's forward pass and the ℓ2 maps of every layer; prints the ratios and
the largest relative difference of the two errors. Writes ``reconstruction-error-<cpu|cuda>.{md,json}`` under
``--out``.

Usage (repository root)::

    python benchmarks/reconstruction_error.py --samples 2 --out benchmarks/results
    python benchmarks/reconstruction_error.py --device cuda --samples 128
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

import latim_captum
from latim_captum._environment import command_line, device_name
from latim_captum.api import reconstruction_error_terms
from latim_captum.bench_speed import timed
from latim_captum.copying.train import PRESETS
from latim_captum.tasks.models import build_model
from latim_captum.tasks.reports import ACTIVATIONS, write_report

#: errors below this are float32 rounding (an exact strategy)
EXACT = 1e-4


def ratio(slow: float, fast: float) -> str:
    """``slow / fast`` as ``"326×"``, or with one decimal under 10 (``"0.6×"``: the scan form slower)."""
    r = slow / fast
    return f"{r:.0f}×" if r >= 10 else f"{r:.1f}×"


def agreement(s: dict) -> str:
    """The two errors' agreement: relative where the strategy leaves an error, both values where it is exact."""
    if s["ref_error_max"] > EXACT:
        return f"largest relative difference {s['max_rel_diff']:.1e} (errors up to {s['ref_error_max']:.3g})"
    return f"exact: errors ≤ {s['ref_error_max']:.1e} (ref) and {s['scan_error_max']:.1e} (scan)"


def measure(variant: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    cfg = PRESETS["paper"][variant]
    model = build_model(
        variant, layers=cfg["layers"], d_model=cfg["d_model"], state=cfg["state"], vocab=34,
        head_dim=cfg.get("head_dim", 64), seq_len=args.length,
    ).to(device).eval()  # fmt: skip
    ids = torch.randint(0, 32, (args.samples, args.length), generator=torch.Generator().manual_seed(0)).to(device)
    # untimed: first calls allocate, load, and compile and autotune mamba-ssm's Triton kernels for this shape (1.3 s
    # of a Mamba-2 forward on an H100 when timed cold)
    latim_captum.interactions(model, ids[:1, :8], method="l2")
    with torch.no_grad():
        model(ids)
        t_forward, _, _ = timed(lambda: model(ids), device)
    t_trace, _, tr = timed(lambda: latim_captum.trace(model, ids), device)
    t_l2, _, _ = timed(lambda: latim_captum.interactions(tr, method="l2"), device)
    strategies = []
    for act in ACTIVATIONS:
        t_ref, _, (err2_ref, norm2_ref) = timed(
            lambda act=act: reconstruction_error_terms(tr, activation=act, backend="ref"), device
        )
        t_scan, _, (err2, norm2) = timed(
            lambda act=act: reconstruction_error_terms(tr, activation=act), device
        )
        ref, scan = (err2_ref / norm2_ref).sqrt(), (err2 / norm2).sqrt()
        # an exact strategy's error is rounding on both sides: its two values are reported, not their ratio
        strategies.append({
            "activation": act, "ref_s": t_ref, "scan_s": t_scan, "ref_error_max": float(ref.max()),
            "scan_error_max": float(scan.max()),
            "max_rel_diff": float(((scan - ref).abs() / ref.abs().clamp_min(1e-30)).max()),
        })  # fmt: skip
        speed = f"ref {t_ref:.3f} s, scan {t_scan:.3f} s ({ratio(t_ref, t_scan)})"
        print(f"{variant} {act}: {speed}; {agreement(strategies[-1])}", flush=True)
    ref_total, scan_total = sum(s["ref_s"] for s in strategies), sum(s["scan_s"] for s in strategies)
    print(
        f"{variant}: every strategy ref {ref_total:.2f} s, scan {scan_total:.2f} s ({ratio(ref_total, scan_total)}); "
        f"forward {t_forward:.3f} s, trace {t_trace:.2f} s, ℓ2 maps of every layer {t_l2:.2f} s",
        flush=True,
    )
    return {
        "variant": variant, "layers": cfg["layers"], "d_model": cfg["d_model"], "state": cfg["state"],
        "forward_s": t_forward, "trace_s": t_trace, "l2_maps_s": t_l2, "strategies": strategies,
        "ref_total_s": ref_total, "scan_total_s": scan_total,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/reconstruction_error.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=["mamba1", "mamba2"], choices=["mamba1", "mamba2"])
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--length", type=int, default=101, help="tokens per sample (the copy task's 2·50 + 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    name = device_name(args.device)
    points = [measure(v, args) for v in args.variants]
    command = command_line("python benchmarks/reconstruction_error.py", argv)
    report = {"device": name, "torch": torch.__version__, "command": command, "samples": args.samples,
              "length": args.length, "points": points}  # fmt: skip
    lines = [
        "# Decomposition error: materialised sums (`backend=\"ref\"`) vs the scan form",
        "",
        f"- device: {name}; torch {torch.__version__}; command: `{command}`",
        f"- random models of the copy task's paper shape, {args.samples} samples of {args.length} tokens, float32; "
        "every time is one call after an untimed warm-up",
    ]
    if args.device.startswith("cuda") and importlib.util.find_spec("mamba_ssm") is not None:
        lines.append(
            "- mamba-ssm is installed: a Mamba-2 forward is its Triton chunk scan, whose float32 products are TF32, "
            "so an exact strategy's error on Mamba-2 is the kernels' rounding against our float32 sums, not 1e-6"
        )
    lines += [
        "",
        "| model | strategy | ref | scan | ratio | the two errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for q in points:
        for s in q["strategies"]:
            lines.append(
                f"| {q['variant']} | {s['activation']} | {s['ref_s']:.3f} s | {s['scan_s']:.3f} s | "
                f"{ratio(s['ref_s'], s['scan_s'])} | {agreement(s)} |"
            )
    lines += ["", "| model | every strategy: ref → scan | forward | trace | ℓ2 maps, every layer |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for q in points:
        lines.append(
            f"| {q['variant']} | {q['ref_total_s']:.2f} → {q['scan_total_s']:.2f} s "
            f"({ratio(q['ref_total_s'], q['scan_total_s'])}) | {q['forward_s']:.3f} s | {q['trace_s']:.2f} s | "
            f"{q['l2_maps_s']:.2f} s |"
        )
    stem = f"reconstruction-error-{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    json_path, md_path = write_report(report, args.out, stem, lambda _: "\n".join(lines) + "\n")
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
