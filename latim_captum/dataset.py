"""LaTIM maps for a whole dataset: sharded safetensors output with a JSON index, resumable, data parallel.

:func:`attribute_dataset` (and ``latim attribute-dataset``) reads prompts with optional targets (JSON Lines, or any
sequence of records such as a Hugging Face ``datasets.Dataset``), traces each example once and writes the maps of
every requested method into shards of ``shard_size`` consecutive examples::

    OUT/run.json                   the settings; a resumed run must match them
    OUT/shard-00000.safetensors    one file per shard, written to a temporary name then renamed (atomic)
    OUT/index.json                 every example: shard, token count, offsets of its maps, methods

Each shard holds, per method, one flat tensor ``maps.<method>`` concatenating its examples' maps (per-layer methods
``[L, n, n]``, aggregated ones ``[n, n]``) and ``input_ids``, the examples' tokens; ALTI-Logit adds its row targets,
logits and offsets (``alti_logit.targets``, ``alti_logit.logits``, ``alti_logit.offset``: ``[n]`` each; rows sum
to ``logits − offset`` for an exact activation). :func:`load_attributions` reads them back example by example.

Resuming: a shard whose file exists (and was written by a run of the same settings) is skipped, so an interrupted
run loses at most the shards in progress. Data parallel: under ``torchrun`` (or with a process group already
initialised) rank ``r`` of ``W`` takes shards ``r, r + W, …``; after a barrier rank 0 writes the index from the
shard files themselves. Every example is traced alone (no padding), so its maps are those of a one-by-one call of
:func:`latim_captum.interactions`, :func:`latim_captum.alti_logit` or :func:`latim_captum.alti_rollout`.

Example:
    >>> examples = read_jsonl("prompts.jsonl")                                          # doctest: +SKIP
    >>> attribute_dataset(model, tok, examples, "out", methods=("alti", "alti_logit"))  # doctest: +SKIP
    >>> load_attributions("out")[0]["maps.alti_logit"].shape                             # doctest: +SKIP
    torch.Size([12, 12])
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_known_tokens, check_layers
from .activations import ACTIVATIONS, DEFAULT_ACTIVATION
from .adapters import get_adapter
from .api import METHODS, alti_logit, alti_rollout, interactions, trace
from .catalog import latim_methods

__all__ = [
    "DATASET_METHODS",
    "FORMAT",
    "AttributionSet",
    "Example",
    "attribute_dataset",
    "check_methods",
    "examples_from_records",
    "init_distributed",
    "load_attributions",
    "load_hf_dataset",
    "read_jsonl",
    "weights_fingerprint",
]

#: what ``methods=`` accepts: the per-layer maps and ALTI-Logit of :data:`latim_captum.api.METHODS`, and the rollout
DATASET_METHODS: tuple[str, ...] = (*METHODS, "alti_rollout")
#: the ``format`` tag of ``run.json``, the index and every shard's metadata
FORMAT = "latim-dataset/1"
#: the methods whose maps are per layer (``layers=`` selects among them)
_PER_LAYER = tuple(spec.measure for spec in latim_methods() if spec.per_layer)


@dataclass(frozen=True)
class Example:
    """One input: a prompt, an optional target continuation, and where it came from (for error messages).

    With a target the text is ``prompt + target`` (tokenised apart, then joined; special tokens a template adds
    after the prompt, such as an EOS, are dropped) and ALTI-Logit explains each true next token (the last row, which
    has none, the model's prediction); without one it explains the model's own prediction at each position.
    """

    prompt: str
    target: str | None = None
    source: str = ""


# --- reading -------------------------------------------------------------------------------------------------------


def _example(record: Any, where: str, prompt_field: str, target_field: str) -> Example:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected an object with a {prompt_field!r} field, got {type(record).__name__}")
    if prompt_field not in record:
        raise ValueError(f"{where}: no {prompt_field!r} field (fields: {', '.join(map(str, record)) or 'none'})")
    prompt, target = record[prompt_field], record.get(target_field)
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: {prompt_field!r} must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}: empty prompt")
    if target is not None and not isinstance(target, str):
        raise ValueError(f"{where}: {target_field!r} must be a string, got {type(target).__name__}")
    if target is not None and not target:
        raise ValueError(f"{where}: empty target (leave the field out for none)")
    return Example(prompt=prompt, target=target, source=where)


#: the target field of the readers when none is named: missing from every record means "no targets"
DEFAULT_TARGET_FIELD = "target"


def _check_fields(prompt_field: str, target_field: str) -> None:
    if prompt_field == target_field:
        raise ValueError(
            f"the prompt and target fields are both {prompt_field!r}: each prompt would be its own target"
        )


def _checked_targets(
    examples: list[Example], fields: set[str], prompt_field: str, target_field: str, where: str
) -> list[Example]:
    """``examples`` unless the target field was named and no record has it (a typo would drop every target); a
    warning when the default field is missing but the records have other fields that may hold the targets."""
    if any(e.target is not None for e in examples):
        return examples
    others = sorted(fields - {prompt_field, target_field})
    if target_field != DEFAULT_TARGET_FIELD:
        raise ValueError(
            f"no record of {where} has a value in the target field {target_field!r} (fields with values: "
            f"{', '.join(sorted(fields))})"
        )
    if others:
        warnings.warn(
            f"no record of {where} has a value in the {target_field!r} field: every prompt is explained without a "
            f"target (the model's own predictions); its other fields are {', '.join(others)} (target_field= / "
            "--target-field names the one that holds the targets)",
            stacklevel=3,
        )
    return examples


def examples_from_records(
    records: Iterable[Any],
    *,
    prompt_field: str = "prompt",
    target_field: str = DEFAULT_TARGET_FIELD,
    name: str = "record",
) -> list[Example]:
    """Examples from mappings (a list of dicts, a ``datasets.Dataset``, ...); errors name ``<name> <k>`` (0-based).

    Raises:
        ValueError: a record without a string prompt, an empty prompt or target, or no record at all.
    """
    _check_fields(prompt_field, target_field)
    out, fields = [], set()
    for k, rec in enumerate(records):
        out.append(_example(rec, f"{name} {k}", prompt_field, target_field))
        fields.update(str(key) for key, value in rec.items() if value is not None)
    if not out:
        raise ValueError(f"no examples in {name}s")
    return _checked_targets(out, fields, prompt_field, target_field, f"the {name}s")


def read_jsonl(
    path: str | os.PathLike, *, prompt_field: str = "prompt", target_field: str = DEFAULT_TARGET_FIELD
) -> list[Example]:
    """Examples from a JSON Lines file: one object per line, ``{"prompt": ..., "target": ...}`` (target optional);
    blank lines are skipped. Errors name the file and the 1-based line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not JSON or not a valid example (the message names the line), or no example.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no input file at {path}")
    _check_fields(prompt_field, target_field)
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark (files saved on Windows) is not text
    try:  # "\r" before "\n" is JSON whitespace
        lines = raw.decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text ({err.reason})") from None
    out, fields = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
        out.append(_example(record, where, prompt_field, target_field))
        fields.update(str(key) for key, value in record.items() if value is not None)
    if not out:
        raise ValueError(f"no examples in {path}")
    return _checked_targets(out, fields, prompt_field, target_field, str(path))


def load_hf_dataset(
    name: str, *, split: str | None = None, prompt_field: str = "prompt", target_field: str = DEFAULT_TARGET_FIELD
) -> list[Example]:
    """Examples from a Hugging Face dataset: a folder written by ``Dataset.save_to_disk`` or a name/path for
    ``datasets.load_dataset`` (a local file or script; hub names need network access). Needs ``datasets``.
    ``split``: of a ``DatasetDict`` or ``load_dataset`` (default ``"train"``); a saved single ``Dataset`` has none.

    Raises:
        ImportError: ``datasets`` is not installed.
        ValueError: a split the data does not have, or one named for a saved single ``Dataset`` (it was ignored).
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError("reading a Hugging Face dataset needs the datasets package: pip install datasets") from err
    path = Path(name).expanduser()
    # a Dataset's folder holds dataset_info.json / state.json, a DatasetDict's dataset_dict.json
    if any((path / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
        data = datasets.load_from_disk(str(path))
        if not isinstance(data, datasets.DatasetDict) and split is not None:
            raise ValueError(f"{name} is a single saved Dataset, without splits; drop --split {split}")
    else:
        data = datasets.load_dataset(name, split=split or "train")
    if isinstance(data, datasets.DatasetDict):
        split = split or "train"
        if split not in data:
            raise ValueError(f"{name} has no split {split!r}; splits: {', '.join(data)}")
        data = data[split]
    return examples_from_records(data, prompt_field=prompt_field, target_field=target_field, name=f"{name} row")


# --- distributed ---------------------------------------------------------------------------------------------------


def init_distributed(device: str = "auto") -> tuple[int, int, torch.device, bool]:
    """Join the process group ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``):
    NCCL with one GPU per rank on CUDA, gloo on the CPU. Returns ``(rank, world_size, device, initialised_here)``;
    outside ``torchrun`` (no ``WORLD_SIZE``, or 1) nothing is initialised and the device is ``device`` itself.

    ``device``: ``"auto"`` (CUDA if available, else the CPU), ``"cpu"``, ``"cuda"`` (each rank takes GPU
    ``LOCAL_RANK``) or an explicit ``"cuda:k"`` (single process only).
    """
    import torch.distributed as dist

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} given but CUDA is not available")
    world = world_size_from_env()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), _rank_device(device), False
    if world <= 1:
        return 0, 1, torch.device(device), False
    if device.startswith("cuda:"):
        raise ValueError(f"--device {device} names one GPU; under torchrun give cuda (each rank takes LOCAL_RANK)")
    target = _rank_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), target, True


def _rank_device(device: str) -> torch.device:
    if device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset); ``ValueError`` naming it unless a positive integer."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(value)
    except ValueError:
        world = 0
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer (torchrun sets it), got {value!r}")
    return world


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if world_size_from_env() > 1:
        # each of the W processes would do the whole dataset as rank 0, and delete the others' files in progress
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} says this process is one of several (torchrun), but no process "
            "group is initialised: call latim_captum.dataset.init_distributed() before attribute_dataset"
        )
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# --- writing -------------------------------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _model_identity(model: nn.Module, name: str | None) -> dict:
    """What names the model in ``run.json``: the caller's name, the class, the checkpoint it came from, a digest of
    its config, a fingerprint of its weights (:func:`weights_fingerprint`: every weight's row sums and a sample),
    its size and its parameters' dtypes. A base model and its fine-tune share a config;
    the fingerprint tells them apart, so a resume never mixes their maps."""
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else {}
    config_dict = {k: v for k, v in config_dict.items() if not k.startswith("_") and k not in ("torch_dtype", "dtype")}
    return {
        "name": name or type(model).__name__,
        "class": type(model).__name__,
        # the checkpoint a from_pretrained model came from (dropped with the other "_" keys above)
        "source": str(getattr(config, "_name_or_path", "") or ""),
        "config": _digest(json.loads(json.dumps(config_dict, default=str))),
        "weights": weights_fingerprint(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        # the config's dtype field says what was saved, not what runs: a model cast after loading gives other maps
        "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()}),
    }


def weights_fingerprint(model: nn.Module, per_tensor: int = 64) -> str:
    """A digest of every parameter: its row sums in float64 (rounded to 12 significant digits, so the device that
    sums does not matter) and a strided sample of ``per_tensor`` exact values. Two checkpoints of one config (a base
    model and its fine-tune, a model with one embedding row edited) differ here; it reads every weight once, on the
    device that holds it (offloaded ``meta`` parameters are skipped)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.device.type == "meta" or p.numel() == 0:
                continue
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // per_tensor)][:per_tensor]
            rows = p.detach().reshape(p.shape[0], -1).sum(1, dtype=torch.float64) if p.dim() > 1 else flat.double()
            sums = ",".join(f"{v:.12g}" for v in rows.cpu().tolist())
            digest.update(name.encode() + sample.float().cpu().numpy().tobytes() + sums.encode())
    return digest.hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_shard(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write one shard to a temporary name, flush it to disk, then rename: a reader (or a resumed run) sees the whole
    shard or none of it."""
    from safetensors.torch import save_file

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _shard_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a finished shard, or None when the file is absent or unreadable (then it is redone)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:  # a foreign or damaged file: redo the shard rather than trust it
        return None


def check_methods(methods: Sequence[str], layers: Any = None) -> tuple[str, ...]:
    """``methods`` as a tuple of :data:`DATASET_METHODS` names.

    Raises:
        ValueError: none, an unknown or a repeated name, or ``layers`` without a per-layer method.
    """
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not methods:
        raise ValueError(f"no method given; choose from {', '.join(DATASET_METHODS)}")
    for method in methods:
        if method not in DATASET_METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(DATASET_METHODS)}")
    if len(set(methods)) < len(methods):
        raise ValueError(f"a method is listed twice: {', '.join(methods)}")
    if layers is not None and not any(m in _PER_LAYER for m in methods):
        raise ValueError(f"layers= selects maps of the per-layer methods ({', '.join(_PER_LAYER)}); none is listed")
    return methods


def _without_trailing_specials(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    """``text``'s ids; with ``add_special_tokens``, the special tokens the template puts after the text (an EOS)
    dropped: a target follows the prompt, and the model never reads an EOS between them."""
    if not add_special_tokens:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    enc = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True)
    ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    while len(ids) > 1 and special[-1]:
        ids.pop()
        special.pop()
    return ids


def _tokenize(tokenizer: Any, example: Example, add_special_tokens: bool) -> tuple[list[int], int, bool]:
    """Token ids of ``prompt + target`` (tokenised apart so the prompt's tokens are known), the prompt's count, and
    whether the joined text would give the same ids (False where the join falls inside a word or a run of spaces:
    "Answer: " + "Paris" is ``Ġ`` + ``Paris`` apart but ``ĠParis`` joined).

    With ``add_special_tokens`` the template's tokens before the prompt (a BOS) are kept and those after it (an EOS)
    dropped, with or without a target: the last row explains the prediction that continues the prompt, not the one
    after an EOS the user never wrote.

    Raises:
        ValueError: a prompt or target that gives no tokens, or that the tokenizer reads with unknown tokens
            (:func:`~latim_captum._validation.check_known_tokens`).
    """
    where = example.source or "example"
    prompt = _without_trailing_specials(tokenizer, example.prompt, add_special_tokens)
    if not prompt:
        raise ValueError(f"{where}: the prompt gives no tokens")
    check_known_tokens(tokenizer, example.prompt, prompt, f"{where}: the prompt")
    if example.target is None:
        return prompt, len(prompt), True
    target = list(tokenizer(example.target, add_special_tokens=False)["input_ids"])
    if not target:
        raise ValueError(f"{where}: the target gives no tokens")
    check_known_tokens(tokenizer, example.target, target, f"{where}: the target")
    joined = _without_trailing_specials(tokenizer, example.prompt + example.target, add_special_tokens)
    return prompt + target, len(prompt), joined == prompt + target


def _example_maps(
    model: nn.Module,
    ids: Tensor,
    has_target: bool,
    methods: tuple[str, ...],
    settings: dict[str, Any],
) -> dict[str, Tensor]:
    """Every method's maps of one example (``ids``: ``[1, n]``) from one trace, on the CPU, flattened."""
    from .methods import next_token_targets

    tr = trace(model, ids, dtype=settings["dtype"])
    path = {"activation": settings["activation"], "backend": settings["backend"], "precision": settings["precision"]}
    out: dict[str, Tensor] = {}
    # with a target: each true next token, and at the last row (which has none) the model's own prediction
    targets = next_token_targets(ids, last=tr.readout.logits[:, -1].argmax(-1)) if has_target else None
    for method in methods:
        if method == "alti_logit":
            res = alti_logit(tr, target=targets, **path)
            maps = res.scores[0]
            out["alti_logit.targets"] = res.targets[0].cpu()
            out["alti_logit.logits"] = res.logits[0].cpu()
            out["alti_logit.offset"] = res.offset[0].cpu()
        elif method == "alti_rollout":
            maps = alti_rollout(tr, **path)[0]
        elif method == "alti_logit_layers":  # the same targets as ALTI-Logit's
            maps = interactions(tr, method=method, layers=settings["layers"], target=targets, **path)[0]
        else:
            maps = interactions(tr, method=method, layers=settings["layers"], **path)[0]
        out[f"maps.{method}"] = maps.cpu()
    return out


def _shard_tensors(results: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], list[dict]]:
    """Concatenate a shard's examples key by key; return the tensors and each example's offsets and shapes."""
    tensors: dict[str, Tensor] = {}
    offsets = []
    sizes: dict[str, int] = {}
    for result in results:
        offsets.append({key: sizes.get(key, 0) for key in result})
        for key, value in result.items():
            sizes[key] = sizes.get(key, 0) + value.numel()
    for key in results[0]:
        tensors[key] = torch.cat([result[key].reshape(-1) for result in results])
    shapes = [{key: list(value.shape) for key, value in result.items()} for result in results]
    return tensors, [{"offsets": o, "shapes": s} for o, s in zip(offsets, shapes)]


def attribute_dataset(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] = ("alti_logit",),
    activation: str = DEFAULT_ACTIVATION,
    layers: int | Sequence[int] | None = None,
    shard_size: int = 16,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    precision: str = "highest",
    add_special_tokens: bool = False,
    model_name: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the LaTIM maps of every example into ``out_dir`` (shards + index, see the module's docstring); return
    the index's path.

    Run it in every process of a ``torchrun`` job (after :func:`init_distributed`): each rank takes its shards, and
    rank 0 writes the index once all ranks are done. Alone it does every shard. Finished shards of an earlier run with
    the same settings are skipped.

    Args:
        model: a supported model (on any device, or sharded with ``device_map``).
        tokenizer: a Hugging Face tokenizer of the model.
        examples: from :func:`read_jsonl`, :func:`load_hf_dataset` or :func:`examples_from_records`.
        out_dir: the output folder (created).
        methods: names from :data:`DATASET_METHODS`.
        activation, dtype, backend, precision: as :func:`latim_captum.interactions`.
        layers: the per-layer methods' layers (None: all).
        shard_size: examples per shard: what a crash can lose, and the unit of work of a rank.
        add_special_tokens: let the tokenizer add its special tokens (BOS, ...) to each prompt.
        model_name: how ``run.json`` names the model (default: its class).
        progress: a tqdm progress bar (rank 0 only).

    Raises:
        ValueError: an unknown or repeated method, a bad shard size, an example whose text gives no tokens, or an
            ``out_dir`` holding a run with other settings (use another folder, or delete it).
    """
    from tqdm.auto import tqdm

    methods = check_methods(methods, layers)
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation strategy {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if layers is not None:
        resolved = check_layers(layers, get_adapter(model).n_sublayers)
        if len(set(resolved)) < len(resolved):
            raise ValueError(f"--layers / layers= names a layer twice: {list(layers)}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    examples = list(examples)
    if not examples:
        raise ValueError("no examples")
    wrong = next((k for k, e in enumerate(examples) if not isinstance(e, Example)), None)
    if wrong is not None:
        raise TypeError(
            f"examples[{wrong}] is a {type(examples[wrong]).__name__}, not an Example: make them with read_jsonl, "
            "load_hf_dataset or examples_from_records (which reads dicts)"
        )
    rank, world = _rank_and_world()
    out = Path(out_dir)
    settings = {
        "methods": list(methods),
        "activation": activation,
        "layers": layers if layers is None or isinstance(layers, int) else list(layers),
        "dtype": str(dtype).removeprefix("torch."),
        "backend": backend,
        "precision": precision,
        "add_special_tokens": add_special_tokens,
        "shard_size": shard_size,
    }
    # token ids of every example first: one that gives no token fails now, not after hours of maps, and the ids
    # name the run (another tokenizer gives other maps of the same texts); hashed as they come, not kept, so a
    # large dataset's ids are never all in memory
    token_digest, split, first_ids = hashlib.sha256(), [], None
    for i, example in enumerate(examples):
        ids, _, same = _tokenize(tokenizer, example, add_special_tokens)
        token_digest.update(json.dumps(ids).encode() + b"\n")
        first_ids = ids if first_ids is None else first_ids
        if not same:
            split.append(i)
    # the options are checked against the model and its device before run.json names this run: a run refused at
    # its first map would otherwise leave its settings behind and lock the folder for the corrected command
    _check_options(model, first_ids, settings, dtype)
    if split and rank == 0:
        warnings.warn(
            f"{len(split)} example(s) tokenise differently as prompt + target than apart (first: "
            f"{examples[split[0]].source or split[0]}): the maps are of the tokens apart, which the model does not "
            "read for the joined text; put the space at the start of the target, not the end of the prompt",
            stacklevel=2,
        )
    run = {
        "format": FORMAT,
        "model": _model_identity(model, model_name),
        "settings": settings,
        "n_examples": len(examples),
        "examples": _digest([[e.prompt, e.target] for e in examples]),
        "tokens": token_digest.hexdigest()[:16],
    }
    key = _digest(run)
    _start_run(out, run, key, rank)
    _barrier(world)

    n_shards = (len(examples) + shard_size - 1) // shard_size
    mine = list(range(rank, n_shards, world))
    todo = [s for s in mine if (_shard_metadata(_shard_path(out, s)) or {}).get("run") != key]
    tokens = {
        i: _tokenize(tokenizer, examples[i], add_special_tokens)
        for s in todo
        for i in range(s * shard_size, min(len(examples), (s + 1) * shard_size))
    }
    compute = {**settings, "dtype": dtype}
    done = sum(min(len(examples), (s + 1) * shard_size) - s * shard_size for s in mine if s not in todo)
    total = sum(min(len(examples), (s + 1) * shard_size) - s * shard_size for s in mine)
    bar = tqdm(
        total=total, initial=done, unit="ex", desc=f"latim attribute-dataset rank {rank}/{world}",
        disable=not progress or rank != 0,
    )  # fmt: skip
    try:
        for shard in todo:
            first, stop = shard * shard_size, min(len(examples), (shard + 1) * shard_size)
            results, entries = [], []
            for i in range(first, stop):
                ids, prompt_length, _ = tokens[i]
                input_ids = torch.tensor([ids], dtype=torch.long)
                result = {"input_ids": input_ids[0]}
                result.update(_example_maps(model, input_ids, examples[i].target is not None, methods, compute))
                results.append(result)
                entries.append(
                    {
                        "index": i,
                        "length": len(ids),
                        "prompt_length": prompt_length,
                        "alti_logit_targets": "next_token" if examples[i].target is not None else "predicted",
                        "source": examples[i].source,
                    }
                )
                bar.update(1)
            tensors, placed = _shard_tensors(results)
            entries = [{**entry, **where} for entry, where in zip(entries, placed)]
            meta = {
                "format": FORMAT,
                "run": key,
                "shard": str(shard),
                "rank": str(rank),
                "examples": json.dumps(entries),
            }
            _save_shard(tensors, meta, _shard_path(out, shard))
    finally:
        bar.close()
    _barrier(world)
    index_path = out / "index.json"
    if rank == 0:
        _write_index(out, run, key, n_shards)
    _barrier(world)
    return index_path


def _shard_path(out: Path, shard: int) -> Path:
    return out / f"shard-{shard:05d}.safetensors"


def _check_options(model: nn.Module, ids: list[int], settings: dict[str, Any], dtype: torch.dtype) -> None:
    """The error of an activation strategy, backend or precision that the model or its device refuses, from one
    layer's map of one example's first tokens on the run's path (a backend the device cannot run, e.g. triton off
    CUDA or without its package, fails here too, not at the first shard)."""
    probe = trace(model, torch.tensor([ids[:8]], device=get_adapter(model).device), dtype=dtype)
    path = {key: settings[key] for key in ("activation", "backend", "precision")}
    interactions(probe, method="l2", layers=0, **path)


def _start_run(out: Path, run: dict, key: str, rank: int) -> None:
    """Check ``out`` against an earlier run (every rank, read only, so all fail alike) and, on rank 0, record this
    run's settings and clear its own stale temporary files."""
    run_path = out / "run.json"
    if run_path.is_file():
        try:
            earlier = json.loads(run_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{run_path} is not valid JSON ({err.msg}); delete it or use another folder") from None
        if earlier.get("key") != key:
            fields = ("model", "settings", "n_examples", "examples", "tokens")
            diff = [k for k in fields if earlier.get(k) != run.get(k)]
            old, new = earlier.get("settings") or {}, run["settings"]
            changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
            old_model, new_model = earlier.get("model") or {}, run["model"]
            changed += [f"model {k}: {old_model.get(k)!r} → {new_model.get(k)!r}" for k in new_model
                        if old_model.get(k) != new_model.get(k)]  # fmt: skip
            raise ValueError(
                f"{out} holds a run with other {', '.join(diff) or 'settings'}"
                + (f" ({'; '.join(changed)})" if changed else "")
                + "; use another --out folder or delete that folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        # what a crashed run left half written; no rank writes before the barrier that follows
        for stale in out.glob("shard-*.safetensors.tmp-*"):
            stale.unlink(missing_ok=True)
        if not run_path.is_file():
            # an index left by an earlier run (its run.json deleted) would serve this run's shards under its settings
            (out / "index.json").unlink(missing_ok=True)
            _atomic_write_text(run_path, json.dumps({**run, "key": key}, indent=2) + "\n")


def _write_index(out: Path, run: dict, key: str, n_shards: int) -> None:
    """The merged index, read back from the shard files (so it also covers shards of earlier, resumed runs).

    Raises:
        RuntimeError: a shard is missing or from another run (a rank failed).
    """
    examples, shards = [], []
    for shard in range(n_shards):
        path = _shard_path(out, shard)
        meta = _shard_metadata(path)
        if meta is None or meta.get("run") != key:
            raise RuntimeError(f"shard {path.name} is missing or from another run: its rank did not finish")
        entries = json.loads(meta["examples"])
        first, stop = entries[0]["index"], entries[-1]["index"] + 1
        shards.append({"file": path.name, "examples": [first, stop], "rank": int(meta.get("rank", 0))})
        examples.extend({**entry, "shard": path.name} for entry in entries)
    index = {**run, "key": key, "shards": shards, "examples": examples, "examples_digest": run["examples"]}
    _atomic_write_text(out / "index.json", json.dumps(index) + "\n")


# --- reading back --------------------------------------------------------------------------------------------------


class AttributionSet(Sequence):
    """The examples of a finished run, read lazily from its shards: ``dataset[i]`` is a dict with ``input_ids``
    (``[n]``), ``maps.<method>`` per method and, for ALTI-Logit, its ``alti_logit.targets``/``logits``/``offset``.

    Attributes:
        index: the parsed ``index.json``.
        methods: the methods of the run.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.root = Path(out_dir)
        path = self.root / "index.json"
        if not path.is_file():
            raise FileNotFoundError(f"no index.json in {self.root}: the run has not finished")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} index")
        self.methods: list[str] = list(self.index["settings"]["methods"])

    def __len__(self) -> int:
        return len(self.index["examples"])

    def entry(self, i: int) -> dict:
        """The index entry of example ``i``: its shard, length, prompt length, source and offsets."""
        return self.index["examples"][i]

    def __getitem__(self, i: int | slice) -> dict[str, Tensor] | list[dict[str, Tensor]]:  # type: ignore[override]
        from safetensors import safe_open

        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range ({len(self)} examples)")
        entry = self.entry(i % len(self))
        out = {}
        with safe_open(str(self.root / entry["shard"]), framework="pt") as handle:
            if (handle.metadata() or {}).get("run") != self.index.get("key"):
                raise ValueError(
                    f"{entry['shard']} in {self.root} was written by another run than its index.json: the folder "
                    "mixes two runs; run attribute_dataset there again to finish the current one"
                )
            for key, offset in entry["offsets"].items():
                shape = entry["shapes"][key]
                size = int(torch.Size(shape).numel())
                out[key] = handle.get_slice(key)[offset : offset + size].reshape(shape)
        return out


def load_attributions(out_dir: str | os.PathLike) -> AttributionSet:
    """The examples of a finished :func:`attribute_dataset` run (see :class:`AttributionSet`)."""
    return AttributionSet(out_dir)
