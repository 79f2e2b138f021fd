"""``--resume DIR`` for the copy and alignment trainers: a run cut by ``--stop-at`` (or ``--max-minutes``) and
resumed ends where the uncut run ends, weights and all; what a resumed run refuses."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

_SMALL = ["--layers", "2", "--d-model", "16", "--head-dim", "8", "--state", "4", "--warmup", "2", "--quiet"]
_COPY = ["--variant", "mamba2", "--steps", "6", "--n-train", "64", "--n-eval", "8", "--batch", "8",
         "--eval-every", "4", *_SMALL]  # fmt: skip
_ALIGN = ["--variant", "mamba1", "--steps", "6", "--n-train", "16", "--n-eval", "4", "--batch", "4",
          "--eval-every", "4", *_SMALL]  # fmt: skip


def _trainer(name: str):
    if name == "copy":
        from latim_captum.copying.train import main

        return main, _COPY
    from latim_captum.alignment.train import main

    return main, _ALIGN


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("task", ["copy", "alignment"])
def test_a_cut_and_resumed_run_ends_as_the_uncut_run(task, tmp_path):
    main, argv = _trainer(task)
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    assert main([*argv, "--out", str(tmp_path / "cut"), "--stop-at", "3"]) == 0
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["steps"] == 3 and (tmp_path / "cut" / "trainer_state.pt").is_file()
    # the resumed call names only the folder (and its own output): the recipe comes from the saved run
    resume = ["--variant", argv[1], "--resume", str(tmp_path / "cut"), "--out", str(tmp_path / "on"), "--quiet"]
    assert main(resume) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "on" / "metrics.json").read_text())
    # the optimiser's moments, the schedule and the batch generator continue: the same weights as the uncut run
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "on")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    cut_weights = _weights(tmp_path / "cut")
    assert any(not torch.equal(cut_weights[k], a[k]) for k in a), "the resumed run trained"
    assert resumed["steps"] == whole["steps"] == 6 and resumed["resumed_from"] == str(tmp_path / "cut")
    assert [h["step"] for h in whole["history"]] == [4, 6]
    assert [h["step"] for h in resumed["history"]] == [3, 4, 6], "the cut's evaluation, then the run's own"
    assert resumed["eval_token_acc"] == whole["eval_token_acc"]
    assert resumed["history"][-1]["minutes"] >= cut["history"][-1]["minutes"], "minutes count from the run's start"
    assert json.loads((tmp_path / "on" / "training_args.json").read_text())["n_train"] == int(argv[5])


def test_resume_refusals_are_one_line(tmp_path, capsys):
    main, argv = _trainer("copy")
    assert main([*argv, "--out", str(tmp_path / "cut"), "--stop-at", "3"]) == 0
    assert main([*argv, "--out", str(tmp_path / "done")]) == 0
    capsys.readouterr()
    base = ["--variant", "mamba2", "--out", str(tmp_path / "x"), "--quiet"]

    def error(*extra: str) -> str:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("train: error:") and len(err.splitlines()) == 1, err
        return err

    assert "stop_at must be in 4..6" in error("--resume", str(tmp_path / "cut"), "--stop-at", "2")
    assert "nothing to resume" in error("--resume", str(tmp_path / "done"))
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "training_args.json").write_text(json.dumps({"variant": "mamba2"}))
    assert "no trainer_state.pt there" in error("--resume", str(tmp_path / "bare"))
    other = ["--variant", "mamba1", "--resume", str(tmp_path / "cut"), "--out", str(tmp_path / "y"), "--quiet"]
    assert main(other) == 2
    assert "holds a mamba2 model, not mamba1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # an option of the recipe given again with another value is refused, not dropped in silence
    with pytest.raises(SystemExit, match=r"continues the saved run's recipe; drop --lr 1\.0 \(the run's: "):
        main([*base, "--resume", str(tmp_path / "cut"), "--lr", "1.0"])
    with pytest.raises(SystemExit, match=r"drop --act relu \(the run's: silu\)"):
        main([*base, "--resume", str(tmp_path / "cut"), "--act", "relu"])
    # given with the parser's default, it is still given: a run saved with seed 3 does not resume as "--seed 0"
    assert main([*argv, "--seed", "3", "--out", str(tmp_path / "seed3"), "--stop-at", "3"]) == 0
    with pytest.raises(SystemExit, match=r"drop --seed 0 \(the run's: 3\)"):
        main([*base, "--resume", str(tmp_path / "seed3"), "--seed", "0"])
    # the same value, or a call setting, is fine: it resumes
    assert main([*base, "--resume", str(tmp_path / "cut"), "--steps", "6", "--stop-at", "5"]) == 0
    assert json.loads((tmp_path / "x" / "metrics.json").read_text())["steps"] == 5


def test_sigterm_ends_the_run_after_the_step_and_it_is_saved(tmp_path, monkeypatch):
    """``timeout`` sends SIGTERM: the trainer stops after the step it is in, evaluates and saves a resumable run
    (killed outright, a device call's trainer had left nothing); the handler is put back after."""
    import os
    import signal

    from latim_captum.copying import train as copy_train

    main, argv = _trainer("copy")
    real = copy_train.run_training

    def run_training(*args, step_loss, **kwargs):
        def loss_then_term(step: int):
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 1: the loop finishes it, then stops
            return step_loss(step)

        return real(*args, step_loss=loss_then_term, **kwargs)

    monkeypatch.setattr(copy_train, "run_training", run_training)
    before = signal.getsignal(signal.SIGTERM)
    assert main([*argv, "--out", str(tmp_path / "term")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    meta = json.loads((tmp_path / "term" / "metrics.json").read_text())
    assert meta["steps"] == 2 and meta["schedule_steps"] == 6 and [h["step"] for h in meta["history"]] == [2]
    assert (tmp_path / "term" / "trainer_state.pt").is_file()


def test_given_options_are_those_on_the_command_line():
    import argparse

    from latim_captum.tasks.training import given_options

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--bf16", action="store_true")
    assert given_options(parser, ["--seed", "0", "--bf16"]) == {"seed", "bf16"}
    assert given_options(parser, []) == set()
    # the parser's defaults are back afterwards
    assert vars(parser.parse_args([])) == {"seed": 0, "lr": None, "bf16": False}

