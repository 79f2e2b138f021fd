"""``latim inseq ...``: Inseq's own command line with this package's methods registered.

Inseq's ``inseq attribute -a <method>`` builds its list of method choices when its command module is imported, from
the attribution classes that exist then; it has no entry points, so methods registered later (by ``import
latim_captum``) are not among them. This module registers them first, then hands every argument to Inseq's CLI
unchanged, so all its commands and options work::

    latim inseq attribute -m path/to/mamba-folder -a latim --input_texts "the cat sat" --generation_kwargs ...

Models and tokenizers named on this command line are loaded as ``latim`` loads them
(:func:`latim_captum._loading.pretrained_kwargs`): never the folder's code (``trust_remote_code=False``) and from
safetensors where the folder has them, unless ``--model_kwargs`` / ``--tokenizer_kwargs`` say otherwise explicitly.

Example:
    >>> main(["attribute", "--help"])                                     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any

__all__ = ["main", "register_choices", "safe_loading"]


def register_choices() -> None:
    """Register the Inseq methods and make sure Inseq's CLI offers them (also if it was imported before us)."""
    from .inseq import INSEQ_METHODS  # registers them with Inseq

    # imported after the registration, so that a first import already lists them
    attribute_args = importlib.import_module("inseq.commands.attribute.attribute_args")

    for field in fields(attribute_args.AttributeBaseArgs):
        choices = field.metadata.get("choices")
        if field.name == "attribution_method" and isinstance(choices, list):
            choices.extend(name for name in INSEQ_METHODS if name not in choices)


@contextlib.contextmanager
def safe_loading() -> Iterator[None]:
    """Inside the block, Inseq's Hugging Face loader gets the safety arguments of ``latim``'s own loader as defaults:
    Inseq passes ``model_kwargs`` / ``tokenizer_kwargs`` to ``from_pretrained`` as given, and transformers' default
    (``trust_remote_code=None``) asks on a terminal whether to run a folder's code."""
    from inseq.models import huggingface_model

    from ._loading import pretrained_kwargs

    cls = huggingface_model.HuggingfaceModel
    original = cls.__dict__["load"]  # a staticmethod

    def load(
        model: Any,
        attribution_method: Any = None,
        tokenizer: Any = None,
        device: Any = None,
        model_kwargs: dict | None = None,
        tokenizer_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> Any:
        if isinstance(model, str):
            model_kwargs = {**pretrained_kwargs(model), **(model_kwargs or {})}
        tokenizer_kwargs = {"trust_remote_code": False, **(tokenizer_kwargs or {})}
        return original.__func__(
            model, attribution_method, tokenizer, device, model_kwargs, tokenizer_kwargs, **kwargs
        )

    cls.load = staticmethod(load)
    try:
        yield
    finally:
        cls.load = original


def main(argv: Sequence[str]) -> int:
    """Run ``inseq <argv>`` with the LaTIM methods and baselines registered; returns its exit status."""
    try:
        register_choices()
        from inseq.commands.cli import main as inseq_main
    except ImportError as err:  # Inseq is an optional extra
        print(f"latim: error: `latim inseq` needs Inseq (pip install 'latim-captum[inseq]'): {err}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = ["latim inseq", *argv]
    try:
        with safe_loading():
            inseq_main()
    except SystemExit as stop:  # Inseq's CLI exits on --help and on argument errors
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0
