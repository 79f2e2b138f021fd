"""Train a Mamba-1 / Mamba-2 copy model (LaTIM App. B.1) with HF ``MambaForCausalLM`` / ``Mamba2ForCausalLM``.

Paper scale (``--scale paper``): 8 layers, d_model 512, vocab 32, state 16 (Mamba-1) / 128 (Mamba-2), mimetic
initialisation in layer 4 only, AdamW lr 7e-4, inverse-square-root schedule with 500 warm-up steps, 5,000 steps,
batch 256, 128 evaluation samples of a 50-token string, no dropout, no clipping. Training strings: 500,000 fresh
ones by default instead of the paper's 5,000, which our Mamba-1 memorises (see ``PAPER_N_TRAIN``). The embedding
holds the task's ``vocab`` tokens and two more that no sample holds (``<pad>``, the config's pad and BOS, and
``<unk>``; no EOS: a copy string has a fixed length): the separator stays an ordinary token, which Inseq and Captum
label (since 2026-12-05; models trained before have ``vocab`` rows and the separator as pad).

Loss: next-token cross-entropy on the copy part only — the rows ``L..2L-1`` whose next token is a copied token
(the source is random, so its tokens cannot be predicted and would only add noise to the loss).

Accuracy (teacher forcing, on the held-out set): ``token_acc`` = share of copied tokens whose argmax is right;
``exact_match`` = share of samples with every copied token right. Teacher-forced exact match equals greedy
generation's exact match: if every argmax is right the greedy decode never leaves the gold prefix.

Activation variants (the paper's Table 5): ``--act silu|relu|linear`` sets HF's ``hidden_act`` (the conv activation;
``linear`` removes it) with the same recipe and seed. mamba-ssm's and causal-conv1d's kernels only apply SiLU, so a
``relu``/``linear`` model is checked against the PyTorch forward before training and needs ``--kernels off`` on a
GPU with the kernels (:mod:`latim_captum.tasks.models`). ``--switch-from DIR --act relu|linear|silu`` makes them the
paper's way instead: it continues the SiLU model trained in DIR while the activation switches gradually
(:data:`SWITCH_RECIPES`, :mod:`latim_captum.tasks.switch`). A Mamba-2 model of any activation also trains on a GPU
without mamba-ssm with ``--kernels dual`` (the scan's quadratic form in PyTorch, :mod:`latim_captum.tasks.unfused`;
the Table 5 models of 2026-12-06 were trained so).

Usage::

    python -m latim_captum.copying.train --variant mamba2 --scale tiny --out runs/m2
    python -m latim_captum.copying.train --variant mamba1 --scale paper --device cuda --bf16 --out runs/m1-paper
    python -m latim_captum.copying.train --variant mamba2 --scale paper --act linear --kernels off --out runs/m2-lin
    python -m latim_captum.copying.train --variant mamba2 --scale paper --device cuda --bf16 --kernels dual \
        --out runs/m2-paper      # no mamba-ssm needed

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

from ..tasks.models import build_model as _build_model
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
    inverse_sqrt,
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
from .data import CopyTask, copy_tokenizer, model_vocab_size

__all__ = ["PRESETS", "SWITCH_RECIPES", "build_model", "evaluate_copy", "inverse_sqrt", "main", "train"]

# The paper's 5,000 fixed training strings are memorised, not copied, by our 8-layer Mamba-1 (held-out accuracy at
# chance; benchmarks/results/gpu-session-2026-11-23.md); fresh strings (500,000, each seen ~2.5 times) make the models
# learn to copy. Pass --n-train 5000 for the paper's literal setting.
PAPER_N_TRAIN = 500_000

# per-scale settings shared by both variants; the variants differ only in state size (and Mamba-2's head size)
_PAPER = dict(
    layers=8,
    d_model=512,
    length=50,
    vocab=32,
    mimetic_layers=[3],
    steps=5000,
    batch=256,
    lr=7e-4,
    warmup=500,
    schedule="inverse_sqrt",
    n_train=PAPER_N_TRAIN,
    n_eval=128,
    eval_every=500,
)
_TINY = dict(
    layers=2,
    d_model=64,
    length=10,
    vocab=16,
    mimetic_layers=[1],
    steps=1500,
    batch=64,
    lr=3e-3,
    warmup=100,
    schedule="inverse_sqrt",
    n_train=5000,
    n_eval=128,
    eval_every=250,
)

# per-scale, per-variant settings; command-line flags override any of them
PRESETS: dict[str, dict[str, dict]] = {
    "paper": {"mamba1": {**_PAPER, "state": 16}, "mamba2": {**_PAPER, "state": 128, "head_dim": 64}},
    "tiny": {"mamba1": {**_TINY, "state": 16}, "mamba2": {**_TINY, "state": 32, "head_dim": 16}},
}

#: the ``--switch-from`` recipe per scale (App. B.3's shape: warm-up, stable, and a decay on the new activation alone;
#: gradient clipping 5.0), shorter than the paper's 33,000 steps as the copy models are (5,000 steps)
SWITCH_RECIPES: dict[str, dict] = {
    "paper": dict(steps=2000, warmup=100, decay=200, lr=2e-4, clip=5.0, schedule="wsd", eval_every=250),
    "tiny": dict(steps=600, warmup=30, decay=60, lr=1e-3, clip=5.0, schedule="wsd", eval_every=100),
}


def build_model(
    variant: str,
    *,
    layers: int,
    d_model: int,
    state: int,
    vocab: int,
    head_dim: int = 64,
    length: int = 50,
    act: str = "silu",
) -> nn.Module:
    """A fresh HF causal LM for copy strings of ``length`` symbols over a task vocabulary of ``vocab`` tokens
    (:func:`latim_captum.tasks.models.build_model` with ``2L + 1`` tokens): its embedding holds the task's tokens,
    then :data:`~.data.PAD` (the config's pad and BOS, never in a sample) and :data:`~.data.UNK`, as
    :func:`~.data.copy_tokenizer` numbers them; no EOS."""
    model = _build_model(
        variant, layers=layers, d_model=d_model, state=state, vocab=model_vocab_size(vocab), head_dim=head_dim,
        seq_len=2 * length + 1, act=act, special_id=vocab,
    )  # fmt: skip
    # no EOS: a copy string has a fixed length, and an EOS equal to the pad token keeps HF's generate from telling a
    # left-padded batch's padding from its text (it cannot infer the attention mask), so the padding would be read
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    return model


@torch.no_grad()
def evaluate_copy(
    model: nn.Module,
    task: CopyTask,
    ids: torch.Tensor,
    batch: int = 128,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, float]:
    """Teacher-forced copy accuracy: ``{"token_acc", "exact_match", "loss"}`` on ``ids`` ``[n, 2L+1]``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = torch.tensor(list(task.query_rows), device=device)
    correct, exact, loss_sum = 0, 0, 0.0
    try:
        for start in range(0, ids.shape[0], batch):
            x = ids[start : start + batch].to(device)
            with autocast or contextlib.nullcontext():
                logits = model(input_ids=x).logits
            pred_logits = logits[:, rows].float()
            gold = x[:, rows + 1]
            ok = pred_logits.argmax(-1) == gold
            correct += int(ok.sum())
            exact += int(ok.all(-1).sum())
            loss_sum += float(nn.functional.cross_entropy(pred_logits.flatten(0, 1), gold.flatten(), reduction="sum"))
    finally:
        model.train(was_training)
    n_tok = ids.shape[0] * len(rows)
    return {"token_acc": correct / n_tok, "exact_match": exact / ids.shape[0], "loss": loss_sum / n_tok}


def train(args: argparse.Namespace) -> dict:
    """Train, evaluate and save; returns the metrics dict (also written to ``metrics.json``)."""
    torch.manual_seed(args.seed)
    device = check_device(args.device)
    resume = Path(args.resume) if args.resume else None
    task = CopyTask(length=args.length, vocab_size=args.vocab)
    train_ids, eval_ids = task.splits(args.n_train, args.n_eval, seed=args.seed)
    model, state, switches = start_model(args, lambda: build_model(
        args.variant, layers=args.layers, d_model=args.d_model, state=args.state, vocab=args.vocab,
        head_dim=args.head_dim, length=args.length, act=args.act,
    ))  # fmt: skip
    # a resumed or switched model keeps its trained weights: no mimetic initialisation
    ready_model(model, device, act=args.act, check_len=task.seq_len,
                mimetic_layers=args.mimetic_layers if resume is None else None,
                mimetic_a_scale=args.mimetic_a_scale, kernels=args.kernels, switches=switches)  # fmt: skip
    opt, sched = make_optimizer(
        model, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup, schedule=args.schedule,
        steps=args.steps, decay=args.decay,
    )  # fmt: skip
    use_bf16, autocast = autocast_for(device, args.bf16)
    rows = torch.tensor(list(task.query_rows), device=device)
    gen = torch.Generator().manual_seed(args.seed + 2)
    start = restore_(state, opt, sched, gen)  # a resumed run draws the batches the run would have drawn next

    def step_loss(step: int) -> torch.Tensor:
        idx = torch.randint(0, train_ids.shape[0], (args.batch,), generator=gen)
        x = train_ids[idx].to(device, non_blocking=True)
        with autocast():
            logits = model(input_ids=x).logits
        return nn.functional.cross_entropy(logits[:, rows].float().flatten(0, 1), x[:, rows + 1].flatten())

    history = run_training(
        model,
        opt,
        sched,
        steps=args.steps,
        step_loss=step_loss,
        evaluate=lambda: evaluate_copy(model, task, eval_ids, autocast=autocast()),
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
        **run_fields(args, device, use_bf16, final),
        "eval_loss": final["loss"],
        "task": task.to_dict(),
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "resumed_from": str(resume) if resume else None,
        "switch": finish_switch_(model, args, switches),
        "history": history,
    }
    save_run(model, copy_tokenizer(args.vocab), args.out, args, result)
    save_trainer_state(args.out, opt, sched, step=final["step"], minutes=final["minutes"], history=history,
                       generator=gen)  # fmt: skip
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m latim_captum.copying.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    overrides = [
        ("layers", int),
        ("d-model", int),
        ("state", int),
        ("length", int),
        ("vocab", int),
        ("steps", int),
        ("batch", int),
        ("lr", float),
        ("warmup", int),
        ("n-train", int),
        ("n-eval", int),
        ("eval-every", int),
        ("head-dim", int),
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
