"""The ``latim`` command line.

``latim demo`` computes LaTIM maps on small offline models and prints them; every command has ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

__all__ = ["main", "build_parser"]


def _tiny_models() -> dict[str, torch.nn.Module]:
    """Small random-weight Mamba-1 and Mamba-2 models built from configs (no downloads)."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    mamba1 = MambaForCausalLM(MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=2, vocab_size=32))
    mamba2 = Mamba2ForCausalLM(
        Mamba2Config(
            hidden_size=32,
            expand=2,
            num_heads=8,
            head_dim=8,
            n_groups=2,
            state_size=8,
            chunk_size=4,
            num_hidden_layers=2,
            vocab_size=32,
        )
    )
    return {"mamba1": mamba1.eval(), "mamba2": mamba2.eval()}


def _print_map(name: str, matrix: torch.Tensor) -> None:
    print(f"\n{name}")
    for row in matrix.tolist():
        print("  " + " ".join(f"{v:7.3f}" for v in row))


def cmd_demo(args: argparse.Namespace) -> int:
    from . import alti_logit, interactions, reconstruction_error

    ids = torch.randint(0, 32, (1, args.length), generator=torch.Generator().manual_seed(args.seed))
    for variant, model in _tiny_models().items():
        print(f"=== {variant}: {type(model).__name__}, tokens {ids[0].tolist()}")
        for method in ("l2", "alti"):
            maps = interactions(model, ids, method=method, layers=-1, activation=args.activation)
            _print_map(f"LaTIM ({method}), last layer", maps[0, 0])
        res = alti_logit(model, ids, activation=args.activation)
        _print_map("LaTIM (ALTI-Logit), all layers", res.scores[0])
        delta = (res.logits - res.offset - res.scores.sum(-1)).abs().max().item()
        print(f"  max |logit - Σ_j C_ij| = {delta:.2e}")
        for act in ("silu", "silu_gate"):
            err = reconstruction_error(model, ids, activation=act).tolist()
            print(f"  reconstruction error per layer with {act}: " + ", ".join(f"{e:.2e}" for e in err))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latim", description="LaTIM token-to-token interactions for Mamba models")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compute and print LaTIM maps on small offline models")
    demo.add_argument("--length", type=int, default=8, help="number of tokens (default 8)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the random input")
    demo.add_argument("--activation", default="silu", help="activation strategy (default silu)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"latim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
