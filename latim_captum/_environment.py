"""What a benchmark result was measured with: the installed versions of the packages that set its numbers, and the
options of the run, so that a results file says how to reproduce it.

Example:
    >>> sorted(software_versions())[:3]
    ['captum', 'causal-conv1d', 'inseq']
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

__all__ = [
    "SOFTWARE",
    "command_line",
    "device_name",
    "provenance",
    "provenance_lines",
    "run_options",
    "software_versions",
    "versions_line",
]

#: distributions whose versions change a benchmark's numbers (kernels, model code, the methods compared)
SOFTWARE: tuple[str, ...] = (
    "latim-captum", "torch", "transformers", "triton", "mamba-ssm", "causal-conv1d", "captum", "inseq",
)  # fmt: skip


def software_versions() -> dict[str, str | None]:
    """``{distribution: version}`` for :data:`SOFTWARE`, ``None`` where it is not installed."""
    found: dict[str, str | None] = {}
    for name in SOFTWARE:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def versions_line(versions: dict[str, str | None]) -> str:
    """One Markdown line naming the installed versions (absent packages are listed as such)."""
    present = [f"{name} {version}" for name, version in versions.items() if version]
    absent = [name for name, version in versions.items() if not version]
    return "- versions: " + ", ".join(present) + (f"; not installed: {', '.join(absent)}" if absent else "")


def run_options(args: argparse.Namespace) -> dict:
    """The parsed command-line options of a run, JSON-ready (the handler the CLI attaches left out; a value JSON
    cannot hold, such as a path, as its string)."""
    plain = (str, int, float, bool, type(None), list, tuple)
    return {key: value if isinstance(value, plain) else str(value) for key, value in vars(args).items()
            if not callable(value)}  # fmt: skip


def provenance(args: argparse.Namespace) -> dict:
    """``{"versions": ..., "options": ...}`` of a run, to merge into its results."""
    return {"versions": software_versions(), "options": run_options(args)}


def provenance_lines(results: dict) -> list[str]:
    """The Markdown lines of a report that name its :func:`provenance` (none for results recorded without it),
    followed by a blank line."""
    if "versions" not in results:
        return []
    return [versions_line(results["versions"]), f"- options: `{json.dumps(results['options'])}`", ""]


def command_line(program: str, argv: Sequence[str] | None = None) -> str:
    """The command that reruns a script, for its report: ``program`` (e.g. ``"python benchmarks/x.py"``) and its
    arguments (``argv``; None: this process's ``sys.argv[1:]``), each quoted for a POSIX shell where it needs it, so
    that a path with a space is one argument when the line is pasted.

    Example:
        >>> command_line("python benchmarks/x.py", ["--out", "my results"])
        "python benchmarks/x.py --out 'my results'"
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return f"{program} {shlex.join(args)}" if args else program


def device_name(device: str | torch.device) -> str:
    """What a timing ran on: the GPU's name, or ``"CPU (<model>, <n> threads)"`` (the model from ``/proc/cpuinfo``;
    ``platform.processor()`` is empty on Linux) with the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU ({model}, {torch.get_num_threads()} threads)"
