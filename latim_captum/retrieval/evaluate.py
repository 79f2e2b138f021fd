"""Evaluate trained retrieval models: passkey accuracy by the gold key's place (paper Tables 4 and 6), FWE accuracy,
and where each method puts its attribution mass when the model answers (§4.3, Figure 3), with wall times.

Per model and per setting (length ``N`` × key count ``k``; FWE per length), on held-out samples drawn with
``seed + 1``:

1. **Accuracy** (:func:`greedy_answers`): the model decodes the answer greedily from the prompt; a passkey answer
   is right when every digit is (:func:`~.metrics.passkey_outcome`), split by whether the gold needle is the
   first to appear (Table 4); wrong answers are sorted by which needle's value they spell.
2. **Attribution** on the first ``n_attr`` samples: the sequence the model produced (prompt + its own answer) and,
   for each answer token, the query row that predicts it with the model's token as target (one row each, the
   single-query path for ALTI-Logit: :func:`~.attribution.answer_row_scores`). Each row's mass is split into the
   categories of :mod:`latim_captum.retrieval.metrics` (passkey: gold / first / other keys / filler / query; FWE:
   each planted word),
   averaged over the answer rows of a sample, then over the samples of a cell: ``correct`` / ``incorrect`` ×
   ``gold first`` / ``gold later``. Per-layer methods keep one set of shares per layer.
3. **Wall time** of each method in the same run (all its rows, trace included, after one untimed call on one
   sample), and rows explained.

The paper's numbers (:data:`PAPER_TABLE4`, :data:`PAPER_TABLE6`) are Mamba-2 checkpoints of 130M–1.4B parameters
pretrained on natural text, evaluated zero-shot on RULER; ours are ~3M-parameter models trained from scratch on
the synthetic tasks: they stand side by side for shape (does accuracy fall with more keys, is the first key
favoured), not for comparison.

Example:
    >>> task = RetrievalTask(**TINY_TASK)
    >>> report = evaluate_model(model, task, lengths=[128], n_samples=8, n_attr=4)   # doctest: +SKIP
    >>> report["passkey"]["N=128 k=2"]["first"]["accuracy"]                           # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..adapters import get_adapter
from ..tasks.reports import model_act, progress, variant_of
from ..tasks.reports import write_report as _write_report
from .attribution import answer_row_scores, is_per_layer, method_family
from .data import KEYS, RetrievalSample, RetrievalTask
from .metrics import (
    ANSWERED_CATEGORIES,
    CATEGORIES,
    answered_labels,
    fwe_labels,
    fwe_outcome,
    passkey_labels,
    passkey_outcome,
    span_shares,
    summarize_passkey,
)

__all__ = [
    "CELLS",
    "DEFAULT_METHODS",
    "PAPER_TABLE4",
    "PAPER_TABLE6",
    "evaluate_model",
    "greedy_answers",
    "render_markdown",
    "write_figures",
    "write_report",
]

#: the methods of the study: LaTIM ℓ2 (per layer) and ALTI-Logit (the paper's SiLU and the exact strategy), two
#: Captum gradient methods, the three baselines
DEFAULT_METHODS: tuple[str, ...] = (
    "l2",
    "alti_logit",
    "alti_logit_silu_gate",
    "saliency",
    "integrated_gradients",
    "mamba_attention",
    "mamba_attribution",
    "mamba_lrp",
)

#: below this passkey accuracy with the fewest keys a report says the model does not retrieve (its attribution shares
#: then describe a model that fails the task)
NOT_RETRIEVING = 0.1

#: the paper's Table 6: Mamba-2 accuracy (%) per size and length for k = 1, 2, 4 keys (1000 samples each)
PAPER_TABLE6: dict[str, dict[int, tuple[float, float, float]]] = {
    "130M": {1024: (99.8, 58.2, 28.1), 2048: (99.7, 57.3, 30.8)},
    "370M": {1024: (100.0, 57.6, 33.1), 2048: (98.0, 55.1, 34.1)},
    "780M": {1024: (99.8, 68.1, 60.2), 2048: (84.5, 59.3, 51.4)},
    "1.4B": {1024: (99.3, 63.2, 39.6), 2048: (99.7, 60.8, 38.9)},
}
#: the paper's Table 4: Mamba-2 accuracy (%) at N = 1024 when the gold key is the first or a later one:
#: (2 keys first, 2 keys second, 4 keys first, 4 keys second+)
PAPER_TABLE4: dict[str, tuple[float, float, float, float]] = {
    "130M": (74.3, 41.2, 46.9, 22.2),
    "370M": (65.4, 47.3, 53.6, 26.7),
    "780M": (76.9, 59.1, 82.0, 53.4),
    "1.4B": (81.7, 43.6, 64.4, 31.8),
}
#: the cells attribution shares are averaged in: outcome × place of the gold key
CELLS: tuple[str, ...] = ("correct|first", "correct|later", "incorrect|first", "incorrect|later")


@torch.no_grad()
def greedy_answers(model: nn.Module, samples: Sequence[RetrievalSample], *, batch: int = 32) -> Tensor:
    """``[n, A]`` the model's greedy answer (``A = len(answer)`` tokens) after each sample's prompt
    (``ids[:answer_start]``): ``A`` forward passes, each appending the argmax (no cache: the models here are built
    with ``use_cache=False``)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(samples), batch):
            part = samples[start : start + batch]
            cut = {s.answer_start for s in part}
            steps = {len(s.answer) for s in part}
            if len(cut) != 1 or len(steps) != 1:
                raise ValueError("greedy_answers needs samples of one layout (one task, length and key count)")
            prompt, n_answer = cut.pop(), steps.pop()
            ids = torch.from_numpy(np.stack([s.ids[:prompt] for s in part])).to(device)
            answer = []
            for _ in range(n_answer):
                nxt = model(input_ids=ids).logits[:, -1].argmax(-1)
                answer.append(nxt)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
            out.append(torch.stack(answer, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def _with_answer(samples: Sequence[RetrievalSample], answers: Tensor) -> Tensor:
    """``[n, N]``: each sample with its answer tokens replaced by the model's (what the model produced)."""
    ids = torch.from_numpy(np.stack([s.ids for s in samples])).clone()
    for k, s in enumerate(samples):
        ids[k, s.answer_start : s.answer_start + len(s.answer)] = answers[k]
    return ids


def _cell(outcome: dict) -> str:
    return f"{'correct' if outcome['correct'] else 'incorrect'}|{'first' if outcome['gold_first'] else 'later'}"


def _mean(rows: list[Tensor]) -> list | None:
    """Mean over samples of per-sample shares (NaN rows skipped), as nested lists; None for no sample."""
    if not rows:
        return None
    stacked = torch.stack(rows)
    return torch.nanmean(stacked, dim=0).tolist()


def _answered_shares(
    scores: Tensor, samples: Sequence[RetrievalSample], outcomes: Sequence[dict], per_layer: bool
) -> list[Tensor]:
    """Per sample whose wrong answer spells another needle's value: its rows' shares over
    :data:`~.metrics.ANSWERED_CATEGORIES` (gold, answered needle, rest), averaged over the answer rows; ``[3]`` or
    ``[L, 3]``; a sample whose rows hold no mass is left out. ``scores``: ``[b, R, (L,) N]`` rows of ``samples``."""
    out = []
    for k, (s, o) in enumerate(zip(samples, outcomes)):
        if o["correct"] or o["matched"] < 0:
            continue
        labels = answered_labels(s, o["matched"])
        view = labels[None, None, :] if per_layer else labels[None, :]
        shares = torch.nanmean(span_shares(scores[k], view, len(ANSWERED_CATEGORIES)), dim=0)
        if not bool(torch.isnan(shares).all()):  # rows with no mass at all say nothing about where it went
            out.append(shares)
    return out


def _passkey_settings(lengths: Sequence[int], keys: Sequence[int]) -> list[tuple[int, int]]:
    return [(n, k) for n in lengths for k in keys]


def _pick_example(samples: Sequence[RetrievalSample], outcomes: Sequence[dict]) -> int:
    """The sample the long-context figure shows: a wrong answer with the gold key later (the paper's Figure 3 left),
    else a gold key later, else the first."""
    for want in (lambda o: not o["correct"] and not o["gold_first"], lambda o: not o["gold_first"]):
        for i, o in enumerate(outcomes):
            if want(o):
                return i
    return 0


def evaluate_model(
    model: nn.Module,
    task: RetrievalTask,
    *,
    lengths: Sequence[int],
    keys: Sequence[int] = KEYS,
    n_samples: int = 200,
    n_attr: int = 32,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    batch: int = 32,
    attr_batch: int = 4,
    max_sequences: int = 64,
    backend: str = "auto",
    fwe: bool = True,
    quiet: bool = False,
    on_update: Callable[[dict], None] | None = None,
    examples: dict | None = None,
    deadline: float | None = None,
) -> dict:
    """Accuracy, attribution shares and wall times of one retrieval model (see the module docstring).

    Args:
        model: a trained HF Mamba / Mamba-2 model (on its device).
        task: the task it was trained on.
        lengths, keys: the passkey settings (every length × every key count; FWE at every length).
        n_samples: samples per setting for accuracy.
        n_attr: samples per setting explained by every method (the first ones).
        seed: the training seed (evaluation samples are drawn with ``seed + 1``).
        methods: method names (default :data:`DEFAULT_METHODS`; see :mod:`.attribution`).
        batch: samples per decoding pass; attr_batch: samples per attribution call.
        max_sequences: replicated sequences per pass of the gradient methods and row-replicating baselines.
        backend: LaTIM's path (:data:`latim_captum.BACKENDS`).
        fwe: also evaluate frequent-word extraction.
        on_update: called with the report so far after the accuracies and after every method.
        examples: filled (if given) with the rows of one sample per task for the long-context figure.
        deadline: a ``time.time()`` after which no further method starts (each one left is marked skipped).

    Returns:
        a dict with keys ``variant``, ``act``, ``n_layers``, ``task``; ``passkey`` (setting → accuracy summary);
        ``fwe`` (setting → ``n``, ``exact``, ``set_recall``, ``per_rank``); ``methods`` (name → ``label``,
        ``family``, ``per_layer``, ``seconds``, ``rows``, ``passkey``: setting → ``seconds`` and ``cells``: cell →
        ``n``, ``shares``; ``fwe``: setting → ``seconds``, ``n``, ``shares``, ``per_occurrence``, ``counts``); passkey
        shares are ``[C]`` (or ``[L, C]``) over :data:`~latim_captum.retrieval.metrics.CATEGORIES`, FWE shares
        ``[m + 1]`` (or ``[L, m + 1]``) by rank, then ``other``.
    """
    from ..methods import METHOD_REGISTRY

    variant = variant_of(model)
    n_layers = get_adapter(model).n_layers
    device = next(model.parameters()).device
    methods = list(methods or DEFAULT_METHODS)
    for name in methods:
        method_family(name)  # unknown names fail before any work
    eval_seed = seed + 1
    report: dict = {
        "variant": variant,
        "act": model_act(model),
        "n_layers": n_layers,
        "task": task.to_dict(),
        "lengths": list(lengths),
        "keys": list(keys),
        "n_samples": n_samples,
        "n_attr": n_attr,
        "eval_seed": eval_seed,
        "backend": backend,
        "categories": list(CATEGORIES),
        "passkey": {},
        "fwe": {},
        "methods": {},
    }
    data: dict[str, dict] = {}
    for length, k in _passkey_settings(lengths, keys):
        samples = task.passkey(n_samples, length=length, keys=k, seed=[eval_seed, 3, length, k])
        answers = greedy_answers(model, samples, batch=batch)
        outcomes = [passkey_outcome(s, task.decode(a)) for s, a in zip(samples, answers)]
        name = f"N={length} k={k}"
        report["passkey"][name] = {"length": length, "keys": k, **summarize_passkey(outcomes)}
        data[name] = {"kind": "passkey", "samples": samples, "answers": answers, "outcomes": outcomes}
    if fwe:
        for length in lengths:
            samples = task.fwe(n_samples, length=length, seed=[eval_seed, 4, length])
            answers = greedy_answers(model, samples, batch=batch)
            outcomes = [fwe_outcome(s, task.decode(a)) for s, a in zip(samples, answers)]
            name = f"N={length}"
            report["fwe"][name] = {
                "length": length,
                "n": len(outcomes),
                "exact": float(np.mean([o["exact"] for o in outcomes])),
                "set_recall": float(np.mean([o["set_recall"] for o in outcomes])),
                "per_rank": np.mean([o["per_rank"] for o in outcomes], axis=0).tolist(),
                "counts": list(samples[0].counts),
            }
            data[f"fwe {name}"] = {"kind": "fwe", "samples": samples, "answers": answers, "outcomes": outcomes}
    if on_update is not None:
        on_update(report)

    # the long-context figure's samples: the longest length, the most keys; the longest FWE
    fig_pk = f"N={max(lengths)} k={max(keys)}"
    fig_fwe = f"fwe N={max(lengths)}"
    picks = {}
    if fig_pk in data:
        d = data[fig_pk]
        picks[fig_pk] = _pick_example(d["samples"][:n_attr], d["outcomes"][:n_attr])
    if fig_fwe in data:
        picks[fig_fwe] = 0
    if examples is not None:
        for key, idx in picks.items():
            d = data[key]
            s = d["samples"][idx]
            examples[key] = {
                "sample": s,
                "ids": _with_answer([s], d["answers"][idx : idx + 1])[0],
                "outcome": d["outcomes"][idx],
                "rows": {},
            }

    for name in progress(methods, "methods", quiet):
        per_layer = is_per_layer(name)
        label = METHOD_REGISTRY[name].label if name in METHOD_REGISTRY else name
        entry: dict = {"label": label, "family": method_family(name), "per_layer": per_layer, "seconds": 0.0,
                       "rows": 0, "passkey": {}, "fwe": {}}  # fmt: skip
        if deadline is not None and time.time() > deadline:
            entry["skipped"] = "time limit of the run reached before it started"
            report["methods"][name] = entry
            continue
        try:
            # one untimed call first: first-use work (mamba-ssm's backward kernels autotune on their first call, the
            # Triton maps compile) belongs to no method's time
            first = next(iter(data.values()))
            t_warm = time.time()
            answer_row_scores(name, model, _with_answer(first["samples"][:1], first["answers"][:1]).to(device),
                              rows=list(first["samples"][0].answer_rows), targets=first["answers"][:1].to(device),
                              backend=backend, max_sequences=max_sequences)  # fmt: skip
            entry["warmup_seconds"] = time.time() - t_warm
            for key, d in data.items():
                samples = d["samples"][:n_attr]
                answers = d["answers"][:n_attr]
                ids_all = _with_answer(samples, answers)
                rows = list(samples[0].answer_rows)
                per_sample: list[Tensor] = []
                answered: list[Tensor] = []  # gold / answered / rest shares of the wrong answers that read a needle
                t0 = time.time()
                for s0 in range(0, len(samples), attr_batch):
                    ids = ids_all[s0 : s0 + attr_batch].to(device)
                    targets = answers[s0 : s0 + attr_batch].to(device)
                    scores = answer_row_scores(name, model, ids, rows=rows, targets=targets, backend=backend,
                                               max_sequences=max_sequences).cpu()  # fmt: skip
                    part = samples[s0 : s0 + attr_batch]
                    if d["kind"] == "passkey":
                        labels = torch.stack([passkey_labels(s) for s in part])
                        n_labels = len(CATEGORIES)
                    else:
                        labels = torch.stack([fwe_labels(s) for s in part])
                        n_labels = len(part[0].words) + 1
                    view = labels[:, None, None, :] if per_layer else labels[:, None, :]
                    shares = span_shares(scores, view, n_labels)  # [b, R, (L,) C]
                    per_sample += list(torch.nanmean(shares, dim=1).unbind(0))
                    if d["kind"] == "passkey":
                        answered += _answered_shares(scores, part, d["outcomes"][s0 : s0 + attr_batch], per_layer)
                    for k, s in enumerate(part):
                        ex = examples.get(key) if examples is not None else None
                        if ex is not None and ex["sample"] is s:
                            ex["rows"][label] = scores[k, 0]  # the first answer token's row
                seconds = time.time() - t0
                entry["seconds"] += seconds
                entry["rows"] += len(samples) * len(rows)
                if d["kind"] == "passkey":
                    cells = {}
                    outcomes = d["outcomes"][:n_attr]
                    for cell in ("all", *CELLS):
                        chosen = [p for p, o in zip(per_sample, outcomes) if cell == "all" or _cell(o) == cell]
                        cells[cell] = {"n": len(chosen), "shares": _mean(chosen)}
                    entry["passkey"][key] = {
                        "seconds": seconds,
                        "cells": cells,
                        "answered": {"n": len(answered), "shares": _mean(answered)},
                    }
                else:
                    counts = torch.tensor(samples[0].counts, dtype=torch.float64)
                    mean = torch.nanmean(torch.stack(per_sample), dim=0)  # [(L,) m + 1]
                    entry["fwe"][key.removeprefix("fwe ")] = {
                        "seconds": seconds,
                        "n": len(per_sample),
                        "shares": mean.tolist(),
                        "per_occurrence": (mean[..., :-1] / counts).tolist(),
                        "counts": counts.long().tolist(),
                    }
        except NotImplementedError as err:  # a baseline defined for one family only
            entry["skipped"] = str(err).splitlines()[0]
        report["methods"][name] = entry
        if on_update is not None:
            on_update(report)
    return report


# --- the report -----------------------------------------------------------------------------------------------------


def _cell_name(cell: str) -> str:
    """``"incorrect|later"`` → ``"incorrect, gold later"`` (no ``|`` inside a Markdown table)."""
    return cell.replace("|", ", gold ")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _layer_mean(shares: list | None) -> list | None:
    """Per-layer shares ``[L, C]`` → their mean over layers ``[C]``; ``[C]`` as it is."""
    if shares is None:
        return None
    if shares and isinstance(shares[0], list):
        return np.nanmean(np.array(shares, dtype=float), axis=0).tolist()
    return shares


def _pool(groups: Sequence[dict | None], layer_mean: bool = True) -> tuple[int, np.ndarray | None]:
    """Samples and their mean shares over ``groups`` (``{"n", "shares"}`` each, weighted by ``n``; empty or missing
    ones skipped); ``layer_mean``: per-layer shares averaged over layers first. ``(0, None)`` when none has a
    sample."""
    total, acc = 0, None
    for g in groups:
        if not g or not g["n"] or g["shares"] is None:
            continue
        v = np.array(_layer_mean(g["shares"]) if layer_mean else g["shares"], dtype=float) * g["n"]
        acc = v if acc is None else acc + v
        total += g["n"]
    return total, (acc / total if total else None)


def pooled_cells(entry: dict, settings: Sequence[str]) -> dict[str, dict]:
    """A method's passkey cells pooled over ``settings`` (weighted by samples): cell → ``{"n", "shares"}`` with
    layer-mean shares for per-layer methods."""
    out = {}
    for cell in ("all", *CELLS):
        total, mean = _pool([entry.get("passkey", {}).get(key, {}).get("cells", {}).get(cell) for key in settings])
        out[cell] = {"n": total, "shares": mean.tolist() if total else None}
    return out


def _answered_section(models: dict, lengths: Sequence[int], multi: Sequence[int]) -> list[str]:
    """Markdown: per method, the shares on the gold needle / the needle a wrong answer spells / the rest, pooled over
    the multi-key settings of each length (weighted by samples); none when no method recorded such an answer."""
    rows = []
    for variant, r in models.items():
        for e in r["methods"].values():
            for n in lengths:
                total, mean = _pool([e.get("passkey", {}).get(f"N={n} k={k}", {}).get("answered") for k in multi])
                if total:
                    vals = " | ".join(_pct(v) for v in mean)
                    rows.append(f"| {variant} | {e['label']} | N={n} k>1 | {total} | {vals} |")
    if not rows:
        return []
    return ["", "## Which needle a wrong answer read (passkey, %)", "",
            "Wrong answers that spell another needle's value name the needle the model copied from. Share of |score| "
            "of their answer rows on the gold needle's key–value span, on the span of the needle whose value was "
            "answered, and on everything else (per-layer methods: mean over layers). A method that explains the "
            "failure puts the mass on the needle answered.", "",
            "| Model | Method | setting | n | gold | answered | rest |", "| --- | --- | --- | --- | --- | --- | --- |",
            *rows]  # fmt: skip


def render_markdown(suite: dict) -> str:
    """Markdown: Table 6 and Table 4 analogues beside the paper's, wrong answers, FWE, attribution shares per
    method and cell, per-layer shares, FWE contribution per occurrence, wall times.

    ``suite``: ``{"meta": {...}, "models": {variant: evaluate_model(...) report}}``.
    """
    meta = suite.get("meta", {})
    models: dict = suite["models"]
    lines = [
        f"# Long-context retrieval: passkey and frequent-word extraction ({meta.get('scale', '?')} scale)",
        "",
        "**Ours: small Mamba models (a few million parameters) trained from scratch on the synthetic tasks of "
        "`latim_captum.retrieval`. The paper's: Mamba-2 checkpoints of 130M–1.4B parameters pretrained on natural "
        "text, evaluated on RULER.** The paper's numbers stand beside ours for shape (does accuracy fall with more "
        "keys; is the first key favoured), not for comparison.",
        "",
        f"- command: `{meta.get('command', '?')}`; evaluated on: {meta.get('device', '?')}",
    ]
    for variant, r in models.items():
        m = r.get("meta", {})
        lines.append(
            f"- {variant}: `{m.get('model', '?')}` ({r['n_layers']} layers, conv activation {r['act']}), trained on "
            f"{m.get('train_device') or '?'}, seed {m.get('seed', '?')}, {m.get('steps', '?')} steps "
            f"({m.get('minutes') or 0:.1f} min); accuracy on {r['n_samples']} samples per setting (greedy answers, "
            f"seed {r['eval_seed']}), attribution on the first {r['n_attr']}"
        )
    for variant, r in models.items():
        fewest = min(r["keys"])
        easiest = [r["passkey"].get(f"N={n} k={fewest}", {}).get("accuracy") for n in r["lengths"]]
        best = max((a for a in easiest if a is not None), default=None)
        if best is not None and best < NOT_RETRIEVING:
            lines.append(
                f"- **{variant} does not retrieve** (best passkey accuracy with {fewest} key(s): {best:.0%}): the "
                "attribution shares below describe a model that fails the task; train it further (the paper-scale "
                "recipe) before reading them"
            )
    first = next(iter(models.values()), None)
    if first is None:
        return "\n".join(lines) + "\n"
    lengths, keys = first["lengths"], first["keys"]

    # Table 6
    heads = [f"N={n} k={k}" for n in lengths for k in keys]
    lines += ["", "## Table 6: passkey accuracy (%)", "", "| Model | " + " | ".join(heads) + " |",
              "| --- |" + " --- |" * len(heads)]  # fmt: skip
    for variant, r in models.items():
        lines.append(f"| ours, {variant} | " + " | ".join(_pct(r["passkey"].get(h, {}).get("accuracy"))
                                                         for h in heads) + " |")  # fmt: skip
    lines += ["", "The paper's Table 6 (Mamba-2, pretrained, RULER, 1000 samples per cell; accuracy %):", "",
              "| Mamba-2 | " + " | ".join(f"N={n} k={k}" for n in (1024, 2048) for k in KEYS) + " |",
              "| --- |" + " --- |" * 6]  # fmt: skip
    for size, table in PAPER_TABLE6.items():
        lines.append(f"| {size} | " + " | ".join(f"{v:.1f}" for n in (1024, 2048) for v in table[n]) + " |")

    # Table 4
    multi = [k for k in keys if k > 1]
    heads4 = [f"N={n} k={k} {w}" for n in lengths for k in multi for w in ("first", "later")]
    lines += ["", "## Table 4: passkey accuracy (%) when the gold key is the first to appear or a later one", "",
              "| Model | " + " | ".join(heads4) + " |", "| --- |" + " --- |" * len(heads4)]  # fmt: skip
    for variant, r in models.items():
        cells = []
        for n in lengths:
            for k in multi:
                s = r["passkey"].get(f"N={n} k={k}", {})
                cells += [_pct(s.get("first", {}).get("accuracy")), _pct(s.get("later", {}).get("accuracy"))]
        lines.append(f"| ours, {variant} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's Table 4 (Mamba-2, pretrained, N = 1024, 1000 samples; accuracy %):", "",
              "| Mamba-2 | 2 keys, first | 2 keys, second | 4 keys, first | 4 keys, second+ |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for size, values in PAPER_TABLE4.items():
        lines.append(f"| {size} | " + " | ".join(f"{v:.1f}" for v in values) + " |")

    lines += ["", "## What the wrong passkey answers spell", "",
              "| Model | setting | wrong | first key's value | another key's value | no key's value |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for variant, r in models.items():
        for name, s in r["passkey"].items():
            w = s["wrong"]
            lines.append(f"| {variant} | {name} | {w['n']} | {w['first_value']} | {w['other_value']} | "
                         f"{w['no_value']} |")  # fmt: skip

    if any(r["fwe"] for r in models.values()):
        lines += ["", "## Frequent-word extraction accuracy (%)", "",
                  "| Model | setting | exact (3 in order) | set recall | rank 1 | rank 2 | rank 3 | planted counts |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for variant, r in models.items():
            for name, s in r["fwe"].items():
                pr = " | ".join(_pct(v) for v in s["per_rank"])
                counts = ", ".join(map(str, s["counts"][:6])) + (", …" if len(s["counts"]) > 6 else "")
                lines.append(f"| {variant} | {name} | {_pct(s['exact'])} | {_pct(s['set_recall'])} | {pr} | "
                             f"{counts} |")  # fmt: skip

    # attribution shares
    cats = first["categories"]
    lines += [
        "",
        "## Where the attribution mass goes (passkey, %)",
        "",
        "Share of |score| on each span of the row that predicts each answer digit, averaged over the answer digits "
        "and the samples of a cell (cells: the model's answer right or wrong × the gold key first or later; "
        "multi-key settings pooled per length). gold / first: the key–value span of the gold / first needle "
        '("first" is empty when the gold key is first); other keys: the other needles; filler: intro, filler and '
        "the needles' template words; query: the question, the answer tokens before the row and the row's own "
        "token. Signed scores count by magnitude (evidence against the answer is mass too). Per-layer methods: mean "
        "over layers (every layer below).",
    ]
    for variant, r in models.items():
        lines += ["", f"### {variant}", "", "| Method | setting | cell | n | " + " | ".join(cats) + " |",
                  "| --- | --- | --- | --- |" + " --- |" * len(cats)]  # fmt: skip
        for e in r["methods"].values():
            if "skipped" in e:
                lines.append(f"| {e['label']} | — | skipped: {e['skipped']} | |" + " |" * len(cats))
                continue
            for n in lengths:
                pooled = pooled_cells(e, [f"N={n} k={k}" for k in multi])
                for cell in CELLS:
                    c = pooled[cell]
                    if not c["n"]:
                        continue
                    vals = " | ".join(_pct(v) for v in c["shares"])
                    lines.append(f"| {e['label']} | N={n} k>1 | {_cell_name(cell)} | {c['n']} | {vals} |")
            single = [f"N={n} k=1" for n in lengths if 1 in keys]
            if single:
                c = pooled_cells(e, single)["all"]
                if c["n"]:
                    lines.append(f"| {e['label']} | k=1 | all | {c['n']} | " + " | ".join(_pct(v) for v in c["shares"])
                                 + " |")  # fmt: skip
        per_layer = {n: e for n, e in r["methods"].items() if e["per_layer"] and "skipped" not in e}
        if per_layer:
            n_layers = r["n_layers"]
            lines += ["", f"Per layer, {variant}: gold / first share (%) on multi-key samples, all lengths, by cell",
                      "", "| Method | cell | " + " | ".join(f"layer {k + 1}" for k in range(n_layers)) + " |",
                      "| --- | --- |" + " --- |" * n_layers]  # fmt: skip
            settings = [f"N={n} k={k}" for n in lengths for k in multi]
            for e in per_layer.values():
                for cell in ("correct|later", "incorrect|later", "correct|first", "incorrect|first"):
                    cells = [e["passkey"].get(key, {}).get("cells", {}).get(cell) for key in settings]
                    total, mean = _pool(cells, layer_mean=False)
                    if total:
                        vals = " | ".join(f"{100 * g:.1f} / {100 * f:.1f}" for g, f in zip(mean[:, 0], mean[:, 1]))
                        lines.append(f"| {e['label']} | {_cell_name(cell)} (n={total}) | {vals} |")

    lines += _answered_section(models, lengths, multi)

    if any(e.get("fwe") for r in models.values() for e in r["methods"].values()):
        lines += ["", "## FWE: contribution per occurrence of each planted word (Figure 3 right)", "",
                  "Share of |score| per occurrence of the rank-r word (its share / its count, ×1000), answer rows "
                  "averaged; the counts are planted exactly. A method that counted would give every occurrence the "
                  "same weight; the paper finds attention to a repeated word decays.", ""]  # fmt: skip
        for variant, r in models.items():
            for setting in r["fwe"]:
                counts = r["fwe"][setting]["counts"]
                shown = min(6, len(counts))
                lines += [f"**{variant}, {setting}**", "",
                          "| Method | " + " | ".join(f"rank {k + 1} (×{counts[k]})" for k in range(shown))
                          + " | share of the top 3 (%) |", "| --- |" + " --- |" * (shown + 1)]  # fmt: skip
                for e in r["methods"].values():
                    f = e.get("fwe", {}).get(setting)
                    if not f:
                        continue
                    per_occ = _layer_mean(f["per_occurrence"])
                    share = _layer_mean(f["shares"])
                    vals = " | ".join(f"{1000 * v:.2f}" for v in per_occ[:shown])
                    lines.append(f"| {e['label']} | {vals} | {100 * sum(share[:3]):.1f} |")
                lines.append("")

    warmed = any("warmup_seconds" in e for r in models.values() for e in r["methods"].values())
    first_use = (
        "Each method's time follows one untimed call on one sample (first-use work: kernel autotuning, compilation); "
        "that call's seconds in parentheses."
        if warmed
        else "No untimed call came first: a method's time includes its first-use work (mamba-ssm's backward kernels "
        "autotune on the first gradient method's first call)."
    )
    lines += ["", "## Wall time (same run, same device)", "", first_use, "",
              "| Method | " + " | ".join(f"{v}: s total / ms per row" for v in models) + " |",
              "| --- |" + " --- |" * len(models)]  # fmt: skip
    names: list[str] = []
    for r in models.values():
        names += [n for n in r["methods"] if n not in names]
    for name in names:
        cells = []
        label = name
        for r in models.values():
            e = r["methods"].get(name)
            if e is None or not e["rows"]:
                cells.append("—")
                continue
            label = e["label"]
            warm = f" ({e['warmup_seconds']:.1f})" if "warmup_seconds" in e else ""
            cells.append(f"{e['seconds']:.1f} / {1000 * e['seconds'] / e['rows']:.0f}{warm}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(suite: dict, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    return _write_report(suite, out_dir, stem, render_markdown)


# --- figures --------------------------------------------------------------------------------------------------------


def write_figures(suite: dict, examples: dict[str, dict], out_dir: str | Path, stem: str) -> list[Path]:
    """Three PNGs: ``<stem>-shares.png`` (passkey shares per method, wrong vs right answers, gold key later),
    ``<stem>-fwe.png`` (FWE contribution per occurrence vs planted count) and ``<stem>-long.png`` (one long sample:
    span-aggregated bars, the whole row, rows zoomed to the needles; :func:`latim_captum.viz.plot_long_context`)."""
    from matplotlib.figure import Figure

    from ..viz import plot_long_context, plot_span_shares

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict = suite["models"]
    written = []

    # 1. shares per method, gold key later, right vs wrong
    panels = [(v, cell) for v in models for cell in ("correct|later", "incorrect|later")]
    fig = Figure(figsize=(7.5 * 2, 3.6 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 2, squeeze=False)
    for ax, (variant, cell) in zip(axes.flat, panels):
        r = models[variant]
        settings = [f"N={n} k={k}" for n in r["lengths"] for k in r["keys"] if k > 1]
        shares, n_cell = {}, 0
        for e in r["methods"].values():
            if "skipped" in e:
                continue
            c = pooled_cells(e, settings)[cell]
            if c["n"]:
                shares[e["label"]] = dict(zip(r["categories"], c["shares"]))
                n_cell = c["n"]
        if shares:
            plot_span_shares(shares, ax=ax, title=f"{variant}: {_cell_name(cell)} (n={n_cell})")
        else:
            ax.set_axis_off()
            ax.set_title(f"{variant}: no {_cell_name(cell)} sample")
    fig.suptitle("Passkey, keys > 1: share of attribution mass per span (the answer digits' rows)")
    path = out_dir / f"{stem}-shares.png"
    fig.savefig(path, dpi=110)
    written.append(path)

    # 2. FWE: per-occurrence contribution vs count
    if any(r["fwe"] for r in models.values()):
        fig = Figure(figsize=(6.5 * len(models), 4.2), layout="constrained")
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, (variant, r) in zip(axes, models.items()):
            setting = f"N={max(r['lengths'])}"
            for e in r["methods"].values():
                f = e.get("fwe", {}).get(setting)
                if f:
                    ax.plot(f["counts"], _layer_mean(f["per_occurrence"]), marker="o", label=e["label"])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("planted count of the word (rank 1 = rightmost)")
            ax.set_ylabel("share of |score| per occurrence")
            ax.set_title(f"{variant}, FWE {setting}")
            ax.legend(fontsize=7)
        fig.suptitle("FWE: does a word's weight follow its frequency? (flat = every occurrence counts the same)")
        path = out_dir / f"{stem}-fwe.png"
        fig.savefig(path, dpi=110)
        written.append(path)

    # 3. one long sample per model: the passkey example
    panels = [(v, ex) for v, per in examples.items() for key, ex in per.items() if ex["sample"].kind == "passkey"]
    if panels:
        variant, ex = panels[-1]
        s = ex["sample"]
        rows = {}
        for label, row in ex["rows"].items():
            rows[label if row.dim() == 1 else f"{label} (last layer)"] = row if row.dim() == 1 else row[-1]
        spans = []
        for k, needle in enumerate(s.needles):
            name = "gold" if k == s.gold else "first" if k == 0 else f"key {k + 1}"
            spans.append((name, *needle.span))
        spans.append(("query", s.haystack[1], s.answer_start))
        task = RetrievalTask(**models[variant]["task"])
        tokens = list(task.decode(ex["ids"]))
        outcome = "right" if ex["outcome"]["correct"] else "wrong"
        fig = plot_long_context(
            rows,
            spans,
            tokens,
            title=f"{variant}, passkey N={s.length} with {len(s.needles)} keys, gold key #{s.gold + 1}: answer "
            f"{' '.join(tokens[s.answer_start : s.answer_start + len(s.answer)])} ({outcome}; gold "
            f"{' '.join(s.answer)}), row of the first answer digit",
        )
        path = out_dir / f"{stem}-long.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written
