"""A model split over devices by accelerate gives the maps of the same model on one device: a check at any width.

Builds a random-weight model (``--shape 7b``: falcon-mamba-7b / mamba-codestral-class widths, d_model 4096 with 64
layers; ``130m``; ``quick``: tiny), computes the reference maps with the whole model on the first device, then
dispatches its layers over ``--split`` (the first half of the layers on the first device, the rest on the second:
``cuda:0,cuda:1`` on two GPUs, ``cuda:0,cpu`` on one GPU, ``cpu,disk`` for an offload smoke test on the CPU) and
computes them again. Compared: the ALTI rollout ``[N, N]`` (streamed layer by layer), the ALTI-Logit row of the
last position (streamed row by row) and the ALTI maps of the first, middle and last layers; printed: the relative
error of each and both wall times.

Usage::

    python benchmarks/sharded_check.py --shape quick --split cpu,disk                  # CPU smoke test (offload)
    python benchmarks/sharded_check.py --model mamba1 --shape 7b --tokens 256 --split cuda:0,cuda:1 --out results/
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {"quick": (64, 2), "130m": (768, 24), "7b": (4096, 64)}


def build(kind: str, shape: str, layers: int | None, device: torch.device) -> torch.nn.Module:
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    hidden, default_layers = SHAPES[shape]
    n_layers = layers or default_layers
    vocab = 256 if shape == "quick" else 50280
    torch.manual_seed(0)
    with device:  # initialise in place: 7B parameters built on the CPU take minutes
        if kind == "mamba1":
            cfg = MambaConfig(hidden_size=hidden, num_hidden_layers=n_layers, state_size=16, expand=2,
                              vocab_size=vocab, use_cache=False, tie_word_embeddings=False)  # fmt: skip
            model = MambaForCausalLM(cfg)
        else:
            cfg = Mamba2Config(hidden_size=hidden, num_hidden_layers=n_layers, state_size=128, expand=2, head_dim=64,
                               num_heads=2 * hidden // 64, n_groups=8 if hidden >= 4096 else 1, chunk_size=256,
                               vocab_size=vocab, use_cache=False, tie_word_embeddings=False)  # fmt: skip
            model = Mamba2ForCausalLM(cfg)
    return model.eval()


def maps(model, ids: torch.Tensor, backend: str) -> tuple[dict[str, torch.Tensor], float]:
    import latim_captum as lc

    start = time.perf_counter()
    tr = lc.trace(model, ids)
    n_layers = tr.n_layers
    out = {
        "alti_rollout": lc.alti_rollout(tr, backend=backend),
        "alti_logit_row": lc.alti_logit_row(tr, position=ids.shape[1] - 1, backend=backend).scores,
        "alti_layers": lc.interactions(tr, method="alti", layers=[0, n_layers // 2, n_layers - 1], backend=backend),
    }
    out = {k: v.float().cpu() for k, v in out.items()}
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mamba1", "mamba2"), default="mamba1")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="quick")
    parser.add_argument("--layers", type=int, default=None, help="layers (default: the shape's)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--split", default="cpu,disk", help="two devices: first half of the layers, second half")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from accelerate import dispatch_model

    first, second = args.split.split(",")
    home = torch.device(first)
    model = build(args.model, args.shape, args.layers, home)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    reference, t_ref = maps(model, ids.to(home), args.backend)
    n_layers = model.config.num_hidden_layers
    half = n_layers // 2
    device_map = {"backbone.embeddings": first, **{f"backbone.layers.{k}": first if k < half else second
                  for k in range(n_layers)}, "backbone.norm_f": second, "lm_head": second}  # fmt: skip
    with tempfile.TemporaryDirectory() as offload:
        # main device: where the outputs go and the CPU layers run (a GPU main device would offload them instead)
        dispatch_model(model, device_map=device_map, offload_dir=offload, main_device=first)
        got, t_split = maps(model, ids.to(home), args.backend)
    errors = {k: float((got[k] - v).norm() / v.norm().clamp_min(1e-30)) for k, v in reference.items()}
    report = {
        "model": args.model, "shape": args.shape, "layers": n_layers, "tokens": args.tokens, "split": args.split,
        "backend": args.backend, "single_device_s": t_ref, "split_s": t_split, "relative_errors": errors,
        "gpus": [torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count())],
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    worst = max(errors.values())
    print(f"{'OK' if worst < 1e-4 else 'MISMATCH'}: worst relative error {worst:.2e} (single device {t_ref:.1f} s, "
          f"split {t_split:.1f} s)")  # fmt: skip
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        name = f"sharded-check-{args.model}-{args.shape}-{args.split.replace(',', '-').replace(':', '')}.json"
        (Path(args.out) / name).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
