"""Copy a trained tiny copy model into the package (``latim_captum/models/copy-<variant>/``), float16, with a card.

Usage::

    python tools/ship_copy_model.py RUN_DIR mamba1

Reads ``RUN_DIR/metrics.json`` and ``training_args.json`` (written by ``latim_captum.copying.train``), re-checks the
accuracy of the float16 copy on the held-out set, and writes safetensors + config + tokenizer + metrics + README.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from latim_captum.copying.data import CopyTask
from latim_captum.copying.train import evaluate_copy

CARD = """# copy-{variant}: tiny {cls} trained on the copying task

Shipped with latim-captum so that `latim demo` works offline. Not the paper's model (that one is 8 layers,
d_model 512, 50-token strings: see `latim_captum/copying/train.py --scale paper`).

- Task: `source <SEP> copy` with {length}-token random strings over a {vocab}-token vocabulary (separator `|`
  included; symbols `{symbols}`), e.g. `{example}`. Loss on the copy part only.
- Tokenizer: one token per character; `|` is an ordinary token. Two more ids follow the task's: `<pad>` (the
  config's pad and BOS; never in a sample; no EOS: a copy string has a fixed length) and `<unk>` (any other
  character; `latim attribute` refuses such text). Decoding joins the characters without spaces.
- Model: {layers} layers, d_model {d_model}, state {state}{extra}; mimetic initialisation (Trockman et al., 2024,
  as implemented in `latim_captum/copying/mimetic.py`) in layer(s) {mimetic} (0-based).
- Training: AdamW lr {lr}, inverse-square-root schedule, {warmup} warm-up steps, {steps} steps of batch {batch}
  from {n_train} training samples, seed {seed}, on CPU ({minutes:.1f} min).
- Held-out accuracy ({n_eval} samples, seed {eval_seed}, teacher forcing, float16 weights loaded as float32):
  **token {token_acc:.4f}, exact match {exact:.4f}**.
- Weights are stored in float16 to keep the package small; `load_copy_model` loads them as float32.

Regenerate:

```bash
{command}
python tools/ship_copy_model.py runs/copy-{variant}-tiny {variant}
```
"""


def main(run_dir: str, variant: str) -> int:
    run = Path(run_dir)
    meta = json.loads((run / "metrics.json").read_text())
    args = json.loads((run / "training_args.json").read_text())
    dest = Path(__file__).resolve().parents[1] / "latim_captum" / "models" / f"copy-{variant}"
    if dest.exists():
        shutil.rmtree(dest)
    model = AutoModelForCausalLM.from_pretrained(run, dtype=torch.float32)
    model.half().save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(run).save_pretrained(dest)
    task = CopyTask(**meta["task"])
    check = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
    held_out = task.sample(meta["n_eval"], meta["seed"] + 1)
    acc = evaluate_copy(check, task, held_out)
    meta["shipped_fp16_eval"] = acc
    (dest / "metrics.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "history"}, indent=2) + "\n")
    for extra in ("generation_config.json",):
        (dest / extra).unlink(missing_ok=True)
    # the step count actually trained (a --max-minutes guard may have stopped the run early): rerun with --steps
    flags = [
        f"--variant {variant}",
        "--scale tiny",
        f"--seed {args['seed']}",
        f"--steps {meta['steps']}",
        f"--out runs/copy-{variant}-tiny",
    ]
    card = CARD.format(
        variant=variant,
        cls=type(model).__name__,
        length=task.length,
        vocab=task.vocab_size,
        symbols=task.encode_text(torch.arange(task.vocab_size - 1)[None])[0],
        example=task.encode_text(task.sample(1, 0))[0],
        layers=args["layers"],
        d_model=args["d_model"],
        state=args["state"],
        extra=f", head_dim {args['head_dim']}" if variant == "mamba2" else "",
        mimetic=args["mimetic_layers"],
        lr=args["lr"],
        warmup=args["warmup"],
        steps=meta["steps"],
        batch=args["batch"],
        n_train=args["n_train"],
        seed=args["seed"],
        minutes=meta["minutes"],
        n_eval=meta["n_eval"],
        eval_seed=meta["seed"] + 1,
        token_acc=acc["token_acc"],
        exact=acc["exact_match"],
        command="python -m latim_captum.copying.train " + " ".join(flags),
    )
    (dest / "README.md").write_text(card)
    print(f"shipped {dest}: token acc {acc['token_acc']:.4f}, exact {acc['exact_match']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
