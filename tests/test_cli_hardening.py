"""The CLI and the loaders with untrusted model folders, bad devices and bad output paths (issue 20).

A folder's Python never runs (``trust_remote_code=False``, even when a user would answer "y"), pickled weights go
through the safe unpickler, and every failure is one ``latim: error:`` line with exit status 2 (``--debug``: the
traceback too). Output files are checked before any work and reported by the names they really get.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sys

import pytest
import torch

from latim_captum import cli
from latim_captum.cli import main


@pytest.fixture
def saved_model(tmp_path):
    from conftest import VOCAB, build
    from latim_captum.copying import copy_tokenizer

    path = tmp_path / "tiny"
    build("mamba1", layers=2).save_pretrained(path)
    copy_tokenizer(VOCAB).save_pretrained(path)
    return path


def _one_error_line(capsys, fragment: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("latim: error:") and fragment in err, err
    return err


def _attribute(model, out, *extra: str) -> int:
    return main(["attribute", "--model", str(model), "--text", "abc|ab", "--out", str(out), *extra])


# -- untrusted folders ---------------------------------------------------------------------------------------------

EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("the folder's code ran")
from transformers import MambaConfig, MambaForCausalLM


class EvilConfig(MambaConfig):
    model_type = "evilmamba"


class EvilForCausalLM(MambaForCausalLM):
    config_class = EvilConfig
"""


def _with_custom_code(folder, marker, model_type: str) -> None:
    """Make ``folder`` ask for its own code (``auto_map``) that writes ``marker`` when imported."""
    (folder / "modeling_evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))


def test_a_folders_code_never_runs_even_if_the_user_would_say_yes(saved_model, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "EVIL_RAN"
    _with_custom_code(saved_model, marker, "evilmamba")
    asked = []
    monkeypatch.setattr(builtins, "input", lambda prompt="": asked.append(prompt) or "y")
    assert _attribute(saved_model, tmp_path / "x.png") == 2
    _one_error_line(capsys, "custom code")
    assert not marker.exists(), "the folder's modeling file was imported"
    assert not asked, "transformers asked whether to run the folder's code"
    assert not (tmp_path / "x.png").exists()


def test_a_known_model_type_with_an_auto_map_loads_the_installed_class(saved_model, tmp_path, monkeypatch):
    marker = tmp_path / "EVIL_RAN"
    _with_custom_code(saved_model, marker, "mamba")
    monkeypatch.setattr(builtins, "input", lambda prompt="": pytest.fail("prompted"))
    assert _attribute(saved_model, tmp_path / "x.png", "--method", "l2") == 0
    assert not marker.exists()


def test_every_loader_passes_the_safety_arguments(saved_model, monkeypatch):
    """CLI folders, the embedded copy models, the copying benchmark's and the tasks' folders: no folder code,
    safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from latim_captum.copying.evaluate import load_model_dir
    from latim_captum.models import copy_model_path, load_copy_model
    from latim_captum.tasks.reports import load_model_dir as load_task_dir

    calls: list[tuple[str, dict]] = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        original = cls.from_pretrained

        def spy(path, *args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs))
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    cli.load_model(str(saved_model))
    load_copy_model("mamba2")
    load_model_dir(copy_model_path("mamba1"))
    load_task_dir(copy_model_path("mamba2"))
    models = [kw for name, kw in calls if name == "AutoModelForCausalLM"]
    tokenizers = [kw for name, kw in calls if name == "AutoTokenizer"]
    assert len(models) == 4 and len(tokenizers) == 4
    for kw in models:
        assert kw.get("trust_remote_code") is False and kw.get("use_safetensors") is True, kw
    for kw in tokenizers:
        assert kw.get("trust_remote_code") is False, kw


class _Payload:
    """Unpickling this runs a shell command: what a hostile ``pytorch_model.bin`` does."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_refused_in_one_line(saved_model, tmp_path, capsys):
    marker = tmp_path / "PICKLE_RAN"
    (saved_model / "model.safetensors").unlink()
    torch.save({"backbone.embeddings.weight": _Payload(marker)}, saved_model / "pytorch_model.bin")
    assert _attribute(saved_model, tmp_path / "x.png") == 2
    _one_error_line(capsys, "refused by the safe unpickler")
    assert not marker.exists()


def test_safetensors_are_read_and_a_pickle_beside_them_is_not(saved_model, tmp_path):
    marker = tmp_path / "PICKLE_RAN"
    torch.save({"backbone.embeddings.weight": _Payload(marker)}, saved_model / "pytorch_model.bin")
    assert _attribute(saved_model, tmp_path / "x.png", "--method", "l2") == 0
    assert not marker.exists()


def test_a_broken_folder_is_one_line(saved_model, tmp_path, capsys):
    (saved_model / "model.safetensors").write_bytes(b"not safetensors")
    assert _attribute(saved_model, tmp_path / "x.png") == 2
    _one_error_line(capsys, f"cannot load {str(saved_model)!r}")


# -- devices, Triton, --debug --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--device", "gpu"], "is not a device name"),
        (["--device", "meta"], "not meta"),
        pytest.param(
            ["--device", "cuda"],
            "cuda is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
        pytest.param(
            ["--backend", "triton"],
            "triton package",
            marks=pytest.mark.skipif(
                __import__("importlib").util.find_spec("triton") is not None, reason="triton is installed"
            ),
        ),
    ],
)
def test_bad_device_and_missing_triton_are_one_line_before_any_work(saved_model, tmp_path, flags, fragment, capsys):
    out = tmp_path / "x.png"
    assert _attribute(saved_model, out, *flags) == 2
    _one_error_line(capsys, fragment)
    assert not out.exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(saved_model, tmp_path, where, capsys):
    argv = ["attribute", "--model", str(saved_model), "--text", "ab", "--out", str(tmp_path / "x.png")]
    argv += ["--device", "gpu"]
    assert main(["--debug", *argv] if where == "before" else [*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("latim: error:")


def test_an_unexpected_exception_is_one_line_with_its_class(monkeypatch, capsys):
    def boom(args):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(cli, "cmd_error_report", boom)
    assert main(["error-report"]) == 2
    _one_error_line(capsys, "AssertionError: Torch not compiled with CUDA enabled")


# -- output files --------------------------------------------------------------------------------------------------


def test_a_figure_without_a_suffix_is_reported_by_its_real_name(saved_model, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _attribute(saved_model, "noext", "--method", "l2", "--json", "noext.json") == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "noext.png").is_file() and not (tmp_path / "noext").exists()
    assert "wrote noext.png " in printed and "wrote noext.json" in printed, printed


@pytest.mark.parametrize(
    "out, json_out, fragment",
    [
        ("fig.png", "missing/s.json", "--json missing/s.json cannot be written"),
        ("missing/fig.png", None, "--out missing/fig.png cannot be written"),
        ("folder", None, "is a folder"),  # "folder" exists: a name without a suffix means folder.png
        ("fig.png", "fig.png", "are the same file"),
        ("fig.xyz", None, "cannot write '.xyz' figures"),
    ],
)
def test_outputs_are_checked_before_any_work(saved_model, tmp_path, monkeypatch, capsys, out, json_out, fragment):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "folder.png").mkdir()
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    argv = ["--json", json_out] if json_out else []
    assert _attribute(saved_model, out, *argv) == 2
    _one_error_line(capsys, fragment)
    assert sorted(p.name for p in work.iterdir()) == ["folder.png"], "a file was left behind"


def test_error_report_refuses_an_empty_text(saved_model, capsys):
    assert main(["error-report", "--model", str(saved_model), "--text", ""]) == 2
    _one_error_line(capsys, "--text is empty")
    assert main(["error-report", "--model", "mamba1", "--text", "   "]) == 2
    _one_error_line(capsys, "--text is empty")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["bench", "copying", "--variant", "mamba1", "--n-samples", "0"], "--n-samples: must be a positive integer"),
        (["bench", "copying", "--variant", "mamba1", "--batch", "0"], "--batch: must be a positive integer"),
        (["bench", "copying", "--variant", "mamba1", "--max-sequences", "-2"], "--max-sequences: must be a positive"),
        (["error-report", "--samples", "0"], "--samples: must be a positive integer"),
        (["bench", "alignment", "--variant", "mamba1", "--n-samples", "0"], "--n-samples: must be a positive"),
        (["bench", "alignment", "--variant", "mamba1", "--train-steps", "0"], "--train-steps: must be a positive"),
        (["bench", "alignment", "--variant", "mamba1", "--batch", "-1"], "--batch: must be a positive integer"),
    ],
)
def test_counts_below_one_are_refused(argv, fragment, capsys, monkeypatch, tmp_path):
    import latim_captum.copying.evaluate as evaluate

    # before the fix 0 meant "the default": the whole benchmark ran (into the repository's results folder)
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: pytest.fail("the benchmark ran"))
    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the error report ran"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    _one_error_line(capsys, fragment)


def test_bench_output_folder_is_checked_before_the_benchmark(tmp_path, monkeypatch, capsys):
    import latim_captum.copying.evaluate as evaluate

    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go")
    monkeypatch.setattr(evaluate, "evaluate_model", lambda *a, **k: pytest.fail("the benchmark ran"))
    argv = ["bench", "copying", "--variant", "mamba1", "--n-samples", "2", "--out", str(blocker), "--quiet"]
    assert main(argv) == 2
    _one_error_line(capsys, "cannot be created")


def test_latim_inseq_loads_folders_as_latim_does(saved_model, tmp_path, monkeypatch):
    """`latim inseq ...` hands the folder to Inseq's loader: inside it, the folder's code never runs either."""
    pytest.importorskip("inseq")
    import inseq
    from inseq.models.huggingface_model import HuggingfaceModel
    from transformers import AutoModelForCausalLM

    from latim_captum.inseq_cli import safe_loading

    original = HuggingfaceModel.__dict__["load"]
    marker = tmp_path / "EVIL_RAN"
    evil = tmp_path / "evil"
    shutil.copytree(saved_model, evil)
    _with_custom_code(evil, marker, "evilmamba")
    monkeypatch.setattr(builtins, "input", lambda prompt="": "y")
    with safe_loading(), pytest.raises(ValueError, match="custom code"):
        inseq.load_model(str(evil), "latim")
    assert not marker.exists()

    seen = []
    from_pretrained = AutoModelForCausalLM.from_pretrained

    def spy(path, *args, **kwargs):
        seen.append(kwargs)
        return from_pretrained(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    with safe_loading():
        inseq.load_model(str(saved_model), "latim")
    assert seen and seen[-1].get("trust_remote_code") is False and seen[-1].get("use_safetensors") is True
    assert HuggingfaceModel.__dict__["load"] is original, "Inseq's loader is put back"


def test_alignment_output_folders_are_checked_before_training(tmp_path, monkeypatch, capsys):
    import latim_captum.alignment.train as alignment_train

    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go")
    monkeypatch.setattr(alignment_train, "train", lambda *a, **k: pytest.fail("a model was trained"))
    argv = ["bench", "alignment", "--variant", "mamba1", "--out", str(blocker), "--train-out", str(tmp_path / "runs")]
    assert main(argv) == 2
    _one_error_line(capsys, "--out")
    argv = ["bench", "alignment", "--variant", "mamba1", "--out", str(tmp_path / "out"), "--train-out", str(blocker)]
    assert main(argv) == 2
    _one_error_line(capsys, "--train-out")


def test_an_embedded_name_that_is_also_a_folder_here_is_refused(tmp_path, monkeypatch, capsys):
    """``--model mamba2`` loaded the embedded model even with a folder ``./mamba2`` beside it, and said nothing."""
    (tmp_path / "mamba2").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["attribute", "--model", "mamba2", "--text", "abc|ab", "--out", "x.png"]) == 2
    _one_error_line(capsys, "names an embedded model and a folder here; give the folder as ./mamba2")


def test_debug_after_attribute_dataset(tmp_path, capsys):
    """``--debug`` works after every command (the docstring says so; attribute-dataset refused it)."""
    assert main(["attribute-dataset", "--model", "mamba1", "--out", str(tmp_path / "o"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "give one input" in err.strip().splitlines()[-1]


def test_attribute_json_says_which_layer_and_what_each_row_explains(tmp_path):
    """The layer as the figure counts it (1-based, like ``latim demo``) and as ``--layer`` does (0-based), the path,
    the token each row explains and the prompt's length: what a reader needs to check the file."""
    js = tmp_path / "s.json"
    argv = ["attribute", "--model", "mamba1", "--text", "abcd|ab", "--target", "cd", "--out", str(tmp_path / "f.png")]
    assert main([*argv, "--method", "l2", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    assert (data["layer"], data["layer_label"]) == (1, "2 of 2")  # the default --layer -1
    assert (data["backend"], data["precision"], data["prompt_tokens"]) == ("auto", "highest", 7)
    assert main([*argv, "--method", "alti_logit", "--json", str(js)]) == 0
    data = json.loads(js.read_text())
    ids = torch.tensor(cli.load_model("mamba1")[1].convert_tokens_to_ids(data["tokens"]))
    assert data["layer"] == "all" and data["targets"][:-1] == ids[1:].tolist()  # each true next token
    assert main([*argv, "--method", "saliency", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["backend"] is None


def test_a_folder_without_tokenizer_files_is_named(saved_model, tmp_path, capsys):
    """transformers builds an empty tokenizer from the config's class: every text was "0 token(s)"."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in saved_model.iterdir():
        if not path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            shutil.copy(path, bare / path.name)
    assert main(["attribute", "--model", str(bare), "--text", "abc|ab", "--out", str(tmp_path / "x.png")]) == 2
    _one_error_line(capsys, "the folder has no tokenizer files")


def test_a_missing_folder_under_a_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch, capsys):
    """``runs/copy-mamba1-paper`` (one slash: a hub name's shape) with ``./runs`` here is a local path: it was sent to
    the hub, retried for ~30 s offline, and reported as a network error."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["attribute", "--model", "runs/copy-mamba1-paper", "--text", "abc|ab", "--out", "x.png"]) == 2
    _one_error_line(capsys, "no model at 'runs/copy-mamba1-paper'")


@pytest.mark.parametrize("name", ["copying", "alignment", "retrieval"])
def test_bench_commands_leave_the_committed_results_alone(name, monkeypatch):
    """``latim bench <name>`` run from a checkout wrote over benchmarks/results (partial reports too); it writes
    ./latim-bench, and benchmarks/<name>.py, the developers' entry point, still writes benchmarks/results."""
    import runpy

    parser = cli.build_parser()
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 0)
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
    for extra, out in (([], "benchmarks/results"), (["--out", "mine"], "mine")):
        monkeypatch.setattr(sys, "argv", [script, "--variant", "mamba2", *extra])
        with pytest.raises(SystemExit):
            runpy.run_path(script, run_name="__main__")
        argv = seen[-1]
        assert argv[argv.index("--out") + 1] == out and argv.count("--out") == 1
    assert parser.parse_args(["bench", name, "--variant", "mamba2"]).out == "latim-bench"
