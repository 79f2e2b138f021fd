"""What the task evaluations share: loading a trained folder, naming methods, decomposition errors, writing reports.

Method names are the registry's (:mod:`latim_captum.methods`: ``l2``, ``l2_silu_gate``, ``alti_logit``, ...) plus
``<measure>_<activation>`` for a LaTIM measure under any other activation strategy of
:data:`latim_captum.ACTIVATIONS` (``l2_identity``, ``alti_logit_identity``: the exact strategy of a model trained
with ``hidden_act="linear"``), made here without touching the registry.

Example:
    >>> resolve_method("alti_logit_identity").activation, resolve_method("l2").activation
    ('identity', 'silu')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..activations import ACTIVATIONS, IDENTITY_NAMES, SILU_NAMES
from ..catalog import latim_methods
from ..methods import METHOD_REGISTRY, Method, latim_map_fn

__all__ = [
    "StrategyMethod",
    "check_resume",
    "resume_into",
    "resumed_backend",
    "resumed_lines",
    "exact_strategy",
    "load_model_dir",
    "model_act",
    "progress",
    "quiet_transformers",
    "reconstruction_errors",
    "resolve_method",
    "variant_of",
    "write_report",
]


def variant_of(model: nn.Module) -> str:
    """``"mamba1"`` or ``"mamba2"`` from the HF model class."""
    name = type(model).__name__
    if name.startswith("Mamba2"):
        return "mamba2"
    if "Mamba" in name:
        return "mamba1"
    raise TypeError(f"the task benchmarks support HF Mamba / Mamba-2 models, got {name}")


def model_act(model: nn.Module) -> str:
    """The model's conv activation (HF ``hidden_act``)."""
    return str(getattr(model.config, "hidden_act", "silu"))


def exact_strategy(model: nn.Module) -> str:
    """The activation strategy that decomposes this model exactly: ``silu_gate`` for SiLU, ``identity`` for no
    activation, ``act_gate`` for any other (ReLU, GELU, ...)."""
    return exact_strategy_of(model_act(model))


def exact_strategy_of(act: str) -> str:
    """:func:`exact_strategy` from the activation's name (``hidden_act``: ``silu``/``swish``, ``linear``/...)."""
    return "silu_gate" if act in SILU_NAMES else "identity" if act in IDENTITY_NAMES else "act_gate"


def paper_strategy_of(act: str) -> str:
    """The paper's approximate strategy for a model of conv activation ``act``: eq 19 with ``f`` := the model's own
    activation, i.e. ``silu`` for SiLU models and ``act`` for every other (``identity`` on a linear model)."""
    return "silu" if act in SILU_NAMES else "act"


def load_model_dir(path: str | Path) -> tuple[nn.Module, object, dict]:
    """Load a folder written by a task trainer: ``(model in float32 eval mode, tokenizer, metrics.json dict)``,
    safely (:func:`latim_captum._loading.load_pretrained`: never the folder's code, safetensors first)."""
    from .._loading import load_pretrained

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no trained model at {path} (config.json missing)")
    model, tok = load_pretrained(path, dtype=torch.float32)
    meta_file = path / "metrics.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    return model, tok, meta


def quiet_transformers() -> None:
    """No transformers warnings or loading bars (a command's own output stays readable)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def progress(items, desc: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=quiet, leave=False)


class StrategyMethod(Method):
    """A LaTIM method under a strategy the registry does not list; its label names the strategy."""

    @property
    def label(self) -> str:
        return f"{self.spec.label} f={self.activation}"


def resolve_method(name: str):
    """The :class:`~latim_captum.methods.Method` called ``name``: a registry entry, or ``<measure>_<activation>``
    for a LaTIM measure under any strategy of :data:`latim_captum.ACTIVATIONS`; ``ValueError`` otherwise."""
    if name in METHOD_REGISTRY:
        return METHOD_REGISTRY[name]
    for spec in latim_methods():
        for act in ACTIVATIONS:
            if name != f"{spec.name}_{act}":
                continue

            return StrategyMethod(name, spec, act, latim_map_fn(spec, act))
    latim = ", ".join(f"{s.name}_<activation>" for s in latim_methods())
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_REGISTRY)}, or {latim}")


def reconstruction_errors(
    model: nn.Module,
    ids: Tensor,
    attention_mask: Tensor | None = None,
    batch: int | None = None,
    backend: str = "auto",
) -> dict[str, list[float] | None]:
    """Relative decomposition error per layer (:func:`latim_captum.reconstruction_error`) over every sample of
    ``ids`` for every activation strategy; None for a strategy that refuses the model (``silu_gate`` on a model
    without SiLU). ``batch`` samples at a time (None: all at once) changes the memory, not the number: the squared
    norms are summed over batches before the ratio. ``backend``: that of
    :func:`~latim_captum.api.reconstruction_error_terms` (``"ref"``: the materialised vectors' sums)."""
    from ..api import reconstruction_error_terms

    step = ids.shape[0] if batch is None else batch
    out: dict[str, list[float] | None] = {}
    for act in ACTIVATIONS:
        try:
            terms = [
                reconstruction_error_terms(
                    model,
                    ids[start : start + step],
                    activation=act,
                    attention_mask=None if attention_mask is None else attention_mask[start : start + step],
                    backend=backend,
                )
                for start in range(0, ids.shape[0], step)
            ]
        except ValueError:
            out[act] = None
            continue
        squared_error = torch.stack([err for err, _ in terms]).sum(0)
        squared_norm = torch.stack([norm for _, norm in terms]).sum(0)
        out[act] = [float(e) for e in squared_error.sqrt() / squared_norm.sqrt()]
    return out


def check_resume(resume: dict, report: dict, keys: Sequence[str]) -> None:
    """Refuse to continue ``resume`` (a report a cut run left) as ``report`` (this run's, before any method) unless
    they share every one of ``keys`` (samples, task, model shape, readings: what a method's numbers depend on besides
    the weights, which the caller checks). ``ValueError`` names the first key that differs."""
    for key in keys:
        if json.dumps(resume.get(key), sort_keys=True) != json.dumps(report[key], sort_keys=True):
            raise ValueError(
                f"the report to resume differs from this run in {key}: {resume.get(key)!r} there, {report[key]!r} here"
            )


def resumed_backend(resume: dict, backend: str) -> str:
    """The ``backend`` a resumed report records: every path its rows came from, the resumed ones first (the paths
    give the same maps; the record says how they were made). A report resumed twice lists each path once."""
    earlier = (resume.get("backend") or "").split(", ")
    return ", ".join(dict.fromkeys(b for b in (*earlier, backend) if b))


def resume_into(report: dict, resume: dict | None, keys: Sequence[str]) -> bool:
    """Continue ``resume`` (a report a cut run left; None: nothing to continue) in ``report``, this run's before any
    method: :func:`check_resume` on ``keys``, then its finished methods (first, in their order), its decomposition
    errors and :func:`resumed_backend`. Returns whether it did, so the caller measures the errors only otherwise."""
    if resume is None:
        return False
    check_resume(resume, report, keys)
    report["backend"] = resumed_backend(resume, report["backend"])
    report["methods"] = dict(resume["methods"])
    report["reconstruction_error"] = resume["reconstruction_error"]
    return True


def resumed_lines(meta: dict) -> list[str]:
    """A report's markdown line naming the earlier commands whose rows a ``--resume`` run kept (``meta``'s
    ``resumed_from``; none: no line), so a reader of a report written on one machine from rows computed on another
    sees where each came from.

    Example:
        >>> resumed_lines({"resumed_from": ["latim bench alignment --device cuda"]})
        ['- rows kept from earlier runs (`--resume`), computed by: `latim bench alignment --device cuda`']
    """
    commands = meta.get("resumed_from") or []
    if not commands:
        return []
    return ["- rows kept from earlier runs (`--resume`), computed by: " + "; ".join(f"`{c}`" for c in commands)]


def write_report(report: dict, out_dir: str | Path, stem: str, render: Callable[[dict], str]) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (``render(report)``) under ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    # each file whole or not at all: a run killed by a time limit mid-write must leave a report --resume can read
    for path, text in ((json_path, json.dumps(report, indent=2) + "\n"), (md_path, render(report))):
        partial = path.with_name(path.name + ".partial")
        partial.write_text(text)
        partial.replace(path)
    return json_path, md_path
