"""The training recipe the task trainers share: optimiser, learning-rate schedules, the step loop, saving a run.

The trainers (:mod:`latim_captum.copying.train`, :mod:`latim_captum.alignment.train`,
:mod:`latim_captum.retrieval.train`) build a model with :func:`~latim_captum.tasks.models.build_model`, ready it with
:func:`ready_model`, optimise it with AdamW under a warm-up schedule, evaluate on their held-out set every
``eval_every`` steps (and at the end, or when ``--max-minutes`` runs out), and write the same folder:
``model.safetensors`` (15 MB shards), ``config.json``, the tokenizer, ``training_args.json`` and ``metrics.json``
(whose common fields are :func:`run_fields`), and ``trainer_state.pt`` (:func:`save_trainer_state`: optimiser,
schedule, the batch generator, step and history), from which ``--resume DIR`` continues a run cut by
``--max-minutes`` or ``--stop-at`` as if it had not stopped (:func:`load_resume`, :func:`resumed_args`).

Schedules (``step`` counted from 1, factor of the base learning rate):

- ``inverse_sqrt`` (Vaswani et al., 2017; the paper's copy recipe, App. B.1): ``min(step/warmup, sqrt(warmup/step))``;
- ``cosine`` (the paper's MT recipe, App. B.2): ``step/warmup`` during warm-up, then
  ``½(1 + cos(π·(step − warmup)/(total − warmup)))`` down to 0 at ``total``;
- ``wsd`` (warm-up–stable–decay, Hu et al., 2024; the paper's continued training, App. B.3): ``step/warmup``, then 1,
  then ``(total − step + 1)/decay`` over the last ``decay`` steps, down to ``1/decay`` at ``total`` (each of them
  trains).

``--switch-from DIR`` (:func:`add_switch_arguments`, :func:`switched_args`) continues a trained SiLU model's run while
its conv activation switches to ``--act`` (:mod:`latim_captum.tasks.switch`).

Example:
    >>> f = cosine(warmup=2, total=6)
    >>> [round(f(s), 3) for s in range(6)]
    [0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
    >>> [round(wsd(warmup=2, total=6, decay=3)(s), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 1.0, 0.667, 0.333]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .._environment import device_name
from .models import (
    HIDDEN_ACTS,
    block_kernels,
    check_conv_kernel_layout,
    check_device_forward,
    mamba_mixers,
    prepare_for_kernels_,
)
from .switch import SWITCH_FROM, SwitchActivation, mark_cut_, set_alpha_, switch_alpha, uncut_

__all__ = [
    "SCHEDULES",
    "add_switch_arguments",
    "add_training_arguments",
    "autocast_for",
    "check_device",
    "continue_history",
    "cosine",
    "fill_from_preset",
    "inverse_sqrt",
    "make_optimizer",
    "ready_model",
    "run_fields",
    "given_options",
    "resumed_args",
    "load_resume",
    "restore_",
    "run_training",
    "save_run",
    "save_trainer_state",
    "finish_switch_",
    "load_trained",
    "start_model",
    "switch_stepper",
    "switched_args",
    "wsd",
]

#: the file a run's optimiser, schedule, batch generator, step and history are saved in, for ``--resume``
TRAINER_STATE = "trainer_state.pt"

#: what a resumed run takes from its own command line; the rest comes from the saved run's ``training_args.json``
CALL_SETTINGS: tuple[str, ...] = (
    "variant", "out", "resume", "device", "bf16", "kernels", "quiet", "max_minutes", "stop_at",
)  # fmt: skip

SCHEDULES: tuple[str, ...] = ("inverse_sqrt", "cosine", "wsd")

#: the options a ``--switch-from`` run sets itself; every other recipe option is the source run's
SWITCH_OWN: tuple[str, ...] = (
    "steps", "lr", "warmup", "decay", "clip", "schedule", "act", "eval_every", "mimetic_layers", "switch_from",
)  # fmt: skip


def inverse_sqrt(warmup: int) -> Callable[[int], float]:
    """``lr(step) = lr · min(step / warmup, sqrt(warmup / step))`` (Vaswani et al., 2017), step counted from 1."""

    def factor(step: int) -> float:
        s = step + 1
        return min(s / warmup, math.sqrt(warmup / s))

    return factor


def cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to the base rate over ``warmup`` steps, then a cosine decay to 0 at step ``total``."""

    def factor(step: int) -> float:
        s = step + 1
        if s <= warmup:
            return s / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def wsd(warmup: int, total: int, decay: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, the base rate, then over the last ``decay`` steps a linear decay from
    the base rate down to ``1/decay`` of it at step ``total`` (no step at rate 0: a decay phase of one step trains);
    ``ValueError`` unless ``decay >= 1`` and ``warmup + decay <= total``."""
    if decay is None or decay < 1 or warmup + decay > total:
        raise ValueError(f"wsd needs --decay >= 1 and warmup + decay <= steps, got {warmup} + {decay} of {total}")

    def factor(step: int) -> float:
        s = step + 1
        if s <= warmup:
            return s / warmup
        return 1.0 if s <= total - decay else max(0.0, (total - s + 1) / decay)

    return factor


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    warmup: int,
    schedule: str = "inverse_sqrt",
    steps: int,
    decay: int | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and its per-step scheduler (:data:`SCHEDULES`; ``decay``: ``wsd``'s decay steps, refused for another
    schedule, which would ignore it)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if decay is not None and schedule != "wsd":
        raise ValueError(f"--decay {decay} is the wsd schedule's decay; this run's schedule is {schedule}")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 step, got {warmup}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "wsd":
        factor = wsd(warmup, steps, decay)
    else:
        factor = inverse_sqrt(warmup) if schedule == "inverse_sqrt" else cosine(warmup, steps)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def check_device(name: str) -> torch.device:
    """``torch.device(name)``; ``ValueError`` for CUDA on a machine without it."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but CUDA is not available")
    return device


def autocast_for(device: torch.device, bf16: bool) -> tuple[bool, Callable[[], contextlib.AbstractContextManager]]:
    """``(bf16 in use, context factory)``: bf16 autocast on CUDA when asked, nothing otherwise."""
    use = bf16 and device.type == "cuda"
    return use, ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use else contextlib.nullcontext)


def ready_model(
    model: nn.Module,
    device: torch.device,
    *,
    act: str,
    check_len: int,
    mimetic_layers: list[int] | None = None,
    mimetic_a_scale: float = 1e-2,
    kernels: str = "auto",
    switches: list[SwitchActivation] | None = None,
) -> nn.Module:
    """A freshly built (or resumed) model made ready to train on ``device``, in train mode: mimetic initialisation of
    ``mimetic_layers`` (a fresh model only), the conv weights' layout checked for causal-conv1d on CUDA, and a model
    without SiLU prepared for mamba-ssm's kernels with its device forward and gradients compared with the PyTorch
    ones on ``check_len`` tokens (the kernels' activation must be the model's). ``kernels="unfused"``: the mixers
    train on the unfused kernels with the model's own activation (:mod:`latim_captum.tasks.unfused`), compared
    likewise. ``kernels="dual"`` (Mamba-2 only): no kernels, the scan in its quadratic form
    (:data:`~latim_captum.tasks.unfused.DUAL_OPS`), on any device, any activation and with ``switches``; compared
    likewise on CUDA.

    ``switches`` (a ``--switch-from`` run, :func:`~latim_captum.tasks.switch.install_switch_`): the mixers always
    run the unfused forward, which applies their blended ``act`` (the kernels on CUDA, ``kernels="off"`` refused; the
    plain-PyTorch references on the CPU). On CUDA it is compared with HF's PyTorch path at ``α = 1`` (the model the
    run ends as, which HF computes); on the CPU both sides of that check are the unfused forward on the references,
    which ``tests/test_switch.py`` compares with HF's models at ``α = 0`` and ``1``. Left at ``α = 0``."""
    if mimetic_layers:
        from ..copying.mimetic import mimetic_init_

        mimetic_init_(model, mimetic_layers, a_scale=mimetic_a_scale)
    if device.type == "cuda":
        check_conv_kernel_layout(model)
    if kernels == "dual":
        from .unfused import DUAL_OPS, install_unfused_forward_

        if any(type(m).__name__ != "Mamba2Mixer" for m in mamba_mixers(model)):
            raise ValueError("--kernels dual is Mamba-2's scan in its quadratic form: give --variant mamba2")
        # on CUDA the CPU side of the device check stays HF's own forward; on the CPU the check has no other side
        install_unfused_forward_(model, DUAL_OPS, on_cpu=device.type != "cuda")
    elif switches and device.type != "cuda":
        from .unfused import REFERENCE_OPS, install_unfused_forward_

        install_unfused_forward_(model, REFERENCE_OPS, on_cpu=True)
    elif kernels == "unfused" or switches:
        from .unfused import install_unfused_forward_, kernel_ops

        if device.type != "cuda":
            raise ValueError("--kernels unfused runs mamba-ssm's CUDA kernels: give --device cuda")
        if kernels == "off":
            raise ValueError("--switch-from trains on the unfused kernels (HF's PyTorch path applies the named "
                             "activation, not the blend): drop --kernels off")  # fmt: skip
        try:
            ops = kernel_ops()
        except ImportError as err:  # the trainers' one-line error, as for every refused argument
            raise ValueError(str(err)) from err
        install_unfused_forward_(model, ops)
    if act != "silu" or kernels in ("unfused", "dual") or switches:
        prepare_for_kernels_(model)
        set_alpha_(switches or [], 1.0)
        remedy = ("report it" if kernels == "dual"
                  else "the switch trains on the unfused kernels only: report it" if switches
                  else "train it with --kernels off")  # fmt: skip
        check = check_device_forward(model, device, seq_len=check_len, remedy=remedy)
        set_alpha_(switches or [], 0.0)
        if device.type == "cuda":  # the CPU's check compares a path with itself: nothing to report
            print(f"device check: logits within {check.logits:.1e}, gradients within {check.grads:.1e} (relative) of "
                  "HF's PyTorch path", file=sys.stderr)  # fmt: skip
    return model.to(device).train()


def run_fields(args: argparse.Namespace, device: torch.device, bf16: bool, final: dict) -> dict:
    """The ``metrics.json`` fields every trainer writes first: the run's settings and its last evaluation."""
    return {
        "variant": args.variant,
        "scale": args.scale,
        "act": args.act,
        "steps": final["step"],
        "schedule_steps": args.steps,  # the learning-rate schedule's length; more than "steps" for a run cut short
        "seed": args.seed,
        "device": device_name(device),
        "bf16": bf16,
        "minutes": final["minutes"],
        "eval_token_acc": final["token_acc"],
        "eval_exact_match": final["exact_match"],
    }


def run_training(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    steps: int,
    step_loss: Callable[[int], torch.Tensor],
    evaluate: Callable[[], dict],
    eval_every: int,
    max_minutes: float | None = None,
    stop_at: int | None = None,
    start: int = 0,
    quiet: bool = False,
    desc: str = "train",
    before_step: Callable[[int], None] | None = None,
    clip: float | None = None,
) -> list[dict]:
    """The step loop: ``step_loss(step)`` (forward and loss of one batch), backward, AdamW and scheduler steps;
    ``evaluate()`` every ``eval_every`` steps, at the end and when ``max_minutes`` runs out, ``stop_at`` steps are
    done or the process gets SIGTERM (it then returns after the current step, so that the caller saves the run).
    ``stop_at`` cuts the run at a step count with the schedule of ``steps`` unchanged: the run another one cut by
    ``max_minutes`` at that step made, for comparing models of one recipe (Table 5's activations). ``start``: the
    steps a resumed run made before (:func:`restore_`); steps count from the run's start, minutes from this call's.
    ``before_step(step)`` runs before each step's forward (a switch's ``α``); ``clip``: the gradients' largest norm.

    Raises:
        ValueError: ``stop_at`` outside ``start + 1..steps``, or ``start`` not below ``steps``.

    Returns:
        the evaluation history, one ``{"step", "train_loss", **evaluate(), "minutes"}`` per evaluation.
    """
    from tqdm.auto import tqdm

    if not 0 <= start < steps:
        raise ValueError(f"the run has made {start} of its {steps} steps: nothing to resume")
    if clip is not None and not clip > 0:
        raise ValueError(f"--clip must be > 0 (the gradients' largest norm), got {clip}")
    if stop_at is not None and not start + 1 <= stop_at <= steps:
        raise ValueError(f"stop_at must be in {start + 1}..{steps} (the schedule's steps), got {stop_at}")
    history: list[dict] = []
    terminated = _TermFlag()
    t0 = time.time()
    bar = tqdm(range(start, steps), desc=desc, disable=quiet, initial=start, total=steps)
    with terminated:
        for step in bar:
            if before_step is not None:
                before_step(step)
            loss = step_loss(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
            done = step + 1
            out_of_time = max_minutes is not None and time.time() - t0 > 60 * max_minutes
            stopped = stop_at is not None and done == stop_at
            if done % eval_every == 0 or done == steps or out_of_time or stopped or terminated.seen:
                metrics = evaluate()
                minutes = (time.time() - t0) / 60
                history.append({"step": done, "train_loss": loss.item(), **metrics, "minutes": minutes})
                bar.write(
                    f"step {done}: loss {loss.item():.4f} eval token acc {metrics['token_acc']:.4f} "
                    f"exact {metrics['exact_match']:.4f}"
                )
            if terminated.seen:
                bar.write(f"stopping at step {done}: SIGTERM (a time limit such as timeout's)")
                break
            if out_of_time:
                bar.write(f"stopping at step {done}: --max-minutes {max_minutes} reached")
                break
            if stopped:
                bar.write(f"stopping at step {done} of the schedule's {steps}: --stop-at")
                break
    bar.close()
    return history


class _TermFlag:
    """While entered (main thread only), SIGTERM sets ``seen`` instead of killing the process, so that the step loop
    ends after the current step and the run is evaluated and saved (and can be resumed): a trainer cut by
    ``timeout`` keeps its steps. The previous handler is put back on exit."""

    def __init__(self) -> None:
        self.seen = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.seen = True

    def __enter__(self) -> _TermFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def save_run(model: nn.Module, tokenizer, out: str | Path, args: argparse.Namespace, result: dict) -> Path:
    """Write the model (CPU, float32, 15 MB shards), tokenizer, ``training_args.json`` and ``metrics.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # 15 MB shards: every file of a paper-scale model (54 MB in fp32) fits size-limited transfers and LFS-free hosting
    model.eval().to("cpu").save_pretrained(out, safe_serialization=True, max_shard_size="15MB")
    tokenizer.save_pretrained(out)
    (out / "training_args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return out


def save_trainer_state(
    out: str | Path,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    step: int,
    minutes: float,
    history: list[dict],
    generator: torch.Generator | None = None,
    **extra: object,
) -> Path:
    """Write ``out/trainer_state.pt``: what :func:`restore_` needs to continue the run as if it had not stopped (the
    optimiser's moments, the schedule's position, the batch generator's state), and its step, minutes and history.
    ``extra``: a trainer's own fields (numbers, strings, lists or tensors: read back with ``weights_only``)."""
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "minutes": minutes}
    state["history"] = history
    if generator is not None:
        state["generator"] = generator.get_state()
    path = Path(out) / TRAINER_STATE
    torch.save({**state, **extra}, path)
    return path


def continue_history(state: dict, history: list[dict]) -> list[dict]:
    """A resumed run's whole evaluation history: the saved run's, then this call's (from :func:`run_training` with
    ``start``: its steps count from the run's start already) with the saved minutes added to its own."""
    before = float(state.get("minutes", 0.0))
    return list(state.get("history", [])) + [{**entry, "minutes": entry["minutes"] + before} for entry in history]


def load_resume(path: str | Path, variant: str) -> tuple[nn.Module, dict, dict]:
    """``(model, trainer state, metrics.json)`` of the run saved in ``path``, the model in float32 on the CPU.

    Raises:
        ValueError: no ``trainer_state.pt`` there, or a model of another variant.
    """
    path = Path(path)
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise ValueError(f"--resume {path}: no {TRAINER_STATE} there (not a folder written by a task trainer)")
    model, meta = load_trained(path, variant, flag="--resume")
    # tensors, numbers, strings and lists only: no pickled objects from a folder that may not be ours
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    return model, state, meta


def load_trained(path: str | Path, variant: str, *, flag: str = "--switch-from") -> tuple[nn.Module, dict]:
    """``(model, metrics.json)`` of a task trainer's folder, the model in float32 on the CPU; ``ValueError`` for a
    folder without ``metrics.json`` or a model of another variant (``flag`` names the option in the message)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .._loading import pretrained_kwargs

    path = Path(path)
    if not (path / "metrics.json").is_file():
        raise ValueError(f"{flag} {path}: no metrics.json there (not a folder written by a task trainer)")
    meta = json.loads((path / "metrics.json").read_text())
    if meta.get("variant") != variant:
        raise ValueError(f"{flag} {path} holds a {meta.get('variant')} model, not {variant}")
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a trainer's output is its step lines (and its one error line)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        uncut_(config)  # a run cut mid-switch, to be resumed: built with its new activation, the switch goes on it
        kwargs = pretrained_kwargs(path)
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32, **kwargs)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model, meta


def restore_(
    state: dict,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator | None = None,
) -> int:
    """Load a saved run's optimiser, schedule and batch generator (an empty ``state``: a fresh run, nothing to load);
    returns the steps it made. ``ValueError`` for a state without the generator a trainer draws its batches from."""
    if not state:
        return 0
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if generator is not None:
        if "generator" not in state:
            raise ValueError(f"the saved {TRAINER_STATE} has no batch generator state: it cannot be resumed")
        generator.set_state(state["generator"])
    return int(state["step"])


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """The ``dest`` of every option on the command line ``argv`` (``sys.argv[1:]`` for None), whatever its value:
    ``--seed 0`` is given though 0 is the default, so a resumed run whose seed was 1 refuses it rather than drop it.

    Example:
        >>> p = argparse.ArgumentParser(); _ = p.add_argument("--seed", type=int, default=0)
        >>> given_options(p, ["--seed", "0"]), given_options(p, [])
        ({'seed'}, set())
    """
    defaults = {action: action.default for action in parser._actions}
    try:
        for action in defaults:
            action.default = argparse.SUPPRESS  # an option not given leaves no attribute
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in defaults.items():
            action.default = default
    return set(vars(given))


def resumed_args(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    optional: tuple[str, ...] = (),
    *,
    given: set[str] | None = None,
) -> argparse.Namespace:
    """``args`` with a ``--resume DIR`` run's saved arguments (``DIR/training_args.json``), but for the call's
    settings (:data:`CALL_SETTINGS`) and, where given, ``optional`` ones; unchanged without ``--resume``.

    Any other option given with a value unlike the saved run's is refused: the run continues its own recipe, and a
    flag that would be dropped in silence (``--lr``, ``--act``, ``--seed``) is an error, not a no-op. ``given``: the
    options on the command line (:func:`given_options`), so that one given with its default value (``--seed 0``)
    counts too; without it, an option counts as given when its value is not the default.

    Raises:
        SystemExit: no saved arguments in the folder, or options that contradict them (one line, named).
    """
    if not getattr(args, "resume", None):
        return args
    saved_file = Path(args.resume) / "training_args.json"
    if not saved_file.is_file():
        raise SystemExit(f"--resume {args.resume}: no training_args.json there")
    saved = json.loads(saved_file.read_text())
    kept = {key for key in saved if key in CALL_SETTINGS or (key in optional and getattr(args, key, None) is not None)}
    conflicts = _take_saved(args, parser, saved, kept, "the run's", given)
    # an option the saved run did not have (older runs, before --switch-from): given, it would change the recipe
    for key, value in vars(args).items():
        if key not in saved and key not in CALL_SETTINGS and key not in optional:
            if value is not None and value != parser.get_default(key):
                conflicts.append(f"--{key.replace('_', '-')} {value} (the run's: not set)")
    if conflicts:
        raise SystemExit(f"--resume {args.resume} continues the saved run's recipe; drop {', '.join(conflicts)}")
    return args


def _take_saved(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    saved: dict,
    kept: set[str],
    whose: str,
    given: set[str] | None,
) -> list[str]:
    """Set ``args`` to the ``saved`` arguments but for the ``kept`` ones; returns the options given (``given``, or
    else those unlike their default) with a value unlike the saved one (``--lr 1.0 (the run's: 0.003)``), which the
    caller refuses."""
    conflicts = []
    for key, value in saved.items():
        if key in kept:
            continue
        mine = getattr(args, key, None)
        on_command_line = key in given if given is not None else mine is not None and mine != parser.get_default(key)
        if on_command_line and mine != value:
            conflicts.append(f"--{key.replace('_', '-')} {mine} ({whose}: {value})")
        setattr(args, key, value)
    return conflicts


def switched_args(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    recipes: dict[str, dict],
    *,
    given: set[str] | None = None,
) -> argparse.Namespace:
    """``args`` for a ``--switch-from DIR`` run: the source run's saved arguments (its task, model and data: the
    folder's ``training_args.json``) but for the call's settings (:data:`CALL_SETTINGS`) and the switch's own
    recipe (:data:`SWITCH_OWN`), whose options not given take ``recipes[scale]``'s values (the source's scale); no
    mimetic initialisation. ``given``: as for :func:`resumed_args`.
    Unchanged without ``--switch-from`` or with ``--resume`` (a resumed switch run's saved arguments are whole).

    Raises:
        SystemExit: no saved arguments in the folder, a source that is not a SiLU model, or options that contradict
            the source run's (one line, named).
    """
    if not getattr(args, "switch_from", None) or getattr(args, "resume", None):
        return args
    source = Path(args.switch_from)
    saved_file = source / "training_args.json"
    if not saved_file.is_file():
        raise SystemExit(f"--switch-from {source}: no training_args.json there (not a folder of a task trainer)")
    saved = json.loads(saved_file.read_text())
    if saved.get("act", SWITCH_FROM) != SWITCH_FROM:
        raise SystemExit(f"--switch-from {source}: a {saved['act']} model; the switch starts from {SWITCH_FROM}")
    if args.mimetic_layers:
        raise SystemExit("--switch-from continues a trained model: drop --mimetic-layers")
    conflicts = _take_saved(args, parser, saved, {*CALL_SETTINGS, *SWITCH_OWN, "resume"}, "the source run's", given)
    if conflicts:
        raise SystemExit(f"--switch-from {source} keeps the source run's task, model, data and batch settings (the "
                         f"switch sets only {', '.join('--' + k.replace('_', '-') for k in SWITCH_OWN[:-1])}); drop "
                         f"{', '.join(conflicts)}")
    for key, value in recipes[args.scale].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.mimetic_layers = []
    try:  # the run must end on steps at α = 1, whatever the schedule
        switch_alpha(0, steps=args.steps, decay=args.decay)
    except ValueError as err:
        raise SystemExit(f"--switch-from: {err}") from err
    return args


def start_model(args: argparse.Namespace, build: Callable[[], nn.Module]) -> tuple[nn.Module, dict, list]:
    """``(model, trainer state, switches)`` a trainer starts from: the ``--resume`` run's model and state, the
    ``--switch-from`` folder's trained model, or ``build()``'s fresh one; a switch run's model gets its
    :class:`~latim_captum.tasks.switch.SwitchActivation` s (α 0), resumed or not."""
    from .switch import install_switch_

    state: dict = {}
    if args.resume:
        model, state, _ = load_resume(args.resume, args.variant)
    elif getattr(args, "switch_from", None):
        model, _ = load_trained(args.switch_from, args.variant)
    else:
        model = build()
    switches = install_switch_(model, args.act) if getattr(args, "switch_from", None) else []
    return model, state, switches


def switch_stepper(args: argparse.Namespace, switches: list) -> Callable[[int], None] | None:
    """:func:`run_training`'s ``before_step`` for a switch run (α of the steps done, App. B.3); None otherwise."""
    if not switches:
        return None
    return lambda step: set_alpha_(switches, switch_alpha(step, steps=args.steps, decay=args.decay))


def finish_switch_(model: nn.Module, args: argparse.Namespace, switches: list) -> dict | None:
    """Record a switch run's last ``α`` in the model's config (``latim_switch_alpha``; below 1 the config is marked
    with :func:`~latim_captum.tasks.switch.mark_cut_`, which every loader refuses: such a model computes neither
    activation's model) and return its ``metrics.json`` entry; None otherwise. Call it after the run's last
    evaluation: a cut model's config no longer builds."""
    if not switches:
        return None
    alpha = switches[0].alpha
    # a switch from SiLU to SiLU computes the SiLU model at every α
    if args.act == SWITCH_FROM or alpha >= 1.0:
        model.config.latim_switch_alpha = 1.0
    else:
        mark_cut_(model.config, alpha)
    return {"from": str(args.switch_from), "from_act": SWITCH_FROM, "to": args.act, "alpha": alpha,
            "alpha_one_at_step": args.steps - args.decay}  # fmt: skip


def add_switch_arguments(p: argparse.ArgumentParser, recipes: dict[str, dict]) -> None:
    """The copy and alignment trainers' ``--switch-from`` and the options of its recipe (``recipes``: per scale, the
    defaults a switch run takes, named in the help)."""
    p.add_argument(
        "--switch-from",
        default=None,
        metavar="DIR",
        help="continue the SiLU model trained in DIR (its task, data and model) while its conv activation switches "
        "to --act: φ = (1 − α)·SiLU + α·act, α = min(1, step/(steps − decay))² (the paper's App. B.3; Table 5). "
        "Recipe unless given: "
        + "; ".join(f"{scale}: " + ", ".join(f"{k} {v}" for k, v in r.items()) for scale, r in recipes.items()),
    )
    p.add_argument("--decay", type=int, default=None,
                   help="wsd schedule: its last steps, decaying linearly to 1/decay of the rate")  # fmt: skip
    p.add_argument("--clip", type=float, default=None, help="clip the gradients' norm to this (default: no clipping)")


def add_training_arguments(p: argparse.ArgumentParser, presets: dict, overrides: list[tuple[str, type]]) -> None:
    """The flags both trainers share, and ``--<name>`` preset overrides (default None: the preset's value)."""
    p.add_argument("--variant", choices=["mamba1", "mamba2"], required=True)
    p.add_argument("--scale", choices=sorted(presets), default="tiny", help="preset; the flags below override it")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument(
        "--act",
        choices=HIDDEN_ACTS,
        default="silu",
        help="conv activation (HF hidden_act; linear: none, the exactly decomposable model of the paper's Table 5)",
    )
    p.add_argument(
        "--kernels",
        choices=["auto", "off", "unfused", "dual"],
        default="auto",
        help="off: hide mamba-ssm and causal-conv1d from HF (its PyTorch path), needed for --act relu/linear on a "
        "GPU with the kernels (they apply SiLU or refuse the activation); unfused: keep the kernels, unfused, with "
        "the model's own activation between them (CUDA; checked against the PyTorch path before training); dual: "
        "no kernels, Mamba-2's scan in its quadratic (masked-attention) form in PyTorch: nothing to build or compile, "
        "far faster than HF's PyTorch path on short sequences, memory growing with the square of their length "
        "(any activation; checked likewise on CUDA)",
    )
    p.add_argument("--max-minutes", type=float, default=None, help="stop (evaluate and save) after this long")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="STEP",
        help="stop (evaluate and save) after this many steps, the schedule still that of --steps: another run's cut "
        "by --max-minutes, at the same step (to compare models of one recipe)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help=f"continue the run saved in DIR (its {TRAINER_STATE}): its model, task, optimiser and arguments; this "
        "call's --out, --device, --bf16, --kernels, --quiet, --max-minutes and --stop-at",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (torch default)")
    p.add_argument("--mimetic-a-scale", type=float, default=1e-2, help="A = -a_scale in the mimetic layers")
    for name, typ in overrides:
        p.add_argument(f"--{name}", type=typ, default=None, help="override the preset")
    p.add_argument(
        "--mimetic-layers",
        type=int,
        nargs="*",
        default=None,
        help="0-based layers with mimetic init (default: the preset's; give none to disable)",
    )


def fill_from_preset(args: argparse.Namespace, preset: dict) -> argparse.Namespace:
    """Every argument left None takes the preset's value."""
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def trainer_main(
    resolve_args: Callable[[list[str] | None], argparse.Namespace],
    train: Callable[[argparse.Namespace], dict],
    argv: list[str] | None = None,
) -> int:
    """A task trainer's command line: parse (the preset filled in), hide the kernels with ``--kernels off``, train,
    print the metrics without their history; a refused argument is one ``train: error:`` line and status 2.

    Example:
        >>> trainer_main(resolve_args, train, ["--variant", "mamba2", "--out", "runs/x"])   # doctest: +SKIP
        0
    """
    args = resolve_args(argv)
    try:
        if args.kernels == "off":
            block_kernels()
        result = train(args)
    except (ValueError, TypeError) as err:
        print(f"train: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0
