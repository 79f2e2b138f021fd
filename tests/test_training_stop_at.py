"""``--stop-at``: a training run cut at a step count with the schedule of ``--steps`` unchanged (the run that another,
cut by ``--max-minutes`` at that step, made), refused outside ``1..steps`` and by the retrieval trainer."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from latim_captum.tasks.training import run_training


def _toy(steps: int, stop_at: int | None, eval_every: int = 3):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    x = torch.randn(8, 2)

    def step_loss(step: int) -> torch.Tensor:
        return model(x).pow(2).mean()

    history = run_training(model, opt, sched, steps=steps, step_loss=step_loss,
                           evaluate=lambda: {"token_acc": 0.0, "exact_match": 0.0}, eval_every=eval_every,
                           stop_at=stop_at, quiet=True)  # fmt: skip
    return model, sched, history


def test_stop_at_keeps_the_schedule_of_steps():
    model, sched, history = _toy(steps=10, stop_at=4)
    assert [h["step"] for h in history] == [3, 4], "evaluated on schedule and at the cut"
    assert sched.last_epoch == 4
    assert sched.get_last_lr()[0] == pytest.approx(1.0 - 4 / 10), "the 10-step schedule, not a 4-step one"
    short_model, short_sched, _ = _toy(steps=4, stop_at=None)
    assert short_sched.get_last_lr()[0] == pytest.approx(0.0)
    assert not torch.allclose(model.weight, short_model.weight), "a cut run is not a shorter recipe"
    whole, _, whole_history = _toy(steps=10, stop_at=10)
    plain, _, plain_history = _toy(steps=10, stop_at=None)
    torch.testing.assert_close(whole.weight, plain.weight)
    assert [h["step"] for h in whole_history] == [h["step"] for h in plain_history] == [3, 6, 9, 10]


@pytest.mark.parametrize("stop_at", [0, 11])
def test_stop_at_outside_the_schedule_is_refused(stop_at):
    with pytest.raises(ValueError, match=r"stop_at must be in 1\.\.10"):
        _toy(steps=10, stop_at=stop_at)


def test_alignment_trainer_stops_and_records_both_step_counts(tmp_path, capsys):
    from latim_captum.alignment.train import main

    argv = ["--variant", "mamba2", "--steps", "4", "--n-train", "16", "--n-eval", "4", "--batch", "4", "--layers", "1",
            "--d-model", "16", "--head-dim", "8", "--state", "4", "--eval-every", "3", "--warmup", "1", "--quiet"]
    out = tmp_path / "cut"
    assert main([*argv, "--out", str(out), "--stop-at", "2"]) == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["steps"] == 2 and meta["schedule_steps"] == 4
    assert [h["step"] for h in meta["history"]] == [2]
    assert json.loads((out / "training_args.json").read_text())["stop_at"] == 2
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--stop-at", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error:") and "stop_at must be in 1..4" in err and len(err.splitlines()) == 1


def test_retrieval_trainer_refuses_stop_at(tmp_path, capsys):
    from latim_captum.retrieval.train import main

    argv = ["--variant", "mamba2", "--out", str(tmp_path / "r"), "--steps", "2", "--n-eval", "1", "--tokens-per-batch",
            "192", "--lengths", "96", "--layers", "1", "--d-model", "16", "--head-dim", "8", "--state", "4",
            "--quiet", "--stop-at", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--stop-at is for the copy and alignment trainers" in err
    assert not (tmp_path / "r").exists()
