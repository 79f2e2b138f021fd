"""Train a Mamba-1 / Mamba-2 translation model on the synthetic task (the paper's §4.2 / App. B.2, from scratch).

The paper fine-tunes the released 130M/370M checkpoints on IWSLT17 as ``source <SEP> target``; nothing can be
downloaded here, so the models are trained from configs on :class:`~.data.AlignmentTask`:

- ``--scale paper``: the full task (287 source words, 5–20 word sentences) and the copy models' size (8 layers,
  d_model 512, state 16 / 128, about 13M parameters) with App. B.2's optimisation where it applies: AdamW, lr 7e-4,
  cosine schedule with 2,000 warm-up steps, 18,000 steps, batch 64, no clipping. B.2's dropout 0.3 has no
  counterpart (HF Mamba has no dropout). Needs a GPU (``--device cuda --bf16``) with mamba-ssm's kernels, or, for
  Mamba-2, ``--kernels dual`` (no kernels: the scan's quadratic form in PyTorch).
- ``--scale tiny``: the tiny task (:data:`~.data.TINY_TASK`) and a 2-layer d_model 64 model for the CPU.

Loss: next-token cross-entropy on the target part only (rows ``S..S+T``: every target word and ``<eos>``; the
source sentence is given, not translated, and the padding is not text).

Accuracy (teacher forcing, held-out pairs drawn with seed + 1): ``token_acc`` over the target words and ``<eos>``,
``exact_match`` = share of pairs with all of them right (equal to greedy decoding's exact match: a decode that is
right at every step never leaves the gold prefix, and stops at ``<eos>``).

``--act silu|relu|linear`` trains the activation variants of the paper's Table 5 (see
:mod:`latim_captum.copying.train` and :mod:`latim_captum.tasks.models` for the kernels); ``--switch-from DIR`` makes
them the paper's way, from the SiLU model trained in DIR (:data:`SWITCH_RECIPES`, :mod:`latim_captum.tasks.switch`).

Usage::

    python -m latim_captum.alignment.train --variant mamba2 --scale tiny --out runs/align-m2
    python -m latim_captum.alignment.train --variant mamba1 --scale paper --device cuda --bf16 --out runs/align-m1

Writes ``model.safetensors``, ``config.json``, the tokenizer files, ``training_args.json``, ``metrics.json`` and
``trainer_state.pt``, from which ``--resume DIR --out NEW`` continues a run cut by ``--max-minutes``, ``--stop-at``
or SIGTERM as if it had not stopped (the saved run's recipe; this call's device, kernels, time and ``--stop-at``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..tasks.models import build_model
from ..tasks.training import (
    SCHEDULES,
    add_switch_arguments,
    add_training_arguments,
    autocast_for,
    check_device,
    continue_history,
    fill_from_preset,
    finish_switch_,
    given_options,
    make_optimizer,
    ready_model,
    restore_,
    resumed_args,
    run_fields,
    run_training,
    save_run,
    save_trainer_state,
    start_model,
    switch_stepper,
    switched_args,
    trainer_main,
)
from .data import TINY_TASK, AlignmentBatch, AlignmentTask

__all__ = ["PRESETS", "SWITCH_RECIPES", "evaluate_translation", "main", "task_of_scale", "train"]

_PAPER = dict(
    layers=8,
    d_model=512,
    mimetic_layers=[],
    steps=18_000,
    batch=64,
    lr=7e-4,
    warmup=2000,
    schedule="cosine",
    n_train=200_000,
    n_eval=256,
    eval_every=1000,
)
_TINY = dict(
    layers=2,
    d_model=64,
    mimetic_layers=[],
    steps=800,
    batch=32,
    lr=3e-3,
    warmup=80,
    schedule="cosine",
    n_train=4000,
    n_eval=128,
    eval_every=200,
)

#: per-scale, per-variant settings; command-line flags override any of them
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"mamba1": {**_PAPER, "state": 16}, "mamba2": {**_PAPER, "state": 128, "head_dim": 64}},
    "tiny": {"mamba1": {**_TINY, "state": 16}, "mamba2": {**_TINY, "state": 32, "head_dim": 16}},
}

#: the ``--switch-from`` recipe per scale (App. B.3's shape: warm-up, stable, and a decay on the new activation alone;
#: gradient clipping 5.0)
SWITCH_RECIPES: dict[str, dict] = {
    "paper": dict(steps=2000, warmup=100, decay=200, lr=2e-4, clip=5.0, schedule="wsd", eval_every=250),
    "tiny": dict(steps=400, warmup=20, decay=40, lr=1e-3, clip=5.0, schedule="wsd", eval_every=100),
}


def task_of_scale(scale: str) -> AlignmentTask:
    """The task a preset trains on: the full one for ``paper``, :data:`~.data.TINY_TASK` for ``tiny``."""
    return AlignmentTask() if scale == "paper" else AlignmentTask(**TINY_TASK)


def target_loss(logits: torch.Tensor, batch: AlignmentBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per-token cross-entropy, argmax-correct, row mask)`` on the rows that predict target words and ``<eos>``:
    row ``i`` against token ``i + 1``."""
    mask = batch.loss_mask().to(logits.device)[:, :-1]
    gold = batch.ids.to(logits.device)[:, 1:][mask]
    pred = logits[:, :-1][mask].float()
    return nn.functional.cross_entropy(pred, gold, reduction="none"), pred.argmax(-1) == gold, mask


@torch.no_grad()
def evaluate_translation(
    model: nn.Module,
    batch: AlignmentBatch,
    *,
    batch_size: int = 64,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Teacher-forced accuracy on the target part: ``{"token_acc", "exact_match", "loss"}``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = tokens = exact = 0
    loss_sum = 0.0
    try:
        for start in range(0, len(batch), batch_size):
            part = batch.select(list(range(start, min(len(batch), start + batch_size))))
            with autocast or contextlib.nullcontext():
                logits = model(input_ids=part.ids.to(device)).logits
            loss, ok, mask = target_loss(logits, part)
            correct += int(ok.sum())
            tokens += int(mask.sum())
            loss_sum += float(loss.sum())
            # per sample: every target row right (rows of other samples are False in the mask, so count them as ok)
            per_row = torch.ones_like(mask)
            per_row[mask] = ok
            exact += int(per_row.all(-1).sum())
    finally:
        model.train(was_training)
    return {"token_acc": correct / tokens, "exact_match": exact / len(batch), "loss": loss_sum / tokens}


def train(args: argparse.Namespace) -> dict:
    """Train, evaluate and save; returns the metrics dict (also written to ``metrics.json``)."""
    torch.manual_seed(args.seed)
    device = check_device(args.device)
    resume = Path(args.resume) if args.resume else None
    task = task_of_scale(args.scale)
    train_pairs, eval_pairs = task.splits(args.n_train, args.n_eval, seed=args.seed)
    train_batch, eval_batch = task.encode(train_pairs), task.encode(eval_pairs)
    model, state, switches = start_model(args, lambda: build_model(
        args.variant, layers=args.layers, d_model=args.d_model, state=args.state, vocab=task.vocab_size,
        head_dim=args.head_dim, seq_len=task.max_seq_len, act=args.act, special_id=task.pad_id,
    ))  # fmt: skip
    # a resumed or switched model keeps its trained weights: no mimetic initialisation
    ready_model(model, device, act=args.act, check_len=task.max_seq_len,
                mimetic_layers=args.mimetic_layers if resume is None else None,
                mimetic_a_scale=args.mimetic_a_scale, kernels=args.kernels, switches=switches)  # fmt: skip
    opt, sched = make_optimizer(
        model, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, schedule=args.schedule,
        steps=args.steps, decay=args.decay,
    )  # fmt: skip
    use_bf16, autocast = autocast_for(device, args.bf16)
    gen = torch.Generator().manual_seed(args.seed + 2)
    start = restore_(state, opt, sched, gen)  # a resumed run draws the batches the run would have drawn next

    def step_loss(step: int) -> torch.Tensor:
        part = train_batch.select(torch.randint(0, len(train_batch), (args.batch,), generator=gen))
        with autocast():
            logits = model(input_ids=part.ids.to(device, non_blocking=True)).logits
        return target_loss(logits, part)[0].mean()

    history = run_training(
        model,
        opt,
        sched,
        steps=args.steps,
        step_loss=step_loss,
        evaluate=lambda: evaluate_translation(model, eval_batch, autocast=autocast()),
        eval_every=args.eval_every,
        max_minutes=args.max_minutes,
        stop_at=args.stop_at,
        start=start,
        quiet=args.quiet,
        desc=f"train {args.variant}",
        before_step=switch_stepper(args, switches),
        clip=args.clip,
    )
    history = continue_history(state, history)
    final = history[-1]
    result = {
        "task_name": "alignment",
        **run_fields(args, device, use_bf16, final),
        "eval_loss": final["loss"],
        "task": task.to_dict(),
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "resumed_from": str(resume) if resume else None,
        "switch": finish_switch_(model, args, switches),
        "history": history,
    }
    save_run(model, task.tokenizer(), args.out, args, result)
    save_trainer_state(args.out, opt, sched, step=final["step"], minutes=final["minutes"], history=history,
                       generator=gen)  # fmt: skip
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latim_captum.alignment.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    overrides = [
        ("layers", int),
        ("d-model", int),
        ("state", int),
        ("head-dim", int),
        ("steps", int),
        ("batch", int),
        ("lr", float),
        ("warmup", int),
        ("n-train", int),
        ("n-eval", int),
        ("eval-every", int),
    ]
    add_training_arguments(p, PRESETS, overrides)
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="override the preset")
    add_switch_arguments(p, SWITCH_RECIPES)
    return p


def resolve_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    given = given_options(parser, argv)
    args = resumed_args(parser.parse_args(argv), parser, given=given)
    args = switched_args(args, parser, SWITCH_RECIPES, given=given)
    return fill_from_preset(args, {"head_dim": 64, **PRESETS[args.scale][args.variant]})


def main(argv: Sequence[str] | None = None) -> int:
    return trainer_main(resolve_args, train, argv)


if __name__ == "__main__":
    sys.exit(main())
