"""One training step of the paper-scale Mamba-2 copy model on each forward the trainers offer, timed in one run:
HF's own forward (its PyTorch path without mamba-ssm; the fused kernels with it), ``--kernels dual`` (the scan's
quadratic form in PyTorch, :data:`latim_captum.tasks.unfused.DUAL_OPS`) and, where mamba-ssm is installed, the
unfused kernels. A step is forward, cross-entropy, backward and AdamW on a batch of the copy task's shape.

Usage::

    python benchmarks/training_paths.py --device cuda --bf16          # the paper's batch: 256 x 101 tokens
    python benchmarks/training_paths.py --device cpu --batch 8 --layers 2

Prints, per path, ms per step (median of ``--steps`` after ``--warmup``), peak GPU memory, the first step's loss
(the paths compute one model: the losses agree to bf16 rounding) and the ratio to HF's own forward (a path that
runs out of GPU memory is a row saying so: HF's PyTorch path did at the paper's batch on an H100).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import statistics
import time

import torch

from latim_captum._environment import device_name
from latim_captum.tasks.models import build_model
from latim_captum.tasks.unfused import DUAL_OPS, install_unfused_forward_


def _step_times(model, ids, *, steps: int, warmup: int, bf16: bool) -> tuple[list[float], float, float]:
    """(seconds per timed step, first loss, peak GPU GiB)."""
    device = ids.device
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, first = [], None
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast:
            logits = model(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if first is None:
            first = float(loss.detach())
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return times, first, peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA), as the trainers' --bf16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--tokens", type=int, default=101, help="sequence length (the copy task's 2 * 50 + 1)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hf-steps", type=int, default=3, help="timed steps of HF's path (seconds each without kernels)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = build_model("mamba2", layers=args.layers, d_model=512, state=128, vocab=32, head_dim=64,
                       seq_len=args.tokens, act="silu").to(device).train()  # fmt: skip
    ids = torch.randint(0, 32, (args.batch, args.tokens + 1), device=device)
    paths = {"HF's forward": None, "dual": DUAL_OPS}
    has_mamba_ssm = importlib.util.find_spec("mamba_ssm") is not None
    if has_mamba_ssm and device.type == "cuda":
        from latim_captum.tasks.unfused import kernel_ops

        paths["unfused kernels"] = kernel_ops()
    kernels = "with" if has_mamba_ssm else "without"
    print(f"{device_name(device)}, Mamba-2 {args.layers} x 512, batch {args.batch} x {args.tokens} tokens, "
          f"bf16 {args.bf16}, mamba-ssm {kernels}, torch {torch.__version__}")  # fmt: skip
    print("| path | ms / step | peak GiB | first loss | speed-up over HF's forward |")
    print("| --- | --- | --- | --- | --- |")
    baseline = None
    for name, ops in paths.items():
        model = copy.deepcopy(base)
        if ops is not None:
            install_unfused_forward_(model, ops, on_cpu=device.type != "cuda")
        steps = args.hf_steps if ops is None else args.steps
        try:
            times, first, peak = _step_times(model, ids, steps=steps, warmup=1 if ops is None else args.warmup,
                                             bf16=args.bf16)  # fmt: skip
        except torch.OutOfMemoryError:  # HF's PyTorch path at the paper's batch of 256 on an 80 GB H100
            print(f"| {name} | out of memory | > {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f}"
                  " | | |")  # fmt: skip
            del model
            torch.cuda.empty_cache()
            continue
        ms = 1e3 * statistics.median(times)
        if ops is None:
            baseline = ms
        speedup = f"{baseline / ms:.1f}x" if baseline else "n/a"
        print(f"| {name} | {ms:.1f} | {peak:.1f} | {first:.4f} | {speedup} |")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
