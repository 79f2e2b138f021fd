"""The ``latim`` command line.

- ``latim demo``: the embedded copy models, every method on a fresh copy example, faithfulness table, heatmaps.
- ``latim attribute``: one method's map for a text on any supported model (embedded name, local folder, hub name).
- ``latim attribute-dataset``: the maps of several methods for every prompt of a JSONL file (or a Hugging Face
  dataset), written as resumable safetensors shards with a JSON index; data parallel under ``torchrun``
  (:mod:`latim_captum.dataset`); ``--device-map`` loads a model sharded over several devices.
- ``latim error-report``: decomposition error per layer and activation strategy (paper Table 5 metric).
- ``latim plan``: the longest input each request (all maps, ALTI-Logit, one row with the trace on the GPU or the
  host) admits on a GPU of a given size, from the memory guard's arithmetic on the model's shape
  (:mod:`latim_captum.plan`).
- ``latim bench copying``: the Table 2 benchmark on a trained copy model.
- ``latim bench alignment``: the Table 3 analogue (AER) on the synthetic translation task
  (:mod:`latim_captum.alignment`), tiny models trained in the run by default.
- ``latim bench retrieval``: the long-context retrieval study (§4.3, Tables 4 and 6, Figure 3) on passkey and
  frequent-word extraction (:mod:`latim_captum.retrieval`), tiny models trained in the run by default.
- ``latim bench speed``: speed and memory of the fast path against ``_ref``, LIG-50 and a forward pass
  (:mod:`latim_captum.bench_speed`, also ``benchmarks/speed.py``).
- ``latim inseq ...``: Inseq's own CLI (``inseq attribute``, ``attribute-dataset``, ...) with the LaTIM methods and
  the baselines registered (:mod:`latim_captum.inseq_cli`).

Every command has ``--help``. Bad arguments, missing or unwritable files, a model folder that cannot be loaded
safely (custom code, refused pickles, broken files), unsupported models, a device this machine lacks, a missing
Triton and a request that cannot fit in memory end with one ``latim: error:`` line and exit status 2; ``--debug``
(before or after the command) shows the traceback instead. Models are loaded without running a folder's code
(``trust_remote_code=False``), from safetensors where the folder has them (:mod:`latim_captum._loading`). Every
output file is checked writable before any work, and the files written are reported by their real names.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from ._environment import device_name
from ._validation import COMPUTE_DTYPE_NAMES
from .activations import ACTIVATIONS, DEFAULT_ACTIVATION
from .adapters import get_adapter
from .catalog import registry_names
from .maps.options import BACKENDS, PRECISIONS

__all__ = ["build_parser", "main"]

#: the registry names ``latim demo`` runs by default (the method table's demo entries)
DEMO_METHODS: tuple[str, ...] = tuple(registry_names(demo_only=True))


def _positive_float(text: str) -> float:
    """argparse type of sizes in GiB: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type of counts and sizes: 0 or a negative value would fall back to a default or do nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"latim: error: {message} (see {self.prog} --help)\n")


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def parse_device_map(value: str | None) -> str | dict | None:
    """``--device-map``: None, a strategy name (``auto``, ``balanced``, ``sequential``, ...) or a JSON object mapping
    module names to devices (``'{"backbone.layers.1": "cpu", "lm_head": "disk"}'``)."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--device-map is not a valid JSON object ({err.msg})") from None
    return parsed


def load_model(
    spec: str, device: str = "cpu", device_map: str | dict | None = None, offload_folder: str | None = None
):
    """``(model, tokenizer)`` from an embedded name (``mamba1``/``mamba2``), a local folder or a hub name, loaded
    safely (:func:`latim_captum._loading.load_pretrained`) onto a checked ``device``.

    With ``device_map`` (``"auto"`` or a module → device dict, as ``from_pretrained`` takes it; needs ``accelerate``)
    the model is loaded sharded over the devices it names (``"disk"`` offloads to ``offload_folder``) and ``device``
    is ignored."""
    from ._loading import load_pretrained
    from ._validation import check_device
    from .models import COPY_MODELS, copy_model_path, load_copy_model

    dev = check_device(device) if device_map is None else None
    if spec in COPY_MODELS and Path(spec).is_dir():  # never a silent choice between two models of one name
        raise ValueError(f"--model {spec} names an embedded model and a folder here; give the folder as ./{spec}")
    if spec in COPY_MODELS and device_map is None:
        model, tok = load_copy_model(spec)
    else:
        source = copy_model_path(spec) if spec in COPY_MODELS else spec
        placement = {} if device_map is None else {"device_map": device_map, "offload_folder": offload_folder}
        model, tok = load_pretrained(source, dtype=torch.float32, **placement)
    get_adapter(model)  # TypeError naming the class for unsupported models
    if dev is None:
        return model.eval(), tok  # accelerate placed it; .to() would undo the map
    return model.eval().to(dev), tok


def _check_backend(backend: str, device: str) -> None:
    """``--backend triton`` needs the triton package and a CUDA device: said before the model is loaded."""
    if backend != "triton":
        return
    if importlib.util.find_spec("triton") is None:
        raise ValueError("--backend triton needs the triton package (pip install triton); or use --backend fast")
    if torch.device(device).type != "cuda":
        raise ValueError(f"--backend triton runs on CUDA only, not --device {device}; use --backend fast there")


def _check_writable(outputs: Sequence[tuple[str, Path]]) -> None:
    """Every output file can be created or overwritten, and no two are the same file: checked before the work, so
    a bad ``--json`` does not leave a figure without its scores. Opening in append mode tests the real permissions
    (read-only mounts too); a file created by the check is removed again."""
    seen: dict[Path, str] = {}
    for label, path in outputs:
        real = path.expanduser().resolve()
        if real in seen:
            raise ValueError(f"{label} and {seen[real]} are the same file ({path})")
        seen[real] = label
        if real.is_dir():
            raise ValueError(f"{label} {path} is a folder; give a file name")
        existed = real.exists()
        try:
            with open(real, "a"):
                pass
        except OSError as err:
            raise ValueError(f"{label} {path} cannot be written: {err.strerror or err}") from None
        if not existed:
            real.unlink()


def _check_out_dir(label: str, folder: Path, names: Sequence[str]) -> None:
    """Create the output folder ``folder`` (an existing file there is an error) and check ``names`` in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{label} {folder} cannot be created: {err.strerror or err}") from None
    _check_writable([(label, folder / name) for name in names])


def _tokens(tok, ids: torch.Tensor) -> list[str]:
    return [tok.decode([t]) for t in ids.tolist()]


def _encode(tok, parts: dict[str, str | None]) -> torch.Tensor:
    """``[1, N]`` ids of the texts ``parts`` (``{"--text": ..., "--target": ...}``), each tokenised on its own
    and concatenated, as ``latim attribute-dataset`` and Captum's LLM attribution tokenise a prompt and its target
    (joined, ``"w3 w4" + "w5"`` would read as ``w4w5``).

    Raises:
        ValueError: a text the tokenizer reads as its unknown token beyond the unknown-token strings typed in it
            (the embedded copy models read every character outside ``a``-``o`` and ``|`` as ``<unk>``, a token
            they never saw in training: the map would be of another input).
    """
    from ._validation import check_known_tokens

    given = {flag: text for flag, text in parts.items() if text}
    ids = [tok(text, return_tensors="pt", add_special_tokens=False).input_ids for text in given.values()]
    for (flag, text), part in zip(given.items(), ids):
        check_known_tokens(tok, text, part[0].tolist(), flag)
    return torch.cat(ids, dim=1) if ids else torch.zeros(1, 0, dtype=torch.long)


def cmd_demo(args: argparse.Namespace) -> int:
    from ._plots import save_heatmap, save_layer_grid, save_side_by_side
    from .copying.evaluate import PAPER_TABLE2
    from .copying.metrics import faithfulness
    from .methods import get_method
    from .models import copy_task_of, load_copy_model

    _quiet_transformers()
    out = Path(args.out)
    methods = args.methods or list(DEMO_METHODS)
    width = max(len(get_method(name).label) for name in methods)  # an unknown name fails before any work
    _check_out_dir("--out", out, [f"{v}_scores.json" for v in args.variants])
    for variant in args.variants:
        model, tok = load_copy_model(variant)
        task, _ = copy_task_of(variant)
        ids = task.sample(1, args.seed)
        tokens = _tokens(tok, ids[0])
        with torch.no_grad():
            pred = model(input_ids=ids).logits[0].argmax(-1)
        rows = list(task.query_rows)
        acc = float((pred[rows] == ids[0, [r + 1 for r in rows]]).float().mean())
        print(
            f"\n=== {variant}: {type(model).__name__}, {get_adapter(model).n_layers} layers, "
            f"input {''.join(tokens)!r}, copy accuracy on it {acc:.2f}"
        )
        print(
            f"{'method':{width}s} {'layer':>5s}  {'AUC':>5s} {'AP':>5s} {'R@K':>5s}   "
            "paper (AUC/AP/R@K, 50-token task)"
        )
        side: dict[str, torch.Tensor] = {}
        summary = {}
        for name in methods:
            method = get_method(name)
            maps = method(model, ids)[0].float()
            if maps.dim() == 3:
                scores = [faithfulness(maps[k][None], task.length) for k in range(maps.shape[0])]
                best = max(range(len(scores)), key=lambda k: scores[k]["auc"])
                score, layer_s, shown = scores[best], str(best + 1), maps[best]
                save_layer_grid(maps, tokens, f"{method.label}, {variant}", out / f"{variant}_{name}_layers.png")
            else:
                score, layer_s, shown = faithfulness(maps[None], task.length), "all", maps
            save_heatmap(shown, tokens, f"{method.label} (layer {layer_s}), {variant}", out / f"{variant}_{name}.png")
            side[f"{method.label} (layer {layer_s})"] = shown
            summary[name] = {"layer": layer_s, **score}
            ref = PAPER_TABLE2.get(variant, {}).get(name)
            ref_s = " / ".join(f"{v:.2f}" for v in ref) if ref else ""
            print(
                f"{method.label:{width}s} {layer_s:>5s}  {score['auc']:5.2f} {score['ap']:5.2f} "
                f"{score['recall_at_k']:5.2f}   {ref_s}"
            )
        save_side_by_side(side, tokens, f"{variant}: source <SEP> copy", out / f"{variant}_side_by_side.png")
        (out / f"{variant}_scores.json").write_text(
            json.dumps({"input": "".join(tokens), "accuracy": acc, "methods": summary}, indent=2) + "\n"
        )
    print(f"\nfigures and scores written to {out.resolve()}")
    return 0


def _activation_of(method, requested: str | None) -> str | None:
    """The activation strategy ``latim attribute`` uses: ``--activation`` (default ``silu_gate``, exact for SiLU
    models); a registry name's own ``_silu_gate`` suffix must agree with it."""
    if method.family != "latim":
        return None
    suffixed = method.name.endswith("_silu_gate")
    if requested is not None and suffixed and requested != "silu_gate":
        raise ValueError(f"--method {method.name} means activation silu_gate, but --activation {requested} was given")
    return requested or DEFAULT_ACTIVATION


def _attribute_options(method, args: argparse.Namespace) -> tuple[dict, str | None, int | None]:
    """``latim attribute``'s path ``{"backend", "precision", "dtype"}``, activation strategy and layer for
    ``method``, with the defaults filled in; an option that cannot act on ``method`` is an error, never ignored.

    Raises:
        ValueError: ``--activation``, ``--backend`` or ``--precision`` with a method outside LaTIM, ``--dtype`` with
            one that computes in the model's dtype (the gradient methods), or ``--layer`` with a method that
            aggregates every layer.
    """
    if method.family != "latim":
        given = [f"--{name}" for name in ("activation", "backend", "precision") if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{' and '.join(given)}: LaTIM options only, and --method {method.name} is not LaTIM")
    if args.dtype is not None and not method.takes_dtype:
        raise ValueError(f"--dtype: --method {method.name} computes in the model's dtype")
    if args.layer is not None and not method.per_layer:
        raise ValueError(f"--method {method.name} aggregates every layer; --layer applies to per-layer methods only")
    path = {
        "backend": args.backend or "auto",
        "precision": args.precision or "highest",
        "dtype": COMPUTE_DTYPES[args.dtype or "float32"],
    }
    return path, _activation_of(method, args.activation), (-1 if args.layer is None else args.layer)


#: ``--dtype`` choices: LaTIM's compute dtypes (the model keeps its own)
COMPUTE_DTYPES = COMPUTE_DTYPE_NAMES

#: the JSON's ``explains`` per reading of ``latim attribute`` (None: a method that explains no token)
EXPLAINS = {
    None: None,
    "predicted": "predicted next token",
    "next": "true next token (the last row, which has none: the predicted next token)",
}


#: ``latim attribute`` names beyond the registry: the ALTI rollout over every layer (no target), per activation
ROLLOUT_NAMES: dict[str, str] = {"alti_rollout": "silu", "alti_rollout_silu_gate": "silu_gate"}


def _attribute_method(name: str):
    """The registry's method called ``name``, or the ALTI rollout (:func:`latim_captum.alti_rollout`) for
    ``alti_rollout[_silu_gate]``; ``ValueError`` naming every choice otherwise."""
    from .catalog import MethodSpec
    from .methods import Method, available_methods, get_method

    if name in ROLLOUT_NAMES:
        spec = MethodSpec("alti_rollout", "LaTIM (ALTI rollout)", "latim", False, False, measure="alti_rollout")
        return Method(name, spec, ROLLOUT_NAMES[name], fn=None)
    try:
        return get_method(name)
    except ValueError:
        known = ", ".join([*available_methods(), *ROLLOUT_NAMES])
        raise ValueError(f"unknown method {name!r}; choose from {known}") from None


def cmd_attribute(args: argparse.Namespace) -> int:
    from ._plots import figure_path, save_heatmap
    from .api import alti_logit, alti_rollout, interactions
    from .methods import next_token_targets, row_targets

    _quiet_transformers()
    method = _attribute_method(args.method)
    path, act, layer = _attribute_options(method, args)
    _check_backend(path["backend"], args.device)
    figure = figure_path(args.out)
    outputs = [("--out", figure)] + ([("--json", Path(args.json))] if args.json else [])
    _check_writable(outputs)
    model, tok = load_model(args.model, args.device)
    prompt_ids = _encode(tok, {"--text": args.text})
    ids = torch.cat([prompt_ids, _encode(tok, {"--target": args.target})], dim=1).to(args.device)
    n_prompt = prompt_ids.shape[1]
    if ids.shape[1] < 2:
        raise ValueError(f"--text {args.text!r} gives {ids.shape[1]} token(s); need at least 2")
    measure = method.spec.measure
    # what a logit-explaining method explains at each row: the model's own prediction, or with --target each true
    # next token (the last row has none: its prediction); the same for every family
    explains = None if not method.spec.uses_target else ("predicted" if args.target is None else "next")
    target = None if explains is None else row_targets(model, ids, "predicted")
    if explains == "next":
        target = next_token_targets(ids, last=target[:, -1])
    from ._validation import check_layers

    index = None  # the 0-based layer (sublayer) of a per-layer method, as --layer counts
    if method.family == "latim" and method.per_layer:
        n_layers = get_adapter(model).n_sublayers
        index = check_layers(layer, n_layers)[0]  # before any work
        maps = interactions(model, ids, method=measure, activation=act, layers=index, target=target, **path)[0, 0]
    elif measure == "alti_logit":
        maps = alti_logit(model, ids, activation=act, target=target, **path).scores[0]
    elif measure == "alti_rollout":
        maps = alti_rollout(model, ids, activation=act, **path)[0]
    else:
        maps = method(model, ids, **path, **({} if target is None else {"target": target}))[0]
        if maps.dim() == 3:
            n_layers = maps.shape[0]
            index = check_layers(layer, n_layers)[0]
            maps = maps[index]
    # figures and reports count layers from 1 (`latim demo`, `latim bench`: "layer 2" of 2); --layer and the JSON's
    # "layer" from 0, as the Python API does
    layer_s = "all" if index is None else f"{index + 1} of {n_layers}"
    tokens = _tokens(tok, ids[0])
    title = method.label + ("" if act is None else f", activation {act}")
    written = save_heatmap(maps, tokens, f"{title} (layer {layer_s})", figure)
    dtype_s = str(path["dtype"]).removeprefix("torch.") if method.takes_dtype else None
    print(f"wrote {written} ({len(tokens)} tokens, method {args.method}, activation {act}, layer {layer_s})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "method": args.method,
                    "activation": act,  # None outside LaTIM
                    "dtype": dtype_s,  # the compute dtype; None for a method that computes in the model's
                    "backend": path["backend"] if method.family == "latim" else None,
                    "precision": path["precision"] if method.family == "latim" else None,
                    "layer": "all" if index is None else index,  # 0-based, as --layer
                    "layer_label": layer_s,  # 1-based, as the figure's title
                    "explains": EXPLAINS[explains],
                    "targets": None if target is None else target[0].tolist(),  # the token id each row explains
                    "prompt_tokens": n_prompt,  # tokens of --text; those of --target follow
                    "tokens": tokens,  # rows are the query positions, columns the source tokens
                    "scores": (maps if maps.dtype == torch.float64 else maps.float()).cpu().tolist(),
                }
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 0


def cmd_attribute_dataset(args: argparse.Namespace) -> int:
    from .dataset import check_methods, init_distributed, load_hf_dataset, read_jsonl, world_size_from_env

    _quiet_transformers()
    check_methods(args.methods, args.layers)
    if (args.input is None) == (args.hf_dataset is None):
        raise ValueError("give one input: --input FILE.jsonl or --hf-dataset NAME_OR_FOLDER")
    if args.input is not None and args.split is not None:
        raise ValueError("--split picks a split of --hf-dataset; a --input file has none")
    if args.offload_folder is not None and args.device_map is None:
        raise ValueError("--offload-folder is where --device-map offloads layers to disk; give --device-map too")
    fields = {"prompt_field": args.prompt_field, "target_field": args.target_field}
    if args.input is not None:
        examples = read_jsonl(args.input, **fields)
    else:
        examples = load_hf_dataset(args.hf_dataset, split=args.split, **fields)
    device_map = parse_device_map(args.device_map)
    if device_map is not None and world_size_from_env() > 1:
        raise ValueError("--device-map shards one model over devices; under torchrun each rank holds a whole model")
    rank, world, device, initialised = init_distributed(args.device)
    try:
        _check_backend(args.backend, str(device))  # before the model is loaded (attribute_dataset checks it too)
        return _attribute_dataset(args, examples, rank, world, device, device_map)
    finally:
        if initialised:
            import torch.distributed as dist

            dist.destroy_process_group()


def _attribute_dataset(args: argparse.Namespace, examples, rank: int, world: int, device, device_map) -> int:
    import time

    from .dataset import attribute_dataset

    model, tok = load_model(args.model, str(device), device_map=device_map, offload_folder=args.offload_folder)
    start = time.perf_counter()
    index = attribute_dataset(
        model,
        tok,
        examples,
        args.out,
        methods=args.methods,
        activation=args.activation,
        layers=args.layers,
        shard_size=args.shard_size,
        dtype=COMPUTE_DTYPES[args.dtype],
        backend=args.backend,
        precision=args.precision,
        add_special_tokens=args.add_special_tokens,
        model_name=args.model,
        progress=not args.quiet,
    )
    if rank == 0:
        print(
            f"wrote {index} ({len(examples)} examples, methods {' '.join(args.methods)}, {world} process"
            f"{'es' if world > 1 else ''}, {time.perf_counter() - start:.1f} s)"
        )
    return 0


def cmd_error_report(args: argparse.Namespace) -> int:
    from .activations import ACTIVATIONS
    from .api import reconstruction_error
    from .models import COPY_MODELS, copy_task_of

    _quiet_transformers()
    if args.text is not None and not args.text.strip():
        raise ValueError("--text is empty; give a text, or leave --text out for the copy samples")
    specs = [args.model] if args.model else list(COPY_MODELS)
    for spec in specs:
        model, tok = load_model(spec, args.device)
        if args.text is not None:
            ids = _encode(tok, {"--text": args.text})
            if ids.shape[1] < 1:
                raise ValueError(f"--text {args.text!r} gives no tokens with this model's tokenizer")
        elif spec in COPY_MODELS:
            task, seed = copy_task_of(spec)
            ids = task.sample(args.samples, seed + 1000)
        else:
            raise ValueError("--text is needed for a model other than the embedded ones")
        ids = ids.to(args.device)
        n_layers = get_adapter(model).n_sublayers
        print(
            f"\n{spec}: relative error ‖Σ_j T_i(x_j) + b − mixer(h)_i‖ / ‖mixer(h)_i‖ on {ids.shape[0]}×"
            f"{ids.shape[1]} tokens"
        )
        print(f"{'activation':12s} " + " ".join(f"{'layer ' + str(k + 1):>10s}" for k in range(n_layers)))
        for act in ACTIVATIONS:
            errs = reconstruction_error(model, ids, activation=act).tolist()
            print(f"{act:12s} " + " ".join(f"{e:10.2e}" for e in errs))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import markdown, plan, shape_of

    _quiet_transformers()
    gpu_gib = args.gpu_gib
    if gpu_gib is None:
        if not torch.cuda.is_available():
            raise ValueError("--gpu-gib is needed on a machine without CUDA (the GPU memory to plan for)")
        # what the model and LaTIM can have: the guard reads the free memory, less the CUDA context and anything
        # else resident, not the card's total
        gpu_gib = torch.cuda.mem_get_info(0)[0] / 2**30
    outputs = [("--json", Path(args.json))] if args.json else []
    _check_writable(outputs)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.model_dtype)
    shape = shape_of(args.model, dtype)
    gpu_bytes = int(gpu_gib * 2**30)
    host_bytes = int(args.host_gib * 2**30) if args.host_gib else None
    if shape.weight_bytes >= gpu_bytes:
        raise ValueError(f"the weights alone ({shape.weight_bytes / 2**30:.1f} GiB) fill the {gpu_gib:g} GiB given")
    rows = plan(shape, gpu_bytes, host_bytes, length=args.tokens)
    print(markdown(shape, rows, gpu_bytes, host_bytes), end="")
    if args.json:
        record = {"model": shape.name, "widths": shape.widths, "weight_bytes": shape.weight_bytes,
                  "gpu_gib": gpu_gib, "host_gib": args.host_gib, "rows": rows}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {Path(args.json).resolve()}")
    return 0


def _read_resume(path: str, bench: str, key: str) -> dict:
    """The report ``--resume`` names: a ``latim bench <bench>`` .json, with its ``key`` (``methods`` or ``models``)."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume {path}: cannot read a report there ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get(key), dict) or "meta" not in report:
        raise ValueError(f"--resume {path}: not a report of latim bench {bench} (its .json)")
    return report


def _check_resumed_weights(path: str, theirs: dict, run_meta: dict) -> None:
    """A resumed report's model (``theirs``: its meta) must be ``--model``: same weights' fingerprint."""
    if theirs.get("weights") is None:
        raise ValueError(f"--resume {path}: the report has no weights fingerprint (written before --resume existed)")
    if theirs["weights"] != run_meta["weights"]:
        raise ValueError(f"--resume {path}: the report is of other weights than --model ({theirs['weights']} vs "
                         f"{run_meta['weights']})")  # fmt: skip


def _resumed_report(path: str, run_meta: dict) -> dict:
    """The copying report ``--resume`` names, checked to be of the same weights."""
    report = _read_resume(path, "copying", "methods")
    _check_resumed_weights(path, report["meta"], run_meta)
    return report


def _resumed_meta(meta: dict, resumed: Sequence[dict], device: str) -> None:
    """Record in ``meta`` (this run's) the commands that computed the resumed rows (``resumed``: their reports'
    metas) and every device they ran on, this run's last."""
    commands = (c for r in resumed for c in (*r.get("resumed_from", []), r.get("command")))
    meta["resumed_from"] = [c for c in commands if c]
    meta["device"] = ", ".join(dict.fromkeys(d for d in (*(r.get("device") for r in resumed), device) if d))


def cmd_bench_copying(args: argparse.Namespace) -> int:
    from ._validation import check_device
    from .copying.data import CopyTask
    from .copying.evaluate import evaluate_model, load_model_dir, render_markdown, write_report
    from .dataset import weights_fingerprint
    from .models import COPY_MODELS, copy_model_path

    _quiet_transformers()
    check_device(args.device)
    _check_backend(args.backend, args.device)
    stem = f"copying-{args.variant}-{args.scale}"
    _check_out_dir("--out", Path(args.out), [f"{stem}.json", f"{stem}.md"])
    if args.model:
        path = Path(args.model)
    elif args.scale == "tiny":
        path = copy_model_path(args.variant)
    else:
        path = Path("runs") / f"copy-{args.variant}-paper"
    model, _, meta = load_model_dir(path)
    model.to(args.device)
    task = CopyTask(**meta["task"]) if "task" in meta else CopyTask()
    n = args.n_samples if args.n_samples is not None else meta.get("n_eval", 128)
    device = device_name(args.device)
    command = ["latim bench copying", "--variant", args.variant, "--scale", args.scale, "--device", args.device]
    command += ["--model", str(path)] if args.model else []
    command += ["--n-samples", str(args.n_samples)] if args.n_samples is not None else []
    command += ["--methods", *args.methods] if args.methods else []
    command += ["--rows", args.rows] if args.rows != "predict" else []
    command += ["--resume", args.resume] if args.resume else []
    run_meta = {
        "command": " ".join(command),  # every option that changes a number (--batch, --backend: memory, speed)
        "model": str(path) if args.model or args.scale != "tiny" else f"embedded {COPY_MODELS[args.variant]}",
        "scale": args.scale,
        "device": device,
        "seed": meta.get("seed"),
        "steps": meta.get("steps"),
        "train_device": meta.get("device"),
        "train_eval_token_acc": meta.get("eval_token_acc"),
        "weights": weights_fingerprint(model),  # what --resume checks
    }
    resume = _resumed_report(args.resume, run_meta) if args.resume else None
    if resume is not None:  # the methods resumed were computed by the earlier command (kept in resumed_from)
        _resumed_meta(run_meta, [resume["meta"]], device)

    def write_partial(report: dict) -> None:
        write_report({**report, "meta": run_meta}, args.out, stem)

    report = evaluate_model(
        model,
        task,
        n_samples=n,
        seed=int(meta.get("seed", 0)),
        methods=args.methods,
        batch=args.batch,
        max_sequences=args.max_sequences,
        backend=args.backend,
        rows=args.rows,
        quiet=args.quiet,
        on_update=write_partial,
        resume=resume,
    )
    report["meta"] = run_meta
    json_path, md_path = write_report(report, args.out, stem)
    print(render_markdown(report))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _task_models(
    args: argparse.Namespace, task: str, trainer: ModuleType, paper_path: str
) -> tuple[list[Path], list[str], list, str]:
    """The models a task benchmark (``latim bench alignment|retrieval``) scores, with the device, backend and output
    folders checked before any training: ``--model`` folders, tiny models trained in the run by ``trainer`` (a task's
    ``train`` module; CPU, minutes) or the paper-scale folders (``paper_path`` with ``{variant}``). Returns the
    paths, their variants, the loaded ``(model, tokenizer, meta)`` and the report's stem.

    Raises:
        ValueError: neither ``--variant`` nor ``--model``, two models of one variant, or a bad device / folder.
    """
    from ._validation import check_device
    from .tasks.reports import load_model_dir, variant_of

    def stem_of(variants: Sequence[str]) -> str:
        return f"{task}-{variants[0]}-{args.scale}" if len(variants) == 1 else f"{task}-{args.scale}"

    check_device(args.device)
    _check_backend(args.backend, args.device)
    _check_model_choice(args, task)
    if args.variant and not args.model:  # the report's name is known before any training
        _check_out_dir("--out", Path(args.out), [f"{stem_of(args.variant)}.json", f"{stem_of(args.variant)}.md"])
    if args.scale == "tiny" and not args.model:
        _check_out_dir("--train-out", Path(args.train_out), [])
    if args.model:
        paths = [Path(m) for m in args.model]
    elif not args.variant:
        raise ValueError("give --variant (mamba1, mamba2 or both) or --model")
    elif args.scale == "tiny":
        paths = [Path(args.train_out) / f"{task}-{v}-tiny" for v in args.variant]
        for variant, path in zip(args.variant, paths):
            steps = ["--steps", str(args.train_steps)] if args.train_steps else []
            seed = str(args.seed or 0)
            flags = ["--variant", variant, "--scale", "tiny", "--out", str(path), "--seed", seed, *steps]
            trainer.train(trainer.resolve_args([*flags, *(["--quiet"] if args.quiet else [])]))
    else:
        paths = [Path(paper_path.format(variant=v)) for v in args.variant]
    loaded = [load_model_dir(path) for path in paths]
    variants = [variant_of(model) for model, _, _ in loaded]
    if len(set(variants)) < len(variants):
        raise ValueError(f"one model per variant, got {', '.join(variants)}")
    stem = stem_of(variants)
    _check_out_dir("--out", Path(args.out), [f"{stem}.json", f"{stem}.md"])
    return paths, variants, loaded, stem


def _seed_names_paper_models(task: str) -> bool:
    # retrieval's paper-scale folders carry their training seed (gpu-models/retrieval-<variant>-paper-s<seed>)
    return task == "retrieval"


def _check_model_choice(args: argparse.Namespace, task: str) -> None:
    """``--seed`` and ``--train-steps`` choose the models a task benchmark trains (tiny scale) or loads (retrieval's
    paper-scale folders, by seed); given where they choose nothing they are an error, not a line of the recorded
    command that the run did not follow."""
    given = [flag for flag, value in (("--seed", args.seed), ("--train-steps", args.train_steps)) if value is not None]
    if args.model and given:
        raise ValueError(f"{' and '.join(given)}: --model gives the models; these choose the models trained or loaded "
                         "without it")  # fmt: skip
    if args.scale == "paper" and args.train_steps is not None:
        raise ValueError("--train-steps: tiny scale only (the paper-scale models are trained by their own command)")
    if args.scale == "paper" and args.seed is not None and not _seed_names_paper_models(task):
        raise ValueError(f"--seed: the paper-scale {task} models are one folder each (runs/{task}-<variant>-paper); "
                         "it applies to the tiny scale only")  # fmt: skip


def _model_choice_flags(args: argparse.Namespace, task: str) -> list[str]:
    """The flags of a task benchmark's recorded command that chose its models (see :func:`_check_model_choice`): the
    seed and training steps of the tiny models trained in the run, the seed naming retrieval's paper-scale folders."""
    if args.model:
        return []
    if args.scale == "tiny":
        steps = ["--train-steps", str(args.train_steps)] if args.train_steps else []
        return ["--seed", str(args.seed or 0), *steps]
    return ["--seed", str(args.seed or 0)] if _seed_names_paper_models(task) else []


def cmd_bench_alignment(args: argparse.Namespace) -> int:
    from .alignment import train as trainer
    from .alignment.data import AlignmentTask
    from .alignment.evaluate import RESUME_KEYS, evaluate_model, render_markdown, resume_keys, write_report
    from .dataset import weights_fingerprint
    from .tasks.reports import check_resume

    _quiet_transformers()
    to_resume = [(path, _read_resume(path, "alignment", "models")) for path in args.resume or []]  # before training
    paths, variants, loaded, stem = _task_models(args, "alignment", trainer, "runs/alignment-{variant}-paper")
    device = device_name(args.device)
    command = ["latim bench alignment", "--scale", args.scale, "--device", args.device]
    command += ["--model", *map(str, paths)] if args.model else ["--variant", *args.variant]
    command += ["--n-samples", str(args.n_samples)] if args.n_samples else []
    command += ["--methods", *args.methods] if args.methods else []
    command += ["--no-sink"] if args.no_sink else []
    command += ["--ties", args.ties] if args.ties != "first" else []
    command += _model_choice_flags(args, "alignment")
    command += ["--resume", *args.resume] if args.resume else []
    suite: dict = {"meta": {"scale": args.scale, "device": device, "command": " ".join(command)}, "models": {}}
    resumed: dict[str, tuple[str, dict]] = {}  # variant -> (the report file, its model's report)
    for path, report in to_resume:
        for variant, entry in report["models"].items():
            if variant not in variants:
                raise ValueError(f"--resume {path}: the report holds {variant}, which this run does not score")
            if variant in resumed:
                raise ValueError(f"--resume: {variant} is in two reports ({resumed[variant][0]} and {path})")
            resumed[variant] = (path, entry)
    if to_resume:  # the methods resumed were computed by the earlier commands (kept in resumed_from)
        _resumed_meta(suite["meta"], [report["meta"] for _, report in to_resume], device)
    runs = []  # every model's meta and resumed report, checked before any work
    for path, variant, (model, _, meta) in zip(paths, variants, loaded):
        run_meta = {
            "model": str(path),
            "seed": meta.get("seed"),
            "steps": meta.get("steps"),
            "train_device": meta.get("device"),
            "train_eval_token_acc": meta.get("eval_token_acc"),
            "weights": weights_fingerprint(model),  # what --resume checks
        }
        task = AlignmentTask(**meta["task"]) if "task" in meta else AlignmentTask()
        n_samples = args.n_samples if args.n_samples is not None else meta.get("n_eval", 128)
        # a model no resumed report holds (its run was cut before it) starts afresh
        source, resume = resumed.get(variant, (None, None))
        if resume is not None:
            _check_resumed_weights(source, resume.get("meta", {}), run_meta)
            keys = resume_keys(model, task, n_samples=n_samples, seed=int(meta.get("seed", 0)), sink=not args.no_sink,
                               ties=args.ties)  # fmt: skip
            try:
                check_resume(resume, keys, RESUME_KEYS)
            except ValueError as err:
                raise ValueError(f"--resume {source}, {variant}: {err}") from None
            # a run cut before this model still holds its resumed rows
            suite["models"][variant] = {**resume, "meta": {**resume.get("meta", {}), **run_meta}}
        runs.append((variant, model, task, n_samples, meta, run_meta, resume))
    for variant, model, task, n_samples, meta, run_meta, resume in runs:

        def write_partial(report: dict, variant: str = variant, run_meta: dict = run_meta) -> None:
            suite["models"][variant] = {**report, "meta": run_meta}
            suite["models"] = {v: suite["models"][v] for v in variants if v in suite["models"]}  # in run order
            write_report(suite, args.out, stem)

        report = evaluate_model(
            model.to(args.device),
            task,
            n_samples=n_samples,
            seed=int(meta.get("seed", 0)),
            methods=args.methods,
            batch=args.batch,
            max_sequences=args.max_sequences,
            backend=args.backend,
            sink=not args.no_sink,
            ties=args.ties,
            quiet=args.quiet,
            on_update=write_partial,
            resume=resume,
        )
        write_partial(report)
    json_path, md_path = write_report(suite, args.out, stem)
    print(render_markdown(suite))
    print(f"wrote {json_path} and {md_path}")
    return 0


def cmd_bench_retrieval(args: argparse.Namespace) -> int:
    import time

    from .retrieval import train as trainer
    from .retrieval.data import KEYS, LENGTHS, RetrievalTask
    from .retrieval.evaluate import evaluate_model, render_markdown, write_figures, write_report

    _quiet_transformers()
    started = time.time()  # --max-minutes counts the tiny models' training too
    paper = "gpu-models/retrieval-{variant}-paper-s" + str(args.seed or 0)
    paths, variants, loaded, stem = _task_models(args, "retrieval", trainer, paper)
    device = device_name(args.device)
    lengths = args.lengths or list(LENGTHS[args.scale])
    n_samples = args.n_samples or (500 if args.scale == "paper" else 24)
    n_attr = args.n_attr or (24 if args.scale == "paper" else 6)
    command = ["latim bench retrieval", "--scale", args.scale, "--device", args.device]
    command += ["--model", *map(str, paths)] if args.model else ["--variant", *args.variant]
    command += ["--lengths", *map(str, lengths), "--keys", *map(str, args.keys or KEYS)]
    command += ["--n-samples", str(n_samples), "--n-attr", str(n_attr)]
    command += ["--methods", *args.methods] if args.methods else []
    command += ["--no-fwe"] if args.no_fwe else []
    command += _model_choice_flags(args, "retrieval")
    suite: dict = {"meta": {"scale": args.scale, "device": device, "command": " ".join(command)}, "models": {}}
    examples: dict = {}
    for index, (path, variant, (model, _, meta)) in enumerate(zip(paths, variants, loaded)):
        # each model gets its share of --max-minutes, so the first cannot take the second's time
        deadline = started + 60 * args.max_minutes * (index + 1) / len(paths) if args.max_minutes else None
        run_meta = {
            "model": str(path),
            "seed": meta.get("seed"),
            "steps": meta.get("steps"),
            "minutes": meta.get("minutes"),
            "train_device": meta.get("device"),
            "train_eval_exact_match": meta.get("eval_exact_match"),
        }

        def write_partial(report: dict, variant: str = variant, run_meta: dict = run_meta) -> None:
            suite["models"][variant] = {**report, "meta": run_meta}
            suite["models"] = {v: suite["models"][v] for v in variants if v in suite["models"]}  # in run order
            write_report(suite, args.out, stem)

        report = evaluate_model(
            model.to(args.device),
            RetrievalTask(**meta["task"]) if "task" in meta else RetrievalTask(),
            lengths=lengths,
            keys=args.keys or KEYS,
            n_samples=n_samples,
            n_attr=n_attr,
            seed=int(meta.get("seed", 0)),
            methods=args.methods,
            batch=args.batch,
            attr_batch=args.attr_batch,
            max_sequences=args.max_sequences,
            backend=args.backend,
            fwe=not args.no_fwe,
            quiet=args.quiet,
            on_update=write_partial,
            examples=examples.setdefault(variant, {}),
            deadline=deadline,
        )
        write_partial(report)
        model.to("cpu")
        # after each model, so a run cut short later still leaves the figures of the models it finished
        figures = write_figures(suite, examples, args.out, stem)
    json_path, md_path = write_report(suite, args.out, stem)
    print(render_markdown(suite))
    print(f"wrote {json_path}, {md_path} and {', '.join(str(f) for f in figures)}")
    return 0


#: the bench commands write into ./latim-bench: run from a checkout, the committed benchmarks/results stay as they are
#: (benchmarks/<name>.py, the developers' entry points, write there)
_BENCH_OUT_HELP = "folder for the {files} (default ./latim-bench; benchmarks/<name>.py writes benchmarks/results)"

_DEBUG_HELP = "on an error, print the traceback too (default: one `latim: error:` line)"


def bench_script_main(command: str, argv: Sequence[str]) -> int:
    """``benchmarks/<command>.py``, the developers' entry point: ``latim bench <command> ARGV`` writing into the
    repository's ``benchmarks/results`` unless ``--out`` is given (``latim bench`` itself writes ./latim-bench)."""
    given = any(arg == "--out" or arg.startswith("--out=") for arg in argv)
    return main(["bench", command, *argv, *([] if given else ["--out", "benchmarks/results"])])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="latim", description="LaTIM token-to-token interactions for Mamba models")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="run every method on the embedded copy models; table + heatmaps")
    demo.add_argument("--out", default="latim-demo", help="output folder for the PNGs (default ./latim-demo)")
    demo.add_argument("--seed", type=int, default=12345, help="seed of the fresh copy example")
    demo.add_argument("--variants", nargs="+", choices=["mamba1", "mamba2"], default=["mamba1", "mamba2"])
    demo.add_argument("--methods", nargs="+", default=None, help=f"registry names (default {' '.join(DEMO_METHODS)})")
    demo.set_defaults(func=cmd_demo)

    attr = sub.add_parser("attribute", help="one method's token-to-token map for a text")
    attr.add_argument("--model", required=True, help="mamba1 / mamba2 (embedded), a local folder, or a hub name")
    attr.add_argument("--text", required=True, help="input text")
    attr.add_argument(
        "--target",
        default=None,
        help="continuation appended to the text (tokenised apart, as Captum's LLM attribution does); the methods "
        "that explain a logit (ALTI-Logit, gradient methods, Mamba-Attribution, MambaLRP) then explain each true "
        "next token (default: the model's own predictions)",
    )
    attr.add_argument(
        "--method",
        default="alti_logit",
        help="registry name: l2, alti (per layer), alti_logit, ..., saliency, input_x_gradient, "
        "integrated_gradients, mamba_lrp, ... (default alti_logit), or alti_rollout (ALTI rolled out over every "
        "layer); LaTIM names run with --activation",
    )
    attr.add_argument(
        "--activation",
        choices=ACTIVATIONS,
        default=None,
        help=f"LaTIM's activation strategy (default {DEFAULT_ACTIVATION}, exact for SiLU models; silu: the paper's)",
    )
    attr.add_argument(
        "--layer", type=int, default=None, help="0-based layer for per-layer methods only (default -1: the last)"
    )
    attr.add_argument("--out", required=True, help="PNG file to write")
    attr.add_argument("--json", default=None, help="also write the scores and tokens as JSON")
    attr.add_argument("--device", default="cpu")
    attr.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="LaTIM's path (LaTIM methods only): auto (default: the tiles, as fast), ref (the readable reference), "
        "fast, triton (CUDA kernels); same maps",
    )
    attr.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="LaTIM's W_o product on fast/triton (LaTIM methods only; default highest; tf32, bf16)",
    )
    attr.add_argument(
        "--dtype",
        choices=tuple(COMPUTE_DTYPES),
        default=None,
        help="compute dtype of LaTIM and the baselines, whatever the model's (default float32; the gradient "
        "methods compute in the model's dtype)",
    )
    attr.set_defaults(func=cmd_attribute)

    from .dataset import DATASET_METHODS

    ds = sub.add_parser(
        "attribute-dataset",
        help="maps of several methods for every prompt of a dataset: resumable safetensors shards + JSON index "
        "(data parallel under torchrun)",
    )
    ds.add_argument("--model", required=True, help="mamba1 / mamba2 (embedded), a local folder, or a hub name")
    ds.add_argument("--input", default=None, help='JSON Lines file, one {"prompt": ..., "target": ...} per line')
    ds.add_argument("--hf-dataset", default=None, help="a Hugging Face dataset (save_to_disk folder or name; needs "
                    "the datasets package) instead of --input")  # fmt: skip
    ds.add_argument("--split", default=None, help="split of --hf-dataset (default train; a saved Dataset has none)")
    ds.add_argument("--prompt-field", default="prompt", help="field holding the prompt (default prompt)")
    ds.add_argument("--target-field", default="target", help="field holding the optional target (default target)")
    ds.add_argument(
        "--methods", nargs="+", default=["alti_logit"], help=f"of {', '.join(DATASET_METHODS)} (default alti_logit)"
    )
    ds.add_argument("--activation", choices=ACTIVATIONS, default=DEFAULT_ACTIVATION, help="activation strategy")
    ds.add_argument("--layers", type=int, nargs="+", default=None, help="the per-layer methods' layers (default all)")
    ds.add_argument("--out", required=True, help="output folder (a rerun with the same settings resumes)")
    ds.add_argument("--shard-size", type=_positive_int, default=16, help="examples per shard (default 16)")
    ds.add_argument("--dtype", choices=tuple(COMPUTE_DTYPES), default="float32", help="compute dtype")
    ds.add_argument(
        "--device", default="auto", help="auto (CUDA if available), cpu, cuda (under torchrun: GPU LOCAL_RANK), cuda:k"
    )
    ds.add_argument(
        "--device-map", default=None, help='shard the model: auto, balanced, sequential, or JSON {"module": device}'
    )
    ds.add_argument("--offload-folder", default=None, help="where --device-map's disk offload goes")
    ds.add_argument("--backend", choices=BACKENDS, default="auto", help="LaTIM's path (same maps)")
    ds.add_argument("--precision", choices=PRECISIONS, default="highest", help="the W_o product on fast/triton")
    ds.add_argument("--add-special-tokens", action="store_true", help="let the tokenizer add BOS etc. to prompts")
    ds.add_argument("--quiet", action="store_true", help="no progress bar")
    ds.set_defaults(func=cmd_attribute_dataset)

    err = sub.add_parser("error-report", help="decomposition error per layer and activation strategy (Table 5)")
    err.add_argument("--model", default=None, help="embedded name, folder or hub name (default: both embedded)")
    err.add_argument("--text", default=None, help="input text (default: fresh copy samples)")
    err.add_argument(
        "--samples", type=_positive_int, default=8, help="copy samples for the embedded models (default 8)"
    )
    err.add_argument("--device", default="cpu")
    err.set_defaults(func=cmd_error_report)

    plan_p = sub.add_parser(
        "plan", help="the longest input each request admits on a GPU of a given size (the memory guard's arithmetic)"
    )
    plan_p.add_argument(
        "model", help="a shape of `latim bench speed` (mamba1 / mamba2: the 130M shapes, falcon_mamba_7b, "
        "mamba2_2.7b, bamba_9b, ...), a folder with a config.json, or a cached hub name; no weights are read",
    )  # fmt: skip
    plan_p.add_argument("--gpu-gib", type=_positive_float, default=None,
                        help="GPU memory in GiB for the weights and LaTIM: the card's total less the CUDA context "
                        "(~0.5 GiB) and anything else on it (default: what CUDA device 0 has free now)")  # fmt: skip
    plan_p.add_argument("--host-gib", type=_positive_float, default=None,
                        help="host memory for a host-kept trace (default: not checked)")  # fmt: skip
    plan_p.add_argument("--tokens", type=_positive_int, default=None, help="also show each request's memory at N")
    plan_p.add_argument("--model-dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="the weights' dtype (default: bf16 for a shape, else the config's)")  # fmt: skip
    plan_p.add_argument("--json", default=None, help="also write the plan as JSON")
    plan_p.set_defaults(func=cmd_plan)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True, parser_class=_Parser)
    copying = bench_sub.add_parser("copying", help="copying faithfulness (paper Table 2) of a trained copy model")
    copying.add_argument("--variant", choices=["mamba1", "mamba2"], required=True)
    copying.add_argument(
        "--scale",
        choices=["tiny", "paper"],
        default="tiny",
        help="tiny: the embedded model; paper: runs/copy-<variant>-paper unless --model",
    )
    copying.add_argument("--model", default=None, help="folder written by latim_captum.copying.train")
    copying.add_argument("--device", default="cpu")
    copying.add_argument(
        "--n-samples", type=_positive_int, default=None, help="evaluation samples (default: the model's)"
    )
    copying.add_argument("--batch", type=_positive_int, default=32, help="samples per attribution call")
    copying.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="LaTIM's path: auto (the tiles, as fast), ref (the readable reference), fast, triton; same maps",
    )
    copying.add_argument(
        "--max-sequences",
        type=_positive_int,
        default=None,
        help="sequences per backward pass of the gradient methods, Mamba-Attribution and MambaLRP, which replicate "
        "the input per query row (default 256; lower it on a CPU, where the PyTorch fallback paths need more memory)",
    )
    copying.add_argument("--methods", nargs="+", default=None, help="registry names (default: all available)")
    copying.add_argument(
        "--rows",
        choices=["predict", "hold"],
        default="predict",
        help="query rows of the main table: predict (L..2L-1, the rows whose output is the copied token) or hold "
        "(L+1..2L, the rows whose input is); the report gives the other reading too",
    )
    copying.add_argument("--out", default="latim-bench", help=_BENCH_OUT_HELP.format(files=".md and .json"))
    copying.add_argument(
        "--resume",
        default=None,
        metavar="REPORT",
        help="a report of the same model left by a run cut short (its .json): keep its accuracy, reconstruction "
        "errors and finished methods, run only the methods it lacks (the weights' fingerprints must match)",
    )
    copying.add_argument("--quiet", action="store_true", help="no progress bars")
    copying.set_defaults(func=cmd_bench_copying)

    align = bench_sub.add_parser(
        "alignment", help="alignment error rate (paper Table 3) on the synthetic translation task"
    )
    align.add_argument("--variant", nargs="+", choices=["mamba1", "mamba2"], default=None, help="model(s) to score")
    align.add_argument(
        "--scale",
        choices=["tiny", "paper"],
        default="tiny",
        help="tiny: train a tiny model per variant in the run (CPU, minutes); paper: runs/alignment-<variant>-paper "
        "unless --model",
    )
    align.add_argument("--model", nargs="+", default=None, help="folders written by latim_captum.alignment.train")
    align.add_argument("--train-out", default="runs", help="tiny scale: where the trained models go (default runs/)")
    align.add_argument(
        "--train-steps", type=_positive_int, default=None, help="tiny scale: training steps (default: preset)"
    )
    align.add_argument("--seed", type=int, default=None, help="tiny scale: training seed (default 0)")
    align.add_argument("--device", default="cpu")
    align.add_argument(
        "--n-samples", type=_positive_int, default=None, help="held-out pairs (default: the model's n_eval)"
    )
    align.add_argument("--batch", type=_positive_int, default=32, help="pairs per attribution call")
    align.add_argument("--backend", choices=BACKENDS, default="auto", help="LaTIM's path (same maps)")
    align.add_argument(
        "--max-sequences",
        type=_positive_int,
        default=None,
        help="sequences per backward pass of the row-replicating methods",
    )
    align.add_argument("--methods", nargs="+", default=None, help="method names (default: the Table 3 set)")
    align.add_argument(
        "--no-sink", action="store_true", help="argmax over the source words only (default: <sep> too, as no link)"
    )
    align.add_argument("--ties", choices=["first", "all"], default="first", help="tied maxima: first or all")
    align.add_argument("--out", default="latim-bench", help=_BENCH_OUT_HELP.format(files=".md and .json"))
    align.add_argument(
        "--resume",
        nargs="+",
        default=None,
        metavar="REPORT",
        help="reports of these models left by runs cut short (their .json; one per model, or one of several): keep "
        "each model's accuracy, decomposition errors and finished methods, run only what it lacks (the weights' "
        "fingerprints must match)",
    )
    align.add_argument("--quiet", action="store_true", help="no progress bars")
    align.set_defaults(func=cmd_bench_alignment)

    retr = bench_sub.add_parser(
        "retrieval", help="long-context retrieval study (paper §4.3, Tables 4/6, Figure 3): passkey and FWE"
    )
    retr.add_argument("--variant", nargs="+", choices=["mamba1", "mamba2"], default=None, help="model(s) to score")
    retr.add_argument(
        "--scale",
        choices=["tiny", "paper"],
        default="tiny",
        help="tiny: train a tiny model per variant in the run (CPU, minutes), lengths 128/192; paper: "
        "gpu-models/retrieval-<variant>-paper-s<seed> unless --model, lengths 1024/2048",
    )
    retr.add_argument("--model", nargs="+", default=None, help="folders written by latim_captum.retrieval.train")
    retr.add_argument("--train-out", default="runs", help="tiny scale: where the trained models go (default runs/)")
    retr.add_argument(
        "--train-steps", type=_positive_int, default=None, help="tiny scale: training steps (default: preset)"
    )
    retr.add_argument(
        "--seed", type=int, default=None, help="training seed (tiny scale; the paper-scale folder name; default 0)"
    )
    retr.add_argument("--device", default="cpu")
    retr.add_argument(
        "--lengths", type=_positive_int, nargs="+", default=None, help="sample lengths (default: the scale's)"
    )
    retr.add_argument("--keys", type=_positive_int, nargs="+", default=None, help="passkey key counts (default 1 2 4)")
    retr.add_argument(
        "--n-samples", type=_positive_int, default=None, help="samples per setting for accuracy (paper 500)"
    )
    retr.add_argument(
        "--n-attr", type=_positive_int, default=None, help="samples per setting explained by each method"
    )
    retr.add_argument("--batch", type=_positive_int, default=32, help="samples per decoding pass")
    retr.add_argument("--attr-batch", type=_positive_int, default=4, help="samples per attribution call")
    retr.add_argument("--backend", choices=BACKENDS, default="auto", help="LaTIM's path (same values)")
    retr.add_argument(
        "--max-sequences", type=_positive_int, default=64, help="replicated sequences per pass of the gradient methods"
    )
    retr.add_argument("--methods", nargs="+", default=None, help="method names (default: the study's set)")
    retr.add_argument("--no-fwe", action="store_true", help="passkey only")
    retr.add_argument(
        "--max-minutes", type=float, default=None, help="start no further method after this long (models share it)"
    )
    retr.add_argument("--out", default="latim-bench", help=_BENCH_OUT_HELP.format(files=".md, .json and .png"))
    retr.add_argument("--quiet", action="store_true", help="no progress bars")
    retr.set_defaults(func=cmd_bench_retrieval)

    from . import bench_speed

    speed = bench_sub.add_parser(
        "speed", help="speed and memory of the fast path vs _ref, LIG-50 and a forward pass (--quick: CPU, < 1 min)"
    )
    bench_speed.add_arguments(speed)
    speed.set_defaults(func=bench_speed.run_and_save)
    from . import bench_whole

    whole = bench_sub.add_parser(
        "whole-sequence",
        help="all rows of ALTI-Logit vs Saliency / LIG-50 per position, and Inseq latim vs IG on a generation",
    )
    bench_whole.add_arguments(whole)
    whole.set_defaults(func=bench_whole.run_and_save)
    from .paper import activations as activation_study

    acts = bench_sub.add_parser(
        "activations",
        help="what the conv activation costs (paper Table 5): accuracy, decomposition errors, ℓ2 and ALTI-Logit of "
        "models trained with silu, relu and no activation",
    )
    activation_study.add_arguments(acts, out_default="latim-bench")
    acts.set_defaults(func=activation_study.run_and_save, program="latim bench activations")
    for command in (demo, attr, ds, err, plan_p, copying, align, retr, speed, whole, acts):
        # SUPPRESS: `latim --debug attribute ...` is not reset to False by the command's own default
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)

    # listed for --help only: main() hands `latim inseq ...` to Inseq's own parser before argparse sees it
    sub.add_parser("inseq", add_help=False, help="Inseq's CLI with the LaTIM methods registered: latim inseq -h")
    return parser


def _one_line(err: BaseException) -> str:
    """The error's first line; the exception's class where it says nothing or is not one of the usual kinds (an
    ``AssertionError`` from a library reads as nothing without its name)."""
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    usual = (ValueError, TypeError, OSError, KeyError, ImportError, MemoryError)
    if not text:
        return type(err).__name__
    return text if isinstance(err, usual) else f"{type(err).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = 1 if argv[:1] == ["--debug"] else 0  # `latim --debug inseq ...` as for the other commands
    if argv[first : first + 1] == ["inseq"]:
        from .inseq_cli import main as inseq_main

        debug, run = first == 1, lambda: inseq_main(argv[first + 1 :])
    else:
        args = build_parser().parse_args(argv)
        debug, run = getattr(args, "debug", False), lambda: args.func(args)
    try:
        return run()
    except Exception as err:  # one line for every failure (bad input, a folder, the device, memory), as documented
        if debug:
            traceback.print_exc()
        print(f"latim: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
