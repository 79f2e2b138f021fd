"""Mamba-1's hidden attention for the baselines: eq 15 as written against the anchored factorisation, same run.

Times :func:`latim_captum.ssm.hidden_attention` (eq 15: ``[rows, N, d, R]`` exponentials) and
:func:`latim_captum.ssm.hidden_attention_anchored` (one batched product per anchor) on one layer of a random Mamba-1
model, then Mamba-Attention (every row) and Mamba-Attribution (one row) end to end with each, and prints the ratios
and the largest relative difference. Writes ``hidden-attention-<device>.{md,json}`` under ``--out``.

Usage (repository root)::

    python benchmarks/hidden_attention.py --lengths 256 512 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

import latim_captum
from latim_captum._environment import command_line, device_name
from latim_captum.baselines import mamba_attention, mamba_attribution
from latim_captum.bench_speed import timed
from latim_captum.ssm import default_anchor_rows, hidden_attention, hidden_attention_anchored
from latim_captum.tasks.models import build_model

# the modules (the package's names are the functions)
attention_module = importlib.import_module("latim_captum.baselines.mamba_attention")
attribution_module = importlib.import_module("latim_captum.baselines.mamba_attribution")


@contextmanager
def plain_eq15():
    """The baselines with eq 15 as written (what they computed before the anchored factorisation)."""
    saved = attention_module.hidden_attention_anchored, attribution_module.hidden_attention_anchored
    attention_module.hidden_attention_anchored = attribution_module.hidden_attention_anchored = (
        lambda ssm, start=0, stop=None: hidden_attention(ssm, start, stop)
    )
    try:
        yield
    finally:
        attention_module.hidden_attention_anchored, attribution_module.hidden_attention_anchored = saved


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def measure(n: int, args: argparse.Namespace) -> dict:
    """One length: the one-layer timing, then both baselines end to end, each with eq 15 and anchored."""
    device = torch.device(args.device)
    model = build_model("mamba1", layers=args.layers, d_model=args.d_model, state=args.state, vocab=64)
    model = model.to(device).eval()
    ids = torch.randint(0, 64, (1, n), device=device)
    mamba_attention(model, ids[:, :16])  # untimed: first calls allocate and load
    ssm = latim_captum.trace(model, ids).layers[0].ssm
    rows = min(n, args.rows)
    t_eq15, _, exact = timed(lambda: hidden_attention(ssm, n - rows, n), device)
    t_anch, _, fast = timed(lambda: hidden_attention_anchored(ssm, n - rows, n), device)
    point = {"n": n, "rows": rows, "anchor_rows": default_anchor_rows(n), "layer_eq15_s": t_eq15,
             "layer_anchored_s": t_anch, "layer_max_rel_diff": rel(fast, exact)}  # fmt: skip
    del exact, fast
    with plain_eq15():
        t_att_eq15, _, att_eq15 = timed(lambda: mamba_attention(model, ids), device)
        t_attr_eq15, _, attr_eq15 = timed(lambda: mamba_attribution(model, ids, position=-1), device)
    t_att, _, att = timed(lambda: mamba_attention(model, ids), device)
    t_attr, _, attr = timed(lambda: mamba_attribution(model, ids, position=-1), device)
    point.update(
        attention_eq15_s=t_att_eq15, attention_anchored_s=t_att, attention_max_rel_diff=rel(att, att_eq15),
        attribution_eq15_s=t_attr_eq15, attribution_anchored_s=t_attr, attribution_max_rel_diff=rel(attr, attr_eq15),
    )  # fmt: skip
    print(
        f"N={n}: one layer, {rows} rows: eq 15 {t_eq15:.2f} s, anchored {t_anch:.2f} s ({t_eq15 / t_anch:.1f}×, "
        f"max rel diff {point['layer_max_rel_diff']:.1e}); Mamba-Attention {t_att_eq15:.2f} → {t_att:.2f} s "
        f"({t_att_eq15 / t_att:.1f}×); Mamba-Attribution, one row {t_attr_eq15:.2f} → {t_attr:.2f} s "
        f"({t_attr_eq15 / t_attr:.1f}×)",
        flush=True,
    )
    return point


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/hidden_attention.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 512])
    p.add_argument("--d-model", type=int, default=256, help="d_inner is twice this")
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rows", type=int, default=256, help="query rows of the one-layer timing (the last ones)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    device = args.device
    name = device_name(device)
    points = [measure(n, args) for n in args.lengths]
    command = command_line("python benchmarks/hidden_attention.py", argv)
    report = {
        "device": name, "torch": torch.__version__, "command": command, "d_model": args.d_model,
        "d_inner": 2 * args.d_model, "state": args.state, "layers": args.layers, "points": points,
    }  # fmt: skip
    lines = [
        "# Mamba-1 hidden attention for the baselines: eq 15 as written vs anchored",
        "",
        f"- device: {name}; torch {torch.__version__}; command: `{command}`",
        f"- random Mamba-1, {args.layers} layers, d_model {args.d_model} (d_inner {2 * args.d_model}), state "
        f"{args.state}, float32; every time is one call after an untimed one at N = 16",
        "",
        "| N | anchor | one layer, last rows: eq 15 → anchored | Mamba-Attention, all rows | Mamba-Attribution, one "
        "row | largest relative difference (layer / Attention / Attribution) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for q in points:
        lines.append(
            f"| {q['n']} | {q['anchor_rows']} | {q['rows']} rows: {q['layer_eq15_s']:.2f} → "
            f"{q['layer_anchored_s']:.2f} s "
            f"({q['layer_eq15_s'] / q['layer_anchored_s']:.1f}×) | {q['attention_eq15_s']:.2f} → "
            f"{q['attention_anchored_s']:.2f} s ({q['attention_eq15_s'] / q['attention_anchored_s']:.1f}×) | "
            f"{q['attribution_eq15_s']:.2f} → {q['attribution_anchored_s']:.2f} s "
            f"({q['attribution_eq15_s'] / q['attribution_anchored_s']:.1f}×) | {q['layer_max_rel_diff']:.1e} / "
            f"{q['attention_max_rel_diff']:.1e} / {q['attribution_max_rel_diff']:.1e} |"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"hidden-attention-{'cuda' if device.startswith('cuda') else 'cpu'}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
