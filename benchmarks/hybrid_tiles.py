"""A Bamba-shaped hybrid's maps on the reference and on the tiled path, per sublayer kind, in one run.

Usage::

    python benchmarks/hybrid_tiles.py --lengths 256 1024 --out benchmarks/results/hybrid-tiles-cpu.md
    python benchmarks/hybrid_tiles.py --device cuda --d-model 768 --layers 24 --lengths 2048 --out ...

Random weights, Bamba's layout (Mamba-2 mixers, one attention mixer in ``--attn-every``, an MLP after each). For
every length: one trace, then each sublayer's ℓ2 + ALTI + logit maps (what ALTI-Logit needs of a layer) with
``backend="ref"`` and ``backend="fast"``, timed apart and summed per kind (``mamba2``, ``attention``, ``mlp``), with
the largest difference between the two paths. Prints and writes a Markdown table with the ratio ref / fast.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def build(d_model: int, layers: int, attn_every: int, device: str) -> torch.nn.Module:
    from transformers import BambaConfig, BambaForCausalLM

    heads = max(1, d_model // 64)
    cfg = BambaConfig(
        vocab_size=1000, hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
        attn_layer_indices=list(range(attn_every - 1, layers, attn_every)), mamba_n_heads=2 * d_model // 64,
        mamba_d_head=64, mamba_n_groups=1, mamba_d_state=64, mamba_chunk_size=64, use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return BambaForCausalLM(cfg).eval().to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> str:
    import latim_captum as lc
    from latim_captum.maps import layer_maps
    from latim_captum.traces import sublayer_kind

    device = torch.device(args.device)
    model = build(args.d_model, args.layers, args.attn_every, args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [
        f"# Hybrid sublayers: reference vs tiled path ({name}, {torch.get_num_threads()} threads)",
        "",
        f"Bamba-shaped random model: d_model {args.d_model}, {args.layers} blocks, attention every "
        f"{args.attn_every}; per sublayer the maps ALTI-Logit needs (ℓ2, ALTI, logit), float32, one trace per length.",
        "",
        "| N | kind | sublayers | ref s | fast s | ref / fast | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in args.lengths:
        ids = torch.randint(0, 1000, (1, n), device=device)
        tr = lc.trace(model, ids)
        u = tr.readout.projection(tr.readout.logits.argmax(-1))
        totals: dict[str, list[float]] = {}
        for layer in tr.layers:
            kind = sublayer_kind(layer)
            times, maps = [], []
            for backend in ("ref", "fast"):
                _sync(device)
                start = time.perf_counter()
                maps.append(layer_maps(layer, "silu_gate", ("l2", "alti", "logit"), projection=u, backend=backend))
                _sync(device)
                times.append(time.perf_counter() - start)
            diff = max(float((maps[0][m] - maps[1][m]).abs().max()) for m in ("l2", "alti", "logit"))
            entry = totals.setdefault(kind, [0, 0.0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += times[0]
            entry[2] += times[1]
            entry[3] = max(entry[3], diff)
        for kind, (count, ref_s, fast_s, diff) in totals.items():
            ratio = ref_s / fast_s
            lines.append(f"| {n} | {kind} | {count} | {ref_s:.3f} | {fast_s:.3f} | {ratio:.1f} | {diff:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--attn-every", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    args = p.parse_args()
    report = run(args)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
