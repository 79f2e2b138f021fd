"""Models and tokenizers from a folder or a hub name without running anything the folder ships.

Every loader of the package (the CLI, :func:`latim_captum.models.load_copy_model`, the task reports' folders) goes
through :func:`load_pretrained`:

* ``trust_remote_code=False``: a ``config.json`` / ``tokenizer_config.json`` with an ``auto_map`` never gets to run
  its Python (transformers would otherwise ask "run the custom code? [y/N]" on a terminal); a folder whose model type
  only exists as such code is refused.
* ``use_safetensors=True`` when the folder has ``*.safetensors`` weights, so a pickle beside them is never opened;
  a folder with pickled weights only is loaded by transformers' ``weights_only`` unpickler, which refuses anything
  but tensors.
* any failure (a missing or broken file, a refused pickle, an unknown model type, custom code) is one
  :class:`ModelLoadError` naming the folder and the cause; the original exception is its ``__cause__``.

Example:
    >>> model, tok = load_pretrained("runs/copy-mamba1-paper")            # doctest: +SKIP
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["ModelLoadError", "load_pretrained", "pretrained_kwargs"]


class ModelLoadError(ValueError):
    """A model folder or hub name that could not be loaded (safely): the message names it and the cause."""


def _local_folder(spec: str | Path) -> Path | None:
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def pretrained_kwargs(spec: str | Path) -> dict:
    """The safety arguments of ``from_pretrained`` for ``spec``: never the folder's code, safetensors when it has
    them (a hub name: transformers' own preference, safetensors first)."""
    kwargs: dict = {"trust_remote_code": False}
    folder = _local_folder(spec)
    if folder is not None and any(folder.glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    return kwargs


def _cause(err: BaseException) -> str:
    """One line saying why a load failed."""
    if isinstance(err, pickle.UnpicklingError):
        detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
        return (
            "its pickled weights were refused by the safe unpickler (weights_only)"
            + (f": {detail}" if detail else "")
            + "; convert them to safetensors, or load the model yourself if you trust the file"
        )
    text = " ".join(str(err).split())
    if "custom code" in text and "trust_remote_code" in text:
        return "it needs custom code from the folder (auto_map), which latim never runs (trust_remote_code=False)"
    return f"{type(err).__name__}: {text or 'no message'}"


def load_pretrained(
    spec: str | Path, *, dtype: torch.dtype = torch.float32, tokenizer: bool = True, **placement: Any
) -> tuple[nn.Module, object | None]:
    """``(causal LM in eval mode, tokenizer or None)`` from a local folder or a hub name, loaded safely (see the
    module docstring). ``placement``: ``device_map`` / ``offload_folder`` for a sharded load (accelerate).

    Raises:
        FileNotFoundError: ``spec`` looks like a path but there is no ``config.json`` there.
        ModelLoadError: anything else that stops the load (the cause in the message and as ``__cause__``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = str(spec)
    folder = _local_folder(spec)
    # "runs/copy-mamba1-paper" is a folder under ./runs, not a hub repo "runs" (asking the hub takes ~30 s offline)
    under_local_folder = text.count("/") == 1 and Path(text.split("/")[0]).is_dir()
    looks_local = folder is not None or text.startswith((".", "/", "~")) or text.count("/") > 1 or under_local_folder
    if looks_local and (folder is None or not (folder / "config.json").is_file()):
        raise FileNotFoundError(f"no model at {text!r} (expected a folder with config.json)")
    if tokenizer and folder is not None and not any(folder.glob("tokenizer*")) and not any(folder.glob("vocab*")):
        # transformers would build an empty tokenizer from the config's class and read every text as no tokens
        raise ModelLoadError(f"cannot load {text!r}: the folder has no tokenizer files (tokenizer.json, "
                             "tokenizer_config.json, vocab*); save the tokenizer beside the model")  # fmt: skip
    if folder is not None:
        try:
            saved_config = json.loads((folder / "config.json").read_text())
        except ValueError:
            saved_config = {}  # transformers' load below names what is wrong with it
        # before transformers builds it: a cut switch's config names no activation transformers has
        _refuse_cut_switch(text, saved_config if isinstance(saved_config, dict) else {})
    target = folder if folder is not None else text
    kwargs = pretrained_kwargs(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, **kwargs, **placement).eval()
        tok = AutoTokenizer.from_pretrained(target, trust_remote_code=False) if tokenizer else None
    except (KeyboardInterrupt, SystemExit):
        raise
    # transformers' loaders raise OSError, ValueError, KeyError, RuntimeError, UnpicklingError, safetensors' own
    # errors, ...: the caller gets one kind with the cause, not a traceback of the library's internals
    except Exception as err:
        raise ModelLoadError(f"cannot load {text!r}: {_cause(err)}") from err
    _refuse_cut_switch(text, model.config.to_dict())  # a hub model, or a folder saved before latim_switch_to
    return model, tok


def _refuse_cut_switch(text: str, config: dict) -> None:
    """``ModelLoadError`` for a run of :mod:`latim_captum.tasks.switch` cut before the end: its weights serve a
    SiLU/new-activation blend that no HF activation computes, so any map of it would be of another model."""
    alpha = config.get("latim_switch_alpha")
    if alpha is not None and float(alpha) < 1.0:
        new = config.get("latim_switch_to", config.get("hidden_act"))
        raise ModelLoadError(
            f"cannot load {text!r}: it was saved mid-way through switching its activation from SiLU to {new!r} "
            f"(alpha {float(alpha):.3f} < 1), so it computes neither model; resume the run with --resume to finish "
            "the switch"
        )
