"""Whole-sequence attribution: every row of ALTI-Logit at once against gradient methods position by position.

Inseq users attribute every generated token. A gradient method pays per attributed position: one backward pass for
Saliency, ``steps`` of them for Integrated Gradients; ALTI-Logit's ``N × N`` map gives all ``N`` rows from one
trace. Timed in one run on one random-weight model with a published shape (:func:`latim_captum.bench_speed.
build_model`), each method after an untimed call of the same shapes:

- ``latim``: ``alti_logit(model, ids)`` end to end (trace and all-layer maps, every row explaining its predicted next
  token), with the default arguments and with ``precision="tf32"`` (CUDA);
- ``saliency``: Captum ``Saliency`` on the input embeddings for each position's predicted next token, ``--batch``
  positions per call (the sequence replicated, each copy's forward reading its own position);
- ``lig``: Captum ``LayerIntegratedGradients`` on the embedding layer, 50 steps, ``internal_batch_size`` keeping
  ≤ 8,192 tokens per pass, the same batching of positions.

A gradient method that would run longer than ``--method-seconds`` attributes positions spread over the sequence
until its time is spent, and its time for all ``N`` positions is extrapolated from the measured per-position time
(positions cost the same: every one is a full-length pass); the report says which numbers are extrapolated.

With Inseq installed, a ``K``-token generation as Inseq users run it: ``inseq.load_model(model, "latim")`` against
``"integrated_gradients"`` and ``"saliency"``, each attributing the same prompt and generated text (a word-level
tokenizer over the model's vocabulary, made here).

Usage::

    latim bench whole-sequence --quick --out /tmp/whole            # tiny, CPU, < 1 minute
    latim bench whole-sequence --device cuda --model mamba2 --tokens 2048 --out whole-mamba2
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ._environment import device_name, provenance, provenance_lines
from ._validation import check_device
from .adapters import get_adapter
from .bench_speed import build_model, timed

__all__ = ["add_arguments", "main", "run", "to_markdown"]

#: tokens per backward pass of the gradient methods (batched positions × steps × N)
TOKENS_PER_PASS = 2**13


def _position_logits(model) -> Callable[..., Tensor]:
    """``forward(x, positions)``: the logits of each example at its own position, ``[B, V]``; ``x`` ids or
    embeddings (Captum expands ``positions`` with the inputs across steps and internal batches)."""

    def forward(x: Tensor, positions: Tensor) -> Tensor:
        kwargs = {"input_ids": x} if x.dtype == torch.long else {"inputs_embeds": x}
        logits = model(**kwargs).logits
        return logits[torch.arange(logits.shape[0], device=logits.device), positions]

    return forward


def position_attributor(
    name: str, model, ids: Tensor, predicted: Tensor, *, batch: int, steps: int = 50
) -> Callable[[Tensor], Tensor]:
    """``attribute(positions)``: ``name``'s (``"saliency"`` or ``"lig"``) attributions of ``ids`` (``[1, N]``) for
    the predicted next token at each of ``positions`` (``[P]``), one replicated sequence per position, ``[P, N, D]``.
    LIG runs ``steps`` steps from a zero-id baseline with ≤ :data:`TOKENS_PER_PASS` tokens per pass."""
    from captum.attr import LayerIntegratedGradients, Saliency

    n = ids.shape[1]
    forward = _position_logits(model)
    embed = get_adapter(model).embeddings
    if name == "saliency":
        saliency = Saliency(forward)

        def attribute(pos: Tensor) -> Tensor:
            with torch.no_grad():
                embeds = embed(ids.expand(len(pos), -1))
            embeds.requires_grad_(True)
            return saliency.attribute(embeds, target=predicted[pos], additional_forward_args=(pos,), abs=True)

        return attribute
    if name == "lig":
        lig = LayerIntegratedGradients(forward, embed)
        per_pass = max(1, min(steps * batch, TOKENS_PER_PASS // n))

        def attribute(pos: Tensor) -> Tensor:
            rep = ids.expand(len(pos), -1)
            return lig.attribute(
                rep, baselines=torch.zeros_like(rep), target=predicted[pos], additional_forward_args=(pos,),
                n_steps=steps, internal_batch_size=per_pass,
            )  # fmt: skip

        return attribute
    raise ValueError(f"unknown gradient method {name!r}; choose saliency or lig")


def gradient_method(
    name: str, model, ids: Tensor, predicted: Tensor, *, batch: int, seconds: float, steps: int = 50
) -> dict:
    """Attribute the positions of ``ids`` (``[1, N]``) with :func:`position_attributor`, ``batch`` per call, until
    all are done or ``seconds`` are spent: the measured time, the positions done and the time for all ``N``
    (measured, or extrapolated linearly)."""
    n = ids.shape[1]
    device = ids.device
    attribute = position_attributor(name, model, ids, predicted, batch=batch, steps=steps)
    # a random order: a run cut by its budget has measured early and late positions alike
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(device)
    attribute(order[: min(batch, n)])  # untimed: first-call work (kernel autotuning, cuBLAS handles) at these shapes
    done, wall = 0, 0.0
    while done < n and wall < seconds:
        chunk = order[done : done + batch]
        step_s, _, _ = timed(lambda chunk=chunk: attribute(chunk), device)
        wall += step_s
        done += len(chunk)
    per_pass = batch * n if name == "saliency" else max(1, min(steps * batch, TOKENS_PER_PASS // n)) * n
    return {"positions": done, "measured_s": wall, "all_rows_s": wall * n / done, "extrapolated": done < n,
            "batch": batch, "tokens_per_pass": per_pass}  # fmt: skip


def latim_all_rows(model, ids: Tensor, precision: str | None) -> dict:
    """``alti_logit(model, ids)`` end to end (default arguments, or ``precision``), with its row-sum error."""
    import latim_captum as lc

    kwargs = {} if precision is None else {"precision": precision}
    lc.alti_logit(model, ids[:, : min(ids.shape[1], 256)], **kwargs)  # untimed: first-call work
    wall, peak, res = timed(lambda: lc.alti_logit(model, ids, **kwargs), ids.device)
    error = (res.scores.sum(-1) - (res.logits - res.offset)).abs().max() / res.logits.abs().max()
    return {"wall_s": wall, "peak_gib": peak, "row_sum_rel_error": float(error)}


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer whose token ``k`` is the word ``w<k>`` (round-trips any id sequence as text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={f"w{k}": k for k in range(vocab_size)}, unk_token="w0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="w0", pad_token="w0", eos_token="w1")


def inseq_generation(model, *, prompt_tokens: int, k: int, methods: Sequence[str], seed: int = 0) -> dict:
    """Inseq on a ``k``-token greedy generation: each method attributes the same prompt and generated text."""
    import inseq

    vocab = get_adapter(model).vocab_size
    tok = word_tokenizer(vocab)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(2, vocab, (1, prompt_tokens), generator=gen).to(device)
    out = prompt
    with torch.no_grad():  # greedy, one full forward per token: the random models run without a cache
        for _ in range(k):
            nxt = model(out).logits[:, -1].argmax(-1, keepdim=True)
            out = torch.cat([out, nxt], dim=1)
    prompt_text, full_text = tok.decode(prompt[0]), tok.decode(out[0])
    results: dict = {"prompt_tokens": prompt_tokens, "generated": k}
    for name in methods:
        am = inseq.load_model(model, name, tokenizer=tok)
        am.attribute(prompt_text, tok.decode(out[0, : prompt_tokens + 2]), show_progress=False)  # untimed
        wall, _, attr = timed(lambda am=am: am.attribute(prompt_text, full_text, show_progress=False), device)
        results[name] = {"wall_s": wall, "steps": int(attr[0].target_attributions.shape[1])}
    return results


def run(args: argparse.Namespace, on_update: Callable[[dict], None] | None = None) -> dict:
    """Every timing of one model; see the module docstring. ``on_update(results)`` after each measurement (a run cut
    by a time limit keeps what it measured)."""
    update = on_update or (lambda results: None)
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = args.tokens or (24 if args.quick else 2048)
    model = build_model(args.model, args.quick, torch.float32, device)
    vocab = get_adapter(model).vocab_size
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        predicted = model(ids).logits[0].argmax(-1)
    gpu = device_name(device)
    out: dict = {"device": gpu, "model": args.model, "quick": args.quick, "N": n, "latim": {}, "gradients": {},
                 **provenance(args)}  # fmt: skip
    precisions = [None, "tf32"] if device.type == "cuda" else [None]
    for precision in precisions:
        out["latim"][precision or "default"] = latim_all_rows(model, ids, precision)
        update(out)
    base = out["latim"]["default"]["wall_s"]
    out["ratios_vs_latim_default"] = {}
    for name in args.methods:
        out["gradients"][name] = gradient_method(
            name, model, ids, predicted, batch=args.batch, seconds=args.method_seconds
        )
        out["ratios_vs_latim_default"][name] = out["gradients"][name]["all_rows_s"] / base
        update(out)
    k = args.generate if args.generate is not None else (4 if args.quick else 64)
    if k:
        try:
            import inseq  # noqa: F401
        except ImportError:
            out["inseq"] = None
        else:
            out["inseq"] = inseq_generation(model, prompt_tokens=args.prompt_tokens, k=k,
                                            methods=("latim", "integrated_gradients", "saliency"))  # fmt: skip
    return out


def to_markdown(res: dict) -> str:
    """The report: seconds and ratios to LaTIM's default call."""
    n = res["N"]
    lines = [f"# Whole-sequence attribution ({res['device']}, {res['model']}, N = {n})", "",
             *provenance_lines(res),
             f"All {n} rows (each position's predicted next token), seconds and × LaTIM's default call:", "",
             "| method | positions timed | wall s (all rows) | × LaTIM default | note |",
             "|---|---|---|---|---|"]  # fmt: skip
    base = res["latim"]["default"]["wall_s"]
    for prec, entry in res["latim"].items():
        note = f"row sums within {entry['row_sum_rel_error']:.0e} of the logit; peak {entry['peak_gib']:.2f} GiB"
        lines.append(f"| LaTIM ALTI-Logit ({prec}) | {n} | {entry['wall_s']:.2f} | {entry['wall_s'] / base:.2f} | "
                     f"{note} |")  # fmt: skip
    names = {"saliency": "Saliency", "lig": "LayerIntegratedGradients (50 steps)"}
    for name, g in res["gradients"].items():
        note = f"extrapolated from {g['positions']} positions" if g["extrapolated"] else "measured"
        lines.append(f"| {names[name]} | {g['positions']} | {g['all_rows_s']:.2f} | {g['all_rows_s'] / base:.1f} | "
                     f"{note}, {g['batch']} positions per call |")  # fmt: skip
    inseq_res = res.get("inseq")
    if inseq_res:
        lat = inseq_res["latim"]["wall_s"]
        lines += ["", f"Inseq, a {inseq_res['generated']}-token greedy generation after a {inseq_res['prompt_tokens']}"
                  "-token prompt (same texts for every method):", "",
                  "| Inseq method | wall s | × latim | steps |", "|---|---|---|---|"]  # fmt: skip
        for name in ("latim", "integrated_gradients", "saliency"):
            e = inseq_res[name]
            lines.append(f"| {name} | {e['wall_s']:.2f} | {e['wall_s'] / lat:.1f} | {e['steps']} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (``latim bench whole-sequence``)."""
    from .bench_speed import MODELS

    parser.add_argument("--quick", action="store_true", help="tiny model and lengths (CPU, < 1 minute)")
    parser.add_argument("--model", default="mamba2", choices=MODELS, help="model shape (default mamba2: 130M)")
    parser.add_argument("--tokens", type=int, default=None, help="sequence length N (default 2048; quick 24)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--methods", nargs="+", default=["saliency", "lig"], choices=["saliency", "lig"])
    parser.add_argument("--batch", type=int, default=8, help="positions per gradient call (default 8)")
    parser.add_argument(
        "--method-seconds", type=float, default=60.0, help="time per gradient method before extrapolating"
    )
    parser.add_argument(
        "--generate", type=int, default=None, help="Inseq generation length K (0: skip; default 64, quick 4)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=32, help="Inseq prompt length (default 32)")
    parser.add_argument("--out", required=True, help="folder for whole-sequence.{json,md}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latim bench whole-sequence", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_and_save(parser.parse_args(argv))


def run_and_save(args: argparse.Namespace) -> int:
    """Run, print and write ``whole-sequence.json`` and ``whole-sequence.md`` under ``--out``."""
    for name in ("tokens", "batch", "generate", "prompt_tokens"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "generate" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ {0 if name == 'generate' else 1}, got {value}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(res: dict) -> None:
        (out / "whole-sequence.json").write_text(json.dumps(res, indent=1))
        (out / "whole-sequence.md").write_text(to_markdown(res))

    start = time.perf_counter()
    res = run(args, on_update=save)
    res["total_s"] = time.perf_counter() - start
    save(res)
    print(to_markdown(res))
    return 0
