"""Train a Mamba-1 / Mamba-2 model on passkey retrieval and frequent-word extraction from scratch (paper §4.3).

The paper evaluates the released Mamba-2 checkpoints (130M–1.4B, pretrained on the Pile); nothing can be downloaded
here, so small models learn both tasks from scratch on :class:`~.data.RetrievalTask`, mixed in every batch:
passkey with ``k`` keys drawn from ``--train-keys`` (weights ``--key-weights``) and FWE for a ``--fwe-share`` of
the samples. The loss is next-token cross-entropy on the answer tokens and ``<eos>`` only (the rows
``answer_start − 1 … N − 2``; the filler is noise, not text to learn).

**Length curriculum.** A recurrent model learns to hold a value over 1,000 filler tokens far faster when it first
learns the lookup on short samples; stages of increasing length follow the *training progress*
``p = max(step / steps, minutes / curriculum_minutes)`` (the larger of the step and the time fraction, never going
back), so a run cut by ``--max-minutes`` still spends its last part at full length. Each stage keeps the tokens
per batch fixed (``batch = tokens_per_batch // length``); a stage with several lengths cycles through them.

- ``--scale paper``: 6 layers, d_model 256 (Mamba-1 state 16; Mamba-2 state 64, head_dim 64: 8 heads), about
  3M parameters; 32,768 tokens per batch; lengths 128 → 256 → 512 → {1024, 2048} at progress 0.1 / 0.2 / 0.35;
  AdamW lr 1.5e-3, inverse-sqrt schedule with 300 warm-up steps (no total needed: the run ends on time);
  values of 4 digits, 32 × 32 keys, 64 coded words (16 per FWE sample); batches drawn by 4 worker processes
  (``--data-workers``). Needs a GPU with mamba-ssm's kernels
  (``--device cuda --bf16``); sized so that the one-key case is learnt within one 8-minute device call (a small
  model sees ≥ 100M tokens there; the lookup a one-key sample needs is one value held in the state), while
  several keys need an associative lookup that a 3M model learns only in part: the difficulty the study is about.
- ``--scale tiny``: the tiny task (:data:`~latim_captum.retrieval.data.TINY_TASK`), 2 layers, d_model 64, lengths
  128 → {128, 192}, for the CPU.

Held-out accuracy (teacher forcing, samples drawn with seed + 1 at the last stage's shortest length):
``token_acc`` over answer tokens, ``exact_match`` (every answer token right, equal to greedy decoding's), and the
exact match per passkey key count and for FWE.

**Resuming.** The output folder holds ``trainer_state.pt`` (optimizer, schedule, step, progress, minutes);
``--resume DIR`` continues from it with DIR's model, task, optimizer and training arguments; only the call's own
settings (``--out``, ``--device``, ``--bf16``, ``--kernels``, ``--quiet``, ``--max-minutes``) and, when given,
``--steps``, ``--curriculum-minutes`` and ``--data-workers`` are taken from the command line; any other option given
with a value unlike the saved run's is refused (:func:`~latim_captum.tasks.training.resumed_args`). The curriculum
resumes where it stopped (its progress is saved). A step's batch depends on ``(seed, step)`` and its length only.

Usage::

    python -m latim_captum.retrieval.train --variant mamba2 --scale tiny --out runs/retrieval-m2
    python -m latim_captum.retrieval.train --variant mamba1 --scale paper --device cuda --bf16 --max-minutes 8 \\
        --out gpu-models/retrieval-mamba1-paper-s0
    python -m latim_captum.retrieval.train --variant mamba1 --resume gpu-models/retrieval-mamba1-paper-s0 ...

Writes ``model.safetensors``, ``config.json``, the tokenizer, ``training_args.json``, ``metrics.json`` and
``trainer_state.pt``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..tasks.models import build_model
from ..tasks.training import (
    add_training_arguments,
    autocast_for,
    check_device,
    continue_history,
    fill_from_preset,
    given_options,
    load_resume,
    make_optimizer,
    ready_model,
    restore_,
    resumed_args,
    run_fields,
    run_training,
    save_run,
    save_trainer_state,
    trainer_main,
)
from .data import KEYS, TINY_TASK, RetrievalSample, RetrievalTask

__all__ = ["PRESETS", "answer_loss", "curriculum_length", "evaluate_answers", "main", "task_of_scale", "train"]

_PAPER = dict(
    layers=6,
    d_model=256,
    mimetic_layers=[],
    steps=40_000,
    tokens_per_batch=32_768,
    lr=1.5e-3,
    warmup=300,
    schedule="inverse_sqrt",
    curriculum=[[0.1, [128]], [0.2, [256]], [0.35, [512]], [1.0, [1024, 2048]]],
    n_eval=32,
    eval_every=1000,
    data_workers=4,
)
_TINY = dict(
    layers=2,
    d_model=64,
    mimetic_layers=[],
    steps=300,
    tokens_per_batch=2048,
    lr=3e-3,
    warmup=30,
    schedule="inverse_sqrt",
    curriculum=[[0.3, [128]], [1.0, [128, 192]]],
    n_eval=16,
    eval_every=100,
    data_workers=0,
)

#: per-scale, per-variant settings; command-line flags override any of them
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"mamba1": {**_PAPER, "state": 16}, "mamba2": {**_PAPER, "state": 64, "head_dim": 64}},
    "tiny": {"mamba1": {**_TINY, "state": 16}, "mamba2": {**_TINY, "state": 32, "head_dim": 16}},
}


def task_of_scale(scale: str) -> RetrievalTask:
    """The task a preset trains on: the full one for ``paper``, :data:`~latim_captum.retrieval.data.TINY_TASK` for
    ``tiny``."""
    return RetrievalTask() if scale == "paper" else RetrievalTask(**TINY_TASK)


def curriculum_length(curriculum: Sequence[Sequence], progress: float, step: int) -> int:
    """The training length at ``progress`` in [0, 1]: the first stage ``[end, lengths]`` with ``progress < end``
    (the last stage from there on), cycling through its lengths by step.

    Example:
        >>> stages = [[0.5, [16]], [1.0, [32, 64]]]
        >>> [curriculum_length(stages, p, s) for p, s in [(0.0, 0), (0.6, 0), (0.6, 1), (2.0, 2)]]
        [16, 32, 64, 32]
    """
    stage = next((lengths for end, lengths in curriculum if progress < end), curriculum[-1][1])
    return int(stage[step % len(stage)])


def draw_batch(
    task: RetrievalTask,
    *,
    length: int,
    batch: int,
    seed: Sequence[int],
    keys: Sequence[int],
    key_weights: Sequence[float],
    fwe_share: float,
) -> list[RetrievalSample]:
    """``batch`` samples of one length: FWE with probability ``fwe_share``, else passkey with ``k`` drawn from
    ``keys`` with ``key_weights``; each sample has its own seed ``(*seed, slot)``, so the batch depends on
    ``seed`` alone."""
    rng = np.random.default_rng([*seed, 99])
    weights = np.asarray(key_weights, dtype=np.float64)
    out = []
    for slot in range(batch):
        sub = [*seed, slot]
        if rng.random() < fwe_share:
            out += task.fwe(1, length=length, seed=sub)
        else:
            k = int(keys[int(rng.choice(len(keys), p=weights / weights.sum()))])
            out += task.passkey(1, length=length, keys=k, seed=sub)
    return out


def answer_mask(samples: Sequence[RetrievalSample], width: int) -> torch.Tensor:
    """``[B, N]`` bool: the rows ``answer_start − 1 … N − 2`` that predict the answer tokens and ``<eos>``."""
    pos = torch.arange(width)
    first = torch.tensor([s.answer_start - 1 for s in samples])[:, None]
    return (pos >= first) & (pos <= width - 2)


def answer_loss(
    logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per-token cross-entropy, argmax-correct, mask)`` on the masked rows: row ``i`` against token ``i + 1``."""
    mask = mask.to(logits.device)[:, :-1]
    gold = ids.to(logits.device)[:, 1:][mask]
    pred = logits[:, :-1][mask].float()
    return nn.functional.cross_entropy(pred, gold, reduction="none"), pred.argmax(-1) == gold, mask


@torch.no_grad()
def evaluate_answers(
    model: nn.Module,
    groups: dict[str, list[RetrievalSample]],
    task: RetrievalTask,
    *,
    batch_size: int = 32,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Teacher-forced accuracy on the answer tokens (``<eos>`` excluded): ``token_acc`` and ``exact_match`` over
    every group, and ``exact_<group>`` per group."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, float] = {}
    correct = tokens = exact = total = 0
    try:
        for name, samples in groups.items():
            group_exact = 0
            for start in range(0, len(samples), batch_size):
                part = samples[start : start + batch_size]
                ids = task.encode(part)
                with autocast or contextlib.nullcontext():
                    logits = model(input_ids=ids.to(device)).logits
                mask = answer_mask(part, ids.shape[1])
                mask[:, -2] = False  # the <eos> row: not part of the answer
                _, ok, m = answer_loss(logits, ids, mask)
                per_row = torch.ones_like(m)
                per_row[m] = ok
                correct += int(ok.sum())
                tokens += int(m.sum())
                group_exact += int(per_row.all(-1).sum())
            out[f"exact_{name}"] = group_exact / len(samples)
            exact += group_exact
            total += len(samples)
    finally:
        model.train(was_training)
    return {"token_acc": correct / tokens, "exact_match": exact / total, **out}


def eval_groups(task: RetrievalTask, *, length: int, n: int, seed: int) -> dict[str, list[RetrievalSample]]:
    """The held-out samples of training: passkey with 1, 2 and 4 keys and FWE at ``length``, drawn with
    ``seed + 1``."""
    groups = {f"k{k}": task.passkey(n, length=length, keys=k, seed=[seed + 1, 1, length, k]) for k in KEYS}
    groups["fwe"] = task.fwe(n, length=length, seed=[seed + 1, 2, length])
    return groups


def train(args: argparse.Namespace) -> dict:
    """Train (or resume), evaluate and save; returns the metrics dict (also written to ``metrics.json``)."""
    if getattr(args, "stop_at", None) is not None:  # the shared flag; a resumed run's steps count from its start
        raise ValueError("--stop-at is for the copy and alignment trainers; cut a retrieval run with --max-minutes "
                         "and continue it with --resume")  # fmt: skip
    torch.manual_seed(args.seed)
    device = check_device(args.device)
    resume = Path(args.resume) if args.resume else None
    state: dict = {}
    if resume is not None:
        model, state, meta = load_resume(resume, args.variant)
        task = RetrievalTask(**meta["task"])
    else:
        task = task_of_scale(args.scale)
        model = build_model(
            args.variant,
            layers=args.layers,
            d_model=args.d_model,
            state=args.state,
            vocab=task.vocab_size,
            head_dim=args.head_dim,
            seq_len=max(max(lengths) for _, lengths in args.curriculum),
            act=args.act,
            special_id=task.pad_id,
        )
    fresh = resume is None  # a resumed model keeps its trained weights
    ready_model(model, device, act=args.act, check_len=128, mimetic_layers=args.mimetic_layers if fresh else None,
                mimetic_a_scale=args.mimetic_a_scale, kernels=args.kernels)  # fmt: skip
    opt, sched = make_optimizer(
        model, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, schedule=args.schedule,
        steps=args.steps,
    )  # fmt: skip
    start = restore_(state, opt, sched)
    minutes_before = float(state.get("minutes", 0.0))
    progress = {"p": float(state.get("progress", 0.0))}
    use_bf16, autocast = autocast_for(device, args.bf16)
    eval_length = min(args.curriculum[-1][1])
    groups = eval_groups(task, length=eval_length, n=args.n_eval, seed=args.seed)
    curriculum_minutes = args.curriculum_minutes or args.max_minutes
    t0 = time.time()

    def plan(step: int) -> int:
        """The curriculum's length for ``step`` (in this process: it reads the clock)."""
        elapsed = minutes_before + (time.time() - t0) / 60
        p = step / args.steps
        if curriculum_minutes:
            p = max(p, elapsed / curriculum_minutes)
        progress["p"] = max(progress["p"], p)
        return curriculum_length(args.curriculum, progress["p"], step)

    def submit(step: int) -> tuple[Future, int]:
        length = plan(step)
        future = pool.submit(draw_batch, task, length=length, batch=max(1, args.tokens_per_batch // length),
                             seed=[args.seed, 0, step], keys=args.train_keys, key_weights=args.key_weights,
                             fwe_share=args.fwe_share)  # fmt: skip
        return future, length

    # batches are drawn ahead while the device runs: in worker processes at paper scale (drawing 32k tokens of
    # samples in Python takes about as long as a step on the GPU), on one thread otherwise
    if args.data_workers:
        pool: Executor = ProcessPoolExecutor(args.data_workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=1)
    depth = max(1, args.data_workers) + 1
    pending = {step: submit(step) for step in range(start, start + depth)}
    lengths_seen: dict[int, int] = {}

    def step_loss(rel: int) -> torch.Tensor:
        step = start + rel
        future, length = pending.pop(step)
        samples = future.result()
        pending[step + depth] = submit(step + depth)
        lengths_seen[length] = lengths_seen.get(length, 0) + 1
        ids = task.encode(samples)
        with autocast():
            logits = model(input_ids=ids.to(device, non_blocking=True)).logits
        return answer_loss(logits, ids, answer_mask(samples, ids.shape[1]))[0].mean()

    try:
        history = run_training(
            model,
            opt,
            sched,
            steps=max(1, args.steps - start),
            step_loss=step_loss,
            evaluate=lambda: {**evaluate_answers(model, groups, task, autocast=autocast()), "progress": progress["p"]},
            eval_every=args.eval_every,
            max_minutes=args.max_minutes,
            quiet=args.quiet,
            desc=f"train {args.variant}",
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for entry in history:  # this loop counts its steps from the call's start; the schedule extends per resume
        entry["step"] += start
    history = continue_history(state, history)
    final = history[-1]
    result = {
        "task_name": "retrieval",
        **run_fields(args, device, use_bf16, final),
        "progress": progress["p"],
        "eval_length": eval_length,
        **{f"eval_{k}": v for k, v in final.items() if k.startswith("exact_")},
        "task": task.to_dict(),
        "n_eval": args.n_eval,
        "train_keys": list(args.train_keys),
        "key_weights": list(args.key_weights),
        "fwe_share": args.fwe_share,
        "curriculum": args.curriculum,
        "tokens_per_batch": args.tokens_per_batch,
        "steps_per_length": {str(k): v for k, v in sorted(lengths_seen.items())},
        "resumed_from": str(resume) if resume else None,
        "history": history,
    }
    save_run(model, task.tokenizer(), args.out, args, result)
    save_trainer_state(args.out, opt, sched, step=final["step"], minutes=final["minutes"], history=history,
                       progress=progress["p"])  # fmt: skip
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latim_captum.retrieval.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    overrides = [
        ("layers", int),
        ("d-model", int),
        ("state", int),
        ("head-dim", int),
        ("steps", int),
        ("tokens-per-batch", int),
        ("lr", float),
        ("warmup", int),
        ("n-eval", int),
        ("eval-every", int),
        ("data-workers", int),
    ]
    add_training_arguments(p, PRESETS, overrides)
    p.add_argument("--schedule", choices=["cosine", "inverse_sqrt"], default=None, help="override the preset")
    p.add_argument("--train-keys", type=int, nargs="+", default=list(KEYS), help="passkey key counts in training")
    p.add_argument("--key-weights", type=float, nargs="+", default=[2.0, 1.0, 1.0], help="their sampling weights")
    p.add_argument("--fwe-share", type=float, default=0.25, help="share of FWE samples in a batch")
    p.add_argument(
        "--curriculum-minutes",
        type=float,
        default=None,
        help="minutes over which the length curriculum runs (default --max-minutes; with neither, steps alone)",
    )
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        help="train at these lengths only (one stage, cycled), instead of the preset's curriculum",
    )
    return p


#: what a resumed run takes from its command line when given, besides the trainers' CALL_SETTINGS
_OPTIONAL_SETTINGS = ("steps", "curriculum_minutes", "data_workers")


def resolve_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = resumed_args(parser.parse_args(argv), parser, _OPTIONAL_SETTINGS, given=given_options(parser, argv))
    args = fill_from_preset(args, {"head_dim": 64, **PRESETS[args.scale][args.variant]})
    if args.lengths:
        args.curriculum = [[1.0, list(args.lengths)]]
    if len(args.key_weights) != len(args.train_keys):
        raise SystemExit("--key-weights needs one weight per --train-keys entry")
    if not 0.0 <= args.fwe_share <= 1.0:
        raise SystemExit("--fwe-share must be in [0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return trainer_main(resolve_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
