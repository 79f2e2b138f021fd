"""``latim inseq ...``: Inseq's own command line with this package's methods registered.

Inseq's ``inseq attribute -a <method>`` builds its list of method choices when its command module is imported, from
the attribution classes that exist then; it has no entry points, so methods registered later (by ``import
latim_captum``) are not among them. This module registers them first, then hands every argument to Inseq's CLI
unchanged, so all its commands and options work::

    latim inseq attribute -m path/to/mamba-folder -a latim --input_texts "the cat sat" --generation_kwargs ...

Example:
    >>> main(["attribute", "--help"])                                     # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import fields

__all__ = ["main", "register_choices"]


def register_choices() -> None:
    """Register the Inseq methods and make sure Inseq's CLI offers them (also if it was imported before us)."""
    from .inseq import INSEQ_METHODS  # registers them with Inseq

    # imported after the registration, so that a first import already lists them
    attribute_args = importlib.import_module("inseq.commands.attribute.attribute_args")

    for field in fields(attribute_args.AttributeBaseArgs):
        choices = field.metadata.get("choices")
        if field.name == "attribution_method" and isinstance(choices, list):
            choices.extend(name for name in INSEQ_METHODS if name not in choices)


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
        inseq_main()
    except SystemExit as stop:  # Inseq's CLI exits on --help and on argument errors
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = saved
    return 0
