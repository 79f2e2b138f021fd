"""What benchmark results record about their run: package versions and options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latim_captum._environment import SOFTWARE, device_name, run_options, software_versions, versions_line


def test_versions_name_every_package_and_the_absent_ones():
    found = software_versions()
    assert list(found) == list(SOFTWARE) and found["torch"] == torch.__version__
    line = versions_line({"torch": "2.0", "mamba-ssm": None, "captum": "0.9"})
    assert line == "- versions: torch 2.0, captum 0.9; not installed: mamba-ssm"


def test_options_are_json_ready_without_the_handler():
    args = argparse.Namespace(out=Path("results/x"), tokens=16, models=["mamba2"], quick=False, func=print)
    options = run_options(args)
    assert options == {"out": "results/x", "tokens": 16, "models": ["mamba2"], "quick": False}
    assert json.loads(json.dumps(options)) == options


def test_cpu_device_name_says_the_model_and_threads(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n")
    real_path = Path

    def fake_path(arg, *rest):
        return real_path(cpuinfo) if arg == "/proc/cpuinfo" else real_path(arg, *rest)

    monkeypatch.setattr("latim_captum._environment.Path", fake_path)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert device_name("cpu") == "CPU (Example CPU @ 2.0GHz, 3 threads)"
    monkeypatch.setattr("latim_captum._environment.Path", lambda *_: real_path(tmp_path / "missing"))
    assert device_name(torch.device("cpu")).startswith("CPU (") and device_name("cpu").endswith(", 3 threads)")


def test_command_line_quotes_what_a_shell_would_split(monkeypatch):
    import shlex

    from latim_captum._environment import command_line

    argv = ["--model", "runs/my model", "--methods", "l2", "alti", "--out", "a'b"]
    line = command_line("python benchmarks/x.py", argv)
    assert shlex.split(line) == ["python", "benchmarks/x.py", *argv], "pasted, the line gives the same arguments"
    assert command_line("python benchmarks/x.py", []) == "python benchmarks/x.py"
    monkeypatch.setattr("sys.argv", ["x.py", "--samples", "3"])
    assert command_line("python benchmarks/x.py") == "python benchmarks/x.py --samples 3", "None: this process's"
