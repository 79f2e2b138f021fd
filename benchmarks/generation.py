"""Attributing a generation of K tokens: is the N × N map computed once per sequence, or once per generated token?

ALTI-Logit row i of a sequence does not change when tokens are appended after i (the model is causal), so the
attributions of K generated tokens are K rows of *one* map of the final sequence. This benchmark times, on the shipped
copy models (CPU), K = 64 generated tokens through:

- ``llm``: :class:`latim_captum.LatimLLMAttribution` with ``target=None`` (generate, then attribute);
- ``inseq``: ``inseq.load_model(model, "latim").attribute(prompt, generated_text)`` for the same K generated tokens
  (the copy models' character tokenizer does not round-trip Inseq's decoded generations, so the text is given);
- ``per_token``: the recomputing reference: one ``LatimALTILogit.attribute(prefix, target=token)`` per generated
  token (what a loop over the generated tokens costs; each call computes the rows it needs from scratch).

For each it reports the wall time (median of ``--repeats``), the time spent generating, and the **map rows** the engine
computed (every ``layer_maps`` call counted by its rows, summed over layers): one full map of a sequence of N tokens is
``N`` rows per layer, so a path that recomputes per token shows about ``K·N/2`` rows per layer.

Run it against another checkout of the package (e.g. the code before a change) with ``PYTHONPATH=that/checkout``::

    python benchmarks/generation.py --label after --out benchmarks/results
    PYTHONPATH=/tmp/before python benchmarks/generation.py --label before --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import latim_captum
from latim_captum import LatimALTILogit, LatimLLMAttribution
from latim_captum.models import copy_task_of, load_copy_model


class RowCounter:
    """Counts the map rows the engine computes (every ``layer_maps`` call of the layer loops and the row paths)."""

    def __init__(self) -> None:
        import latim_captum.maps.all_layers as all_layers
        import latim_captum.maps.rows as rows

        self.modules = (all_layers, rows)
        self.rows = 0
        self.calls = 0

    def __enter__(self) -> RowCounter:
        self.saved = [module.layer_maps for module in self.modules]
        for module, real in zip(self.modules, self.saved):
            module.layer_maps = self._wrap(real)
        return self

    def __exit__(self, *exc) -> None:
        for module, real in zip(self.modules, self.saved):
            module.layer_maps = real

    def _wrap(self, real: Callable) -> Callable:
        def counted(layer, *args, rows=None, **kwargs):
            n = layer.residual.shape[1]
            self.rows += n if rows is None else rows[1] - rows[0]
            self.calls += 1
            return real(layer, *args, rows=rows, **kwargs)

        return counted


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def measure(variant: str, k: int, repeats: int) -> dict:
    model, tok = load_copy_model(variant)
    model.generation_config.pad_token_id = tok.pad_token_id
    task, seed = copy_task_of(variant)
    sample = task.sample(1, seed + 12345)[0]
    prompt = sample[: task.length + 1]  # the source and the separator: the model copies from there
    method = LatimALTILogit(model)
    llm = LatimLLMAttribution(method, tok)
    n_layers = latim_captum.trace(model, prompt[None]).n_layers
    result: dict = {"variant": variant, "prompt_tokens": int(prompt.numel()), "generated": k, "layers": n_layers}

    # generation alone (what any path spends before attributing), with the same call LatimLLMAttribution makes
    gen = getattr(llm, "generate", None)
    if gen is not None:
        gen_time, _, generated = timed(lambda: gen(prompt, {"max_new_tokens": k, "do_sample": False}), repeats)
    else:  # an older LatimLLMAttribution: its private greedy loop
        gen_time, _, generated = timed(lambda: llm._generate(prompt, k), repeats)
    result["generate_s"] = gen_time
    target = generated.reshape(-1)[:k]
    n = prompt.numel() + target.numel() - 1
    result["sequence_tokens"] = int(n)

    with RowCounter() as count:
        median, times, res = timed(lambda: llm.attribute(prompt, max_new_tokens=k), repeats)
    result["llm"] = {"median_s": median, "runs_s": times, "map_rows_per_layer": count.rows / repeats / n_layers,
                     "output_tokens": len(res.output_tokens)}  # fmt: skip

    def per_token():
        full = torch.cat([prompt, target])
        rows = []
        for j in range(target.numel()):
            prefix = full[None, : prompt.numel() + j]
            rows.append(method.attribute(prefix, target=int(target[j])))
        return rows

    with RowCounter() as count:
        median, times, _ = timed(per_token, repeats)
    result["per_token"] = {"median_s": median, "runs_s": times, "map_rows_per_layer": count.rows / repeats / n_layers}

    try:
        import inseq
    except ImportError:
        result["inseq"] = None
        return result
    text = "".join(tok.convert_ids_to_tokens(prompt.tolist()))
    generated_text = text + "".join(tok.convert_ids_to_tokens(target.tolist()))
    am = inseq.load_model(model, "latim", tokenizer=tok)
    with RowCounter() as count:
        median, times, out = timed(lambda: am.attribute(text, generated_text, show_progress=False), repeats)
    steps = out[0].target_attributions.shape[1]
    result["inseq"] = {"median_s": median, "runs_s": times, "map_rows_per_layer": count.rows / repeats / n_layers,
                       "steps": int(steps)}  # fmt: skip
    return result


def render(report: dict) -> str:
    lines = [
        f"# Generation attribution, K = {report['k']} tokens ({report['label']}, device {report['device']})",
        "",
        f"Code: {report['code']}; torch {report['torch']}, {report['threads']} threads, median of "
        f"{report['repeats']} runs. Map rows per layer: rows of the N × N maps the engine computed, summed over calls "
        "(one full map of the final sequence is N rows).",
        "",
        "| model | N | path | wall (s) | of which generation (s) | map rows per layer |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        for path in ("llm", "inseq", "per_token"):
            entry = r.get(path)
            if not entry:
                continue
            gen = f"{r['generate_s']:.2f}" if path == "llm" else ("(Inseq's)" if path == "inseq" else "0")
            lines.append(
                f"| {r['variant']} | {r['sequence_tokens']} | {path} | {entry['median_s']:.2f} | {gen} | "
                f"{entry['map_rows_per_layer']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=64, help="generated tokens (default 64)")
    parser.add_argument("--variants", nargs="+", default=["mamba1", "mamba2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    report = {
        "label": args.label,
        "device": "cpu",
        "k": args.k,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "code": str(Path(latim_captum.__file__).resolve().parent),
        "results": [measure(v, args.k, args.repeats) for v in args.variants],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"generation-k{args.k}-cpu-{args.label}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
