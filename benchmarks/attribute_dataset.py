"""Throughput of ``attribute_dataset`` on 1 process and on N data-parallel processes (``torchrun``), same run.

Each configuration is a fresh ``torchrun --standalone --nproc-per-node K`` job of this script in ``--worker`` mode
(K = 1 too, so every row pays the same start-up and runs under the same launcher). A worker builds the random-weight
model (``--model mamba1|mamba2``: mamba-130m / mamba2-130m widths, ``--quick``: tiny), makes ``--examples`` synthetic
prompts of ``--tokens`` tokens (random ids, seeded; a whitespace "tokenizer" reads them back), attributes one warm-up
example outside the clock (kernel compilation, autotuning, allocator), then times ``attribute_dataset`` between two
barriers: all shards written and the index merged. On CUDA each rank holds one GPU (``LOCAL_RANK``); on the CPU the
ranks share the machine's cores, ``--threads`` each.

Printed and written (``--out``): per K, the timed wall seconds, examples/s, tokens/s and the speed-up and parallel
efficiency against K = 1 *measured in the same run*. The launch and model build are reported apart (``launch_s``).

Usage::

    python benchmarks/attribute_dataset.py --quick --procs 1 2 --examples 16 --tokens 64        # CPU smoke test
    python benchmarks/attribute_dataset.py --model mamba1 --procs 1 2 4 --examples 64 --tokens 2048 --out results/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from latim_captum._environment import command_line, device_name


class IdTokenizer:
    """Reads ``"12 7 301"`` back as token ids: synthetic prompts need no vocabulary file."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def synthetic_examples(count: int, n: int, vocab: int, seed: int):
    from latim_captum.dataset import examples_from_records

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (count, n), generator=gen)
    return examples_from_records([{"prompt": " ".join(map(str, row.tolist()))} for row in ids], name="synthetic")


def worker(args: argparse.Namespace) -> int:
    """One rank of one configuration: warm up, then the timed run; rank 0 writes ``--result``."""
    import torch.distributed as dist

    from latim_captum.bench_speed import build_model
    from latim_captum.dataset import attribute_dataset, init_distributed

    torch.set_num_threads(args.threads)
    rank, world, device, initialised = init_distributed(args.device)
    model = build_model(args.model, args.quick, torch.float32, device)
    vocab = model.config.vocab_size
    tok = IdTokenizer()
    common = dict(methods=args.methods, backend=args.backend, precision=args.precision, activation="silu_gate",
                  progress=False)  # fmt: skip
    # warm-up: one example per rank (shards of one), so every rank compiles and allocates before the clock
    warm = synthetic_examples(world, args.n, vocab, seed=99)
    attribute_dataset(model, tok, warm, Path(args.run_dir) / "warm", shard_size=1, **common)
    examples = synthetic_examples(args.examples, args.n, vocab, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    attribute_dataset(model, tok, examples, Path(args.run_dir) / "out", shard_size=args.shard_size, **common)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    if rank == 0:
        name = device_name(device)
        Path(args.result).write_text(json.dumps({"procs": world, "wall_s": wall, "device": name}) + "\n")
    if initialised:
        dist.destroy_process_group()
    return 0


def run_config(args: argparse.Namespace, procs: int, scratch: Path) -> dict:
    """One ``torchrun`` job of ``procs`` ranks; its timed result and its launch-to-exit time."""
    run_dir = scratch / f"procs-{procs}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    result = run_dir / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), __file__,
           "--worker", "--run-dir", str(run_dir), "--result", str(result), *args.passthrough]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{procs} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    row = json.loads(result.read_text())
    row["launch_s"] = total - row["wall_s"]
    row["examples_per_s"] = args.examples / row["wall_s"]
    row["tokens_per_s"] = args.examples * args.n / row["wall_s"]
    return row


def render(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# attribute_dataset throughput: {meta['model']} ({'quick' if meta['quick'] else '130M widths'}), "
        f"N = {meta['n']}, {meta['examples']} examples, methods {' '.join(meta['methods'])}, {meta['device']}",
        "",
        "| processes | timed wall (s) | examples/s | tokens/s | speed-up vs 1 | efficiency | launch + build (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['procs']} | {row['wall_s']:.2f} | {row['examples_per_s']:.3f} | {row['tokens_per_s']:.1f} | "
            f"{row.get('speedup', float('nan')):.2f} | {row.get('efficiency', float('nan')):.2f} | "
            f"{row['launch_s']:.1f} |"
        )
    lines += ["", f"Command: `{meta['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("mamba1", "mamba2"), default="mamba1")
    parser.add_argument("--quick", action="store_true", help="tiny widths (CPU smoke test)")
    parser.add_argument("--tokens", dest="n", type=int, default=2048, help="tokens per example (default 2048)")
    parser.add_argument("--examples", type=int, default=64, help="examples per configuration (default 64)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--methods", nargs="+", default=["alti_logit"])
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (each rank: GPU LOCAL_RANK)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="highest")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    parser.add_argument("--out", default=None, help="folder for attribute-dataset-<device>.json / .md")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (shards) for inspection")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if 1 not in args.procs:
        parser.error("--procs must include 1: the ratios are against one process measured in the same run")
    if args.device in ("auto", "cuda") and torch.cuda.is_available() and max(args.procs) > torch.cuda.device_count():
        parser.error(f"--procs {max(args.procs)} > {torch.cuda.device_count()} GPUs: one GPU per process")
    args.passthrough = [
        "--model", args.model, *(["--quick"] if args.quick else []), "--tokens", str(args.n), "--examples",
        str(args.examples), "--methods", *args.methods, "--shard-size", str(args.shard_size), "--device", args.device,
        "--backend", args.backend, "--precision", args.precision, "--threads", str(args.threads),
    ]  # fmt: skip
    scratch = Path(tempfile.mkdtemp(prefix="latim-bench-dataset-"))
    rows = []
    try:
        for procs in sorted(set(args.procs)):
            row = run_config(args, procs, scratch)
            rows.append(row)
            print(f"{procs} process(es): {row['wall_s']:.2f} s, {row['examples_per_s']:.3f} examples/s, "
                  f"{row['tokens_per_s']:.1f} tokens/s", flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    base = next(r for r in rows if r["procs"] == 1)
    for row in rows:
        row["speedup"] = row["examples_per_s"] / base["examples_per_s"]
        row["efficiency"] = row["speedup"] / row["procs"]
    meta = {
        "model": args.model, "quick": args.quick, "n": args.n, "examples": args.examples, "methods": args.methods,
        "device": rows[0]["device"], "threads_per_proc": args.threads, "backend": args.backend,
        "command": command_line("python benchmarks/attribute_dataset.py", argv),
    }  # fmt: skip
    report = {"meta": meta, "rows": rows}
    text = render(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = "attribute-dataset-" + ("cpu" if meta["device"] == "cpu" else "cuda")
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{stem}.md").write_text(text)
        print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
