"""A Bamba-shaped hybrid's maps on the reference and on the tiled path, per sublayer kind, in one run.

Usage::

    python benchmarks/hybrid_tiles.py --lengths 256 1024 --out benchmarks/results/hybrid-tiles-cpu.md
    python benchmarks/hybrid_tiles.py --device cuda --d-model 768 --layers 24 --lengths 2048 --out ...

Random weights, Bamba's layout (Mamba-2 mixers, one attention mixer in ``--attn-every``, an MLP after each). For
every length: one trace, then each sublayer's ℓ2 + ALTI + logit maps (what ALTI-Logit needs of a layer) with
``backend="ref"`` and each of ``--backends`` (``fast``; ``triton`` on CUDA), timed apart and summed per kind
(``mamba2``, ``attention``, ``mlp``), with the largest difference from the reference. Prints and writes a Markdown
table with the ratio ref / path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from latim_captum._environment import device_name


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


def _maps_per_kind(tr, u, backends: list[str], device: torch.device) -> dict[str, list]:
    """Per sublayer kind: [count, seconds per backend..., largest |difference| of each backend from ``ref``]."""
    from latim_captum.maps import layer_maps
    from latim_captum.traces import sublayer_kind

    totals: dict[str, list] = {}
    for layer in tr.layers:
        kind = sublayer_kind(layer)
        entry = totals.setdefault(kind, [0, [0.0] * len(backends), [0.0] * (len(backends) - 1)])
        entry[0] += 1
        maps = []
        for i, backend in enumerate(backends):
            _sync(device)
            start = time.perf_counter()
            maps.append(layer_maps(layer, "silu_gate", ("l2", "alti", "logit"), projection=u, backend=backend))
            _sync(device)
            entry[1][i] += time.perf_counter() - start
        for i in range(1, len(backends)):
            diff = max(float((maps[0][m] - maps[i][m]).abs().max()) for m in ("l2", "alti", "logit"))
            entry[2][i - 1] = max(entry[2][i - 1], diff)
    return totals


def run(args: argparse.Namespace, write=None) -> str:
    import latim_captum as lc

    device = torch.device(args.device)
    backends = ["ref", *args.backends]
    model = build(args.d_model, args.layers, args.attn_every, args.device)
    name = device_name(device)
    fast_cols = " | ".join(f"{b} s | ref / {b} | max abs diff ({b})" for b in args.backends)
    lines = [
        f"# Hybrid sublayers: reference vs tiled path ({name}, {torch.get_num_threads()} threads)",
        "",
        f"Bamba-shaped random model: d_model {args.d_model}, {args.layers} blocks, attention every "
        f"{args.attn_every}; per sublayer the maps ALTI-Logit needs (ℓ2, ALTI, logit), float32, one trace per length, "
        "after one untimed pass over every sublayer at N = 64 (kernel compilation and autotuning are not timed).",
        "",
        f"| N | kind | sublayers | ref s | {fast_cols} |",
        "|---|---|---|---|" + "---|---|---|" * len(args.backends),
    ]
    warm = lc.trace(model, torch.randint(0, 1000, (1, 64), device=device))
    _maps_per_kind(warm, warm.readout.projection(warm.readout.logits.argmax(-1)), backends, device)
    del warm
    for n in args.lengths:
        ids = torch.randint(0, 1000, (1, n), device=device)
        tr = lc.trace(model, ids)
        u = tr.readout.projection(tr.readout.logits.argmax(-1))
        for kind, (count, seconds, diffs) in _maps_per_kind(tr, u, backends, device).items():
            cols = " | ".join(
                f"{seconds[i + 1]:.3f} | {seconds[0] / seconds[i + 1]:.1f} | {diffs[i]:.1e}"
                for i in range(len(args.backends))
            )
            lines.append(f"| {n} | {kind} | {count} | {seconds[0]:.3f} | {cols} |")
        del tr
        if write is not None:  # after every length: a run cut at its limit keeps what it measured
            write("\n".join(lines) + "\n")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--attn-every", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument(
        "--backends", nargs="+", default=["fast"], choices=("fast", "triton"),
        help="paths timed against backend='ref' (triton: CUDA only)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    args = p.parse_args()
    report = run(args, write=Path(args.out).write_text if args.out else None)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
