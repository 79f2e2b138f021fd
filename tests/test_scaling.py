"""Scaling out (docs/scaling.rst): a model sharded over devices (accelerate's ``device_map``, CPU/disk offload) gives
the maps of the same model on one device, and ``attribute_dataset`` (one process, or data parallel over gloo ranks)
writes the maps of one-by-one calls, resumes after a crash and refuses bad inputs with the line at fault."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import latim_captum as lc
from conftest import build, has_cuda, random_ids
from latim_captum import dataset as ds
from latim_captum.cli import main as cli_main
from latim_captum.methods import next_token_targets
from latim_captum.models import load_copy_model

needs_accelerate = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="needs accelerate")

N = 7
METHODS = ("l2", "alti", "alti_logit", "alti_rollout")


# --- sharded models ------------------------------------------------------------------------------------------------


def _all_maps(model, ids, dtype=torch.float32, **kwargs) -> dict[str, torch.Tensor]:
    """Every map of one traced forward pass: per layer, ALTI-Logit, the rollout, and one query row of each (the
    streaming path)."""
    tr = lc.trace(model, ids, dtype=dtype)
    q = ids.shape[1] - 2
    targets = ids[:, q + 1]
    out = {m: lc.interactions(tr, method=m, activation="silu_gate", **kwargs) for m in ("l2", "alti")}
    res = lc.alti_logit(tr, activation="silu_gate", **kwargs)
    out.update(alti_logit=res.scores, logits=res.logits, offset=res.offset)
    out["alti_rollout"] = lc.alti_rollout(tr, activation="silu_gate", **kwargs)
    row = lc.alti_logit_row(tr, position=q, target=targets, activation="silu_gate", **kwargs)
    out.update(logit_row=row.scores, row_logit=row.logits, row_offset=row.offset)
    out["rollout_row"] = lc.alti_rollout_row(tr, position=q, activation="silu_gate", **kwargs)
    return out


def _hook_counts(model) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


def _device_map(kind: str, placement: tuple[str, ...]) -> dict[str, str | int]:
    """Embeddings on the first place, layer k on ``placement[k]``, the final norm and LM head on the last."""
    backbone = "backbone"
    out: dict[str, str | int] = {f"{backbone}.embeddings": placement[0]}
    out.update({f"{backbone}.layers.{k}": place for k, place in enumerate(placement)})
    out.update({f"{backbone}.norm_f": placement[-1], "lm_head": placement[-1]})
    return out


@needs_accelerate
@pytest.mark.parametrize(("kind", "how"), [("mamba1", "disk"), ("mamba2", "disk"), ("mamba1", "cpu_offload")])
def test_offloaded_layers_give_the_single_device_maps(kind, how, tmp_path):
    """Layers kept in memory and layers offloaded to disk (``device_map``), or every weight offloaded from the CPU
    (``cpu_offload``), by accelerate's hooks (weights on ``meta`` between forwards) give the maps of the model on one
    device, every map and row equal; the model is left with accelerate's hooks, its offload and its mode as found
    (ours removed)."""
    from accelerate import cpu_offload, dispatch_model

    model = build(kind, layers=3).double()
    ids = random_ids(1, N, seed=3)
    expected = _all_maps(model, ids, dtype=torch.float64)
    sharded = copy.deepcopy(model).train()
    if how == "disk":
        dispatch_model(sharded, device_map=_device_map(kind, ("cpu", "disk", "disk")), offload_dir=str(tmp_path))
    else:
        cpu_offload(sharded, execution_device=torch.device("cpu"))
    mixer = sharded.backbone.layers[1].mixer
    assert mixer.in_proj.weight.device.type == "meta", "the test needs a layer whose weights are offloaded"
    hooks_before = _hook_counts(sharded)
    tr = lc.trace(sharded, ids, dtype=torch.float64)
    tensors = [t for layer in tr.layers for t in vars(layer).values() if isinstance(t, torch.Tensor)]
    assert all(t.device.type == "cpu" for t in tensors), "a layer's trace must live on its execution device"
    got = _all_maps(sharded, ids, dtype=torch.float64)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-10, atol=1e-12, msg=f"{name} of the offloaded model")
    assert _hook_counts(sharded) == hooks_before, "our hooks must be removed, accelerate's kept"
    assert mixer.in_proj.weight.device.type == "meta", "offloaded weights must be offloaded again"
    assert hasattr(mixer.in_proj, "_hf_hook")
    assert sharded.training, "the model's mode is restored"


@needs_accelerate
def test_from_pretrained_device_map_through_the_cli_loader(tmp_path):
    """``load_model(..., device_map=...)`` (the CLI's ``--device-map``) loads a saved model with its last layer and
    final norm offloaded to disk; its maps are the plain model's."""
    from latim_captum.cli import load_model, parse_device_map

    plain, _ = load_copy_model("mamba1")
    ids = torch.tensor([[0, 1, 2, 15, 0, 1, 2]])
    expected = _all_maps(plain, ids)
    n_layers = plain.config.num_hidden_layers
    # the LM head is tied to the embeddings: they stay together (accelerate offloads a tied pair as one)
    spec = json.dumps({**_device_map("mamba1", ("cpu",) * (n_layers - 1) + ("disk",)), "lm_head": "cpu",
                       "backbone.norm_f": "disk"})  # fmt: skip
    sharded, _ = load_model("mamba1", device_map=parse_device_map(spec), offload_folder=str(tmp_path / "offload"))
    assert sharded.backbone.layers[-1].mixer.out_proj.weight.device.type == "meta"
    got = _all_maps(sharded, ids)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"{name} of the disk-offloaded model")


@needs_accelerate
def test_execution_device_reads_accelerate_hooks(tmp_path):
    """A disk-offloaded block's weights are on ``meta``; its execution device is where accelerate runs it."""
    from accelerate import dispatch_model

    from latim_captum.adapters.base import execution_device, onloaded

    model = build("mamba1", layers=2)
    dispatch_model(model, device_map=_device_map("mamba1", ("cpu", "disk")), offload_dir=str(tmp_path))
    block = model.backbone.layers[1]
    assert block.mixer.out_proj.weight.device.type == "meta"
    assert execution_device(block) == torch.device("cpu")
    with onloaded(block):
        assert block.mixer.out_proj.weight.device.type == "cpu"
    assert block.mixer.out_proj.weight.device.type == "meta"


@needs_accelerate
@pytest.mark.cuda
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
@pytest.mark.parametrize("main_device", ["cpu", "cuda"])
def test_layers_split_between_cuda_and_cpu(kind, main_device):
    """Layers on cuda:0 and on the CPU (main device cpu: the CPU layers run there; main device cuda: they are
    offloaded from the CPU and run on the GPU) give the single-device maps; maps come back on the inputs' device."""
    from accelerate import dispatch_model

    model = build(kind, layers=4).double()
    ids = random_ids(1, N, seed=4)
    expected = _all_maps(model, ids, dtype=torch.float64)
    sharded = copy.deepcopy(model)
    placement = (0, "cpu", 0, "cpu")
    dispatch_model(sharded, device_map=_device_map(kind, placement), main_device=main_device)
    tr = lc.trace(sharded, ids, dtype=torch.float64)
    devices = [layer.residual.device.type for layer in tr.layers]
    assert devices == (["cuda", "cpu", "cuda", "cpu"] if main_device == "cpu" else ["cuda"] * 4)
    for backend in ("ref", "auto"):
        got = _all_maps(sharded, ids, dtype=torch.float64, backend=backend)
        for name, value in expected.items():
            torch.testing.assert_close(got[name].cpu(), value, rtol=1e-8, atol=1e-10, msg=f"{name}, {backend}")


# --- dataset attribution -------------------------------------------------------------------------------------------

RECORDS = [
    {"prompt": "abcd|ab"},
    {"prompt": "bca|", "target": "bc"},
    {"prompt": "dd|d"},
    {"prompt": "abc|a", "target": "bc"},
    {"prompt": "cab|"},
]


@pytest.fixture(scope="module")
def copy_model():
    return load_copy_model("mamba1")


def _write_jsonl(path: Path, records, extra_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in records]
    for where, text in (extra_lines or {}).items():
        lines.insert(where, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def _one_by_one(model, tok, record: dict, method: str, dtype=torch.float32) -> torch.Tensor:
    """The map of one example from the public functions, on its own."""
    ids = tok(record["prompt"], add_special_tokens=False)["input_ids"]
    if "target" in record:
        ids = ids + tok(record["target"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    if method == "alti_rollout":
        return lc.alti_rollout(model, ids, dtype=dtype)[0]
    # a target only for ALTI-Logit: the per-layer maps read none (and refuse one); the last row has no next token
    # and explains the model's prediction there
    target = next_token_targets(ids) if "target" in record and method.startswith("alti_logit") else None
    if target is not None:
        with torch.no_grad():
            target[:, -1] = model(ids).logits[:, -1].argmax(-1)
    return lc.interactions(model, ids, method=method, target=target, dtype=dtype)[0]


def test_dataset_maps_equal_one_by_one_calls(copy_model, tmp_path):
    """Every stored map is the one-by-one call's, the index gives each example's shard, length and offsets, and the
    stored ALTI-Logit rows sum to the stored logits minus offsets (eq 8, exact with silu_gate)."""
    model, tok = copy_model
    examples = ds.read_jsonl(_write_jsonl(tmp_path / "in.jsonl", RECORDS))
    index_path = ds.attribute_dataset(model, tok, examples, tmp_path / "out", methods=METHODS, shard_size=2,
                                      progress=False)  # fmt: skip
    index = json.loads(index_path.read_text())
    assert [s["file"] for s in index["shards"]] == [f"shard-{k:05d}.safetensors" for k in range(3)]
    assert [e["index"] for e in index["examples"]] == list(range(len(RECORDS)))
    assert index["settings"]["methods"] == list(METHODS)
    data = ds.load_attributions(tmp_path / "out")
    assert len(data) == len(RECORDS)
    for i, record in enumerate(RECORDS):
        item, entry = data[i], data.entry(i)
        n = len(record["prompt"]) + len(record.get("target", ""))  # one token per character
        assert entry["length"] == n and entry["prompt_length"] == len(record["prompt"])
        assert entry["source"].endswith(f"line {i + 1}")
        for method in METHODS:
            assert torch.equal(item[f"maps.{method}"], _one_by_one(model, tok, record, method)), (i, method)
        rows = item["maps.alti_logit"].sum(-1)
        torch.testing.assert_close(rows, item["alti_logit.logits"] - item["alti_logit.offset"], rtol=1e-4, atol=1e-4)


def test_dataset_resumes_after_a_crash(copy_model, tmp_path, monkeypatch):
    """A crash in the third shard keeps the two finished shards and leaves no partial shard under a final name; the
    rerun does only the missing examples, clears the half-written file and ends with the maps of an uninterrupted
    run. A damaged shard file is redone."""
    model, tok = copy_model
    examples = ds.examples_from_records(RECORDS + [{"prompt": "bb|b"}])
    out = tmp_path / "out"
    real_maps, real_save = ds._example_maps, ds._save_shard
    calls = []

    def crashing_save(tensors, meta, path):
        if meta["shard"] == "2":  # half a file under the temporary name, then the process dies
            path.with_name(f"{path.name}.tmp-{os.getpid()}").write_bytes(b"partial")
            raise KeyboardInterrupt("simulated crash")
        real_save(tensors, meta, path)

    monkeypatch.setattr(ds, "_save_shard", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ds.attribute_dataset(model, tok, examples, out, methods=("alti", "alti_logit"), shard_size=2, progress=False)
    assert sorted(p.name for p in out.glob("shard-*.safetensors")) == ["shard-00000.safetensors",
                                                                       "shard-00001.safetensors"]  # fmt: skip
    assert not (out / "index.json").exists()
    monkeypatch.setattr(ds, "_save_shard", real_save)
    monkeypatch.setattr(ds, "_example_maps", lambda *a, **k: calls.append(1) or real_maps(*a, **k))
    ds.attribute_dataset(model, tok, examples, out, methods=("alti", "alti_logit"), shard_size=2, progress=False)
    assert len(calls) == 2, "only the two examples of the unfinished shard are redone"
    assert not list(out.glob("*.tmp-*")), "the half-written file is cleared"
    (out / "shard-00001.safetensors").write_bytes(b"damaged")
    calls.clear()
    ds.attribute_dataset(model, tok, examples, out, methods=("alti", "alti_logit"), shard_size=2, progress=False)
    assert len(calls) == 2, "the damaged shard is redone, the others skipped"
    fresh = tmp_path / "fresh"
    ds.attribute_dataset(model, tok, examples, fresh, methods=("alti", "alti_logit"), shard_size=2, progress=False)
    resumed, uninterrupted = ds.load_attributions(out), ds.load_attributions(fresh)
    for i in range(len(examples)):
        for key, value in uninterrupted[i].items():
            assert torch.equal(resumed[i][key], value), (i, key)


def test_dataset_refuses_a_folder_of_another_run(copy_model, tmp_path):
    model, tok = copy_model
    examples = ds.examples_from_records(RECORDS[:2])
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), progress=False)
    with pytest.raises(ValueError, match="holds a run with other settings"):
        ds.attribute_dataset(model, tok, examples, tmp_path, methods=("alti",), progress=False)
    with pytest.raises(ValueError, match="other n_examples, examples"):
        ds.attribute_dataset(model, tok, examples[:1], tmp_path, methods=("l2",), progress=False)
    # the same texts and settings with the model cast to another dtype, or another tokenizer, are other runs too
    with pytest.raises(ValueError, match="other model"):
        ds.attribute_dataset(copy.deepcopy(model).double(), tok, examples, tmp_path, methods=("l2",), progress=False)

    def shifted(text, **kw):  # the same texts to other ids
        enc = tok(text, **kw)
        return {**enc, "input_ids": [(i + 1) % len(tok) for i in enc["input_ids"]]}

    with pytest.raises(ValueError, match="other tokens"):
        ds.attribute_dataset(model, shifted, examples, tmp_path, methods=("l2",), progress=False)


def _word_tokenizer(template: str | None = None):
    """A word-level tokenizer (words w0..w36, <pad>, <eos>, <unk>, <bos>); ``template`` a post-processor such as
    ``"<bos> $A <eos>"``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "<bos>"] + [f"w{i}" for i in range(36)]
    raw = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if template:
        raw.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<bos>", 3), ("<eos>", 1)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   bos_token="<bos>")  # fmt: skip


def test_dataset_joins_prompt_and_target_as_the_model_reads_them(tmp_path, recwarn):
    """A template's EOS after the prompt is not kept, with a target (the model never reads one between prompt and
    target) or without (the last row then explained the prediction after an EOS the user never wrote), and a join
    that tokenises otherwise than the parts is reported, naming the example."""
    model = build("mamba1", layers=2)
    tok = _word_tokenizer("<bos> $A <eos>")
    examples = ds.examples_from_records([{"prompt": "w1 w2", "target": " w3 w4"}, {"prompt": "w5"}])
    ds.attribute_dataset(model, tok, examples, tmp_path / "a", methods=("l2",), add_special_tokens=True,
                         progress=False)  # fmt: skip
    data = ds.load_attributions(tmp_path / "a")
    w = {f"w{i}": 4 + i for i in range(36)}
    assert data[0]["input_ids"].tolist() == [3, w["w1"], w["w2"], w["w3"], w["w4"]]
    assert data.entry(0)["prompt_length"] == 3
    assert data[1]["input_ids"].tolist() == [3, w["w5"]], "the BOS is kept, the EOS dropped"
    assert data.entry(1)["prompt_length"] == 2
    assert not [x for x in recwarn if "tokenise differently" in str(x.message)]
    glued = ds.examples_from_records([{"prompt": "w1 w2", "target": "w3"}])  # joined: "w1 w2w3", one unknown word
    with pytest.warns(UserWarning, match=r"1 example\(s\) tokenise differently as prompt \+ target than apart"):
        ds.attribute_dataset(model, tok, glued, tmp_path / "b", methods=("l2",), progress=False)


def test_layers_select_every_per_layer_method():
    assert ds.check_methods(("alti_logit_layers",), layers=[1]) == ("alti_logit_layers",)
    assert ds.check_methods(("alti_no_residual",), layers=0) == ("alti_no_residual",)
    with pytest.raises(ValueError, match="none is listed"):
        ds.check_methods(("alti_logit",), layers=[1])


def test_a_saved_dataset_dict_is_read_from_disk(tmp_path, monkeypatch):
    """A folder written by DatasetDict.save_to_disk (dataset_dict.json) is loaded with load_from_disk, not handed to
    load_dataset (which would infer a builder from the split folders); datasets is faked here."""
    import types

    calls = []

    class DatasetDict(dict):
        pass

    fake = types.ModuleType("datasets")
    fake.DatasetDict = DatasetDict
    fake.load_from_disk = lambda path: calls.append(("load_from_disk", path)) or DatasetDict(
        test=[{"prompt": "ab", "target": "c"}]
    )
    fake.load_dataset = lambda *a, **k: calls.append(("load_dataset", a)) or None
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["test"]}')
    examples = ds.load_hf_dataset(str(tmp_path), split="test")
    assert calls == [("load_from_disk", str(tmp_path))]
    assert [(e.prompt, e.target) for e in examples] == [("ab", "c")]
    with pytest.raises(ValueError, match="no split 'train'"):  # the default split, which this dict lacks
        ds.load_hf_dataset(str(tmp_path))
    # a single saved Dataset has no splits: a --split for it was ignored, every row read
    fake.load_from_disk = lambda path: [{"prompt": "ab", "target": None}]
    assert [e.prompt for e in ds.load_hf_dataset(str(tmp_path))] == ["ab"]
    with pytest.raises(ValueError, match="single saved Dataset, without splits; drop --split validation"):
        ds.load_hf_dataset(str(tmp_path), split="validation")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ({1: '{"prompt": "ab|a"'}, r"in\.jsonl line 2: not valid JSON"),
        ({2: '{"prompt": ""}'}, r"in\.jsonl line 3: empty prompt"),
        ({0: '{"text": "ab"}'}, r"in\.jsonl line 1: no 'prompt' field \(fields: text\)"),
        ({1: '["ab"]'}, r"in\.jsonl line 2: expected an object"),
        ({1: '{"prompt": "ab", "target": 3}'}, r"line 2: 'target' must be a string"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, lines, message):
    path = _write_jsonl(tmp_path / "in.jsonl", RECORDS[:2], lines)
    with pytest.raises(ValueError, match=message):
        ds.read_jsonl(path)


def test_bad_inputs_refused(copy_model, tmp_path, capsys):
    """A missing file, an unknown method, an empty file and a prompt without tokens are refused with one clear line
    (CLI: exit status 2)."""
    model, tok = copy_model
    with pytest.raises(FileNotFoundError, match="no input file"):
        ds.read_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown method 'saliency'; choose from l1, l2, alti, "):
        ds.attribute_dataset(model, tok, ds.examples_from_records(RECORDS), tmp_path, methods=("saliency",))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no examples"):
        ds.read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match="record 0: empty prompt"):
        ds.examples_from_records([{"prompt": " \n"}])

    def dropping_tokenizer(text, add_special_tokens=False):  # a tokenizer that keeps nothing of "??"
        return tok(text.replace("?", ""), add_special_tokens=add_special_tokens)

    examples = ds.examples_from_records([{"prompt": "ab|a"}, {"prompt": "??"}])
    with pytest.raises(ValueError, match="record 1: the prompt gives no tokens"):
        ds.attribute_dataset(model, dropping_tokenizer, examples, tmp_path / "o", progress=False)
    good = _write_jsonl(tmp_path / "good.jsonl", RECORDS)
    bad = _write_jsonl(tmp_path / "bad.jsonl", RECORDS, {3: "{oops"})
    cases = [
        (["--input", str(tmp_path / "missing.jsonl")], "no input file"),
        (["--input", str(bad)], "bad.jsonl line 4: not valid JSON"),
        (["--input", str(good), "--methods", "alti", "nope"], "unknown method 'nope'"),
        ([], "give one input"),
    ]
    for extra, message in cases:
        rc = cli_main(["attribute-dataset", "--model", "mamba1", "--out", str(tmp_path / "cli"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("latim: error:") and message in err, (extra, err)
    assert not (tmp_path / "cli").exists(), "nothing is written for a refused input"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, model, tok, examples, out: str) -> None:
    """One rank as torchrun would start it: its environment, then the package's own initialisation (gloo)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    got_rank, got_world, device, initialised = ds.init_distributed("cpu")
    assert (got_rank, got_world, device.type, initialised) == (rank, world, "cpu", True)
    try:
        ds.attribute_dataset(model, tok, examples, out, methods=("alti", "alti_logit"), shard_size=2,
                             dtype=torch.float64, progress=False)  # fmt: skip
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()


def test_two_gloo_ranks_split_the_shards(copy_model, tmp_path):
    """Two processes joined over gloo (torchrun's environment variables) take alternate shards; rank 0's index
    covers both, and the maps are the one-by-one calls'."""
    import torch.multiprocessing as mp

    model, tok = copy_model
    examples = ds.examples_from_records(RECORDS)
    out = tmp_path / "out"
    # fork: the ranks share the loaded model and imports (a fresh interpreter per rank costs seconds)
    mp.start_processes(_rank_main, args=(2, _free_port(), model, tok, examples, str(out)), nprocs=2, join=True,
                       start_method="fork")  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert [s["rank"] for s in index["shards"]] == [0, 1, 0]
    data = ds.load_attributions(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: the model's fp32 forward rounds by its thread count
    try:
        for i, record in enumerate(RECORDS):
            for method in ("alti", "alti_logit"):
                expected = _one_by_one(model, tok, record, method, dtype=torch.float64)
                assert torch.equal(data[i][f"maps.{method}"], expected), f"example {i}, {method}"
    finally:
        torch.set_num_threads(threads)


def test_torchrun_cli_two_ranks(tmp_path):
    """``torchrun --nproc-per-node 2 -m latim_captum.cli attribute-dataset`` end to end on the CPU (gloo)."""
    path = _write_jsonl(tmp_path / "in.jsonl", RECORDS[:3])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "latim_captum.cli", "attribute-dataset", "--model", "mamba1", "--input", str(path), "--out", str(out),
           "--methods", "l2", "--shard-size", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes" in proc.stdout
    index = json.loads((out / "index.json").read_text())
    assert [s["rank"] for s in index["shards"]] == [0, 1, 0]
    model, tok = load_copy_model("mamba1")
    data = ds.load_attributions(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun's OMP_NUM_THREADS=1: the fp32 forward rounds by its thread count
    try:
        for i, record in enumerate(RECORDS[:3]):
            assert torch.equal(data[i]["maps.l2"], _one_by_one(model, tok, record, "l2")), f"example {i}"
    finally:
        torch.set_num_threads(threads)


def test_hf_dataset_input(copy_model, tmp_path):
    """A ``datasets.Dataset`` (in memory, or a ``save_to_disk`` folder) gives the same examples as the JSONL."""
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_list([{"prompt": r["prompt"], "target": r.get("target")} for r in RECORDS])
    from_records = ds.examples_from_records(data)
    data.save_to_disk(str(tmp_path / "saved"))
    from_disk = ds.load_hf_dataset(str(tmp_path / "saved"))
    expected = ds.read_jsonl(_write_jsonl(tmp_path / "in.jsonl", RECORDS))
    for got in (from_records, from_disk):
        assert [(e.prompt, e.target) for e in got] == [(e.prompt, e.target) for e in expected]


def test_dataset_refuses_text_the_tokenizer_cannot_read(tmp_path):
    """``latim attribute`` refused it; the dataset command stored ``w1 <unk>`` maps for ``"w1 Berlin"`` silently (the
    embedded copy models then read every unknown character as their separator)."""
    model = build("mamba1", layers=2)
    tok = _word_tokenizer()
    cases = (({"prompt": "w1 Berlin"}, "the prompt"), ({"prompt": "w1", "target": " w2 Paris"}, "the target"))
    for record, what in cases:
        examples = ds.examples_from_records([{"prompt": "w1 w2"}, record])
        with pytest.raises(ValueError, match=f"record 1: {what} .* outside the tokenizer's vocabulary"):
            ds.attribute_dataset(model, tok, examples, tmp_path / "x", methods=("l2",), progress=False)
        assert not (tmp_path / "x").exists(), "nothing is written for a refused run"
    # an unknown-token string typed in the text is the text's own
    fine = ds.examples_from_records([{"prompt": "w1 <unk> w2"}])
    ds.attribute_dataset(model, tok, fine, tmp_path / "ok", methods=("l2",), progress=False)


def test_a_run_refused_at_its_options_leaves_no_settings_behind(tmp_path):
    """An option the model refuses (a SiLU strategy on a linear model) is checked before ``run.json`` is written: the
    corrected command then runs in the same folder, and a real change of settings is named in the refusal."""
    model = build("mamba1", layers=2, act="linear")
    tok = _word_tokenizer()
    examples = ds.examples_from_records([{"prompt": "w1 w2 w3"}])
    with pytest.raises(ValueError, match="conv activation is 'linear'"):
        ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), activation="silu", progress=False)
    assert not (tmp_path / "run.json").exists()
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), activation="identity", progress=False)
    with pytest.raises(ValueError, match="activation: 'identity' → 'act_gate'"):
        ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), activation="act_gate", progress=False)


def test_jsonl_with_a_byte_order_mark_and_layers_named_twice(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_text('\ufeff{"prompt": "w1 w2"}\n', encoding="utf-8")
    assert [e.prompt for e in ds.read_jsonl(path)] == ["w1 w2"]  # Windows editors write one
    model, tok = build("mamba1", layers=2), _word_tokenizer()
    examples = ds.examples_from_records([{"prompt": "w1 w2"}])
    with pytest.raises(ValueError, match="names a layer twice"):
        ds.attribute_dataset(model, tok, examples, tmp_path / "o", methods=("l2",), layers=[0, -2], progress=False)


def test_a_model_with_one_embedding_row_edited_is_another_run(tmp_path):
    """The weights fingerprint reads every weight (row sums): a resume with one embedding row changed is refused,
    where a strided sample of 64 values per tensor missed it and mixed two models' maps in one folder."""
    from transformers import MambaConfig, MambaForCausalLM

    from conftest import perturb_

    torch.manual_seed(0)  # a vocabulary of 1000: most embedding rows lie between a 64-value sample's strides
    config = MambaConfig(hidden_size=32, state_size=4, num_hidden_layers=1, vocab_size=1000, use_cache=False)
    model = perturb_(MambaForCausalLM(config).eval(), seed=1)
    tok = _word_tokenizer()
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.get_input_embeddings().weight[9] += 0.01
    examples = ds.examples_from_records([{"prompt": "w1 w2 w3"}, {"prompt": "w5 w1"}])
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), shard_size=1, progress=False)
    with pytest.raises(ValueError, match=r"other model \(model weights: '[0-9a-f]{16}' → '[0-9a-f]{16}'\)"):
        ds.attribute_dataset(edited, tok, examples, tmp_path, methods=("l2",), shard_size=1, progress=False)
    # the same weights on another device or dtype path sum alike: the fingerprint does not depend on who sums
    assert ds.weights_fingerprint(copy.deepcopy(model)) == ds.weights_fingerprint(model)


def test_a_new_run_in_a_folder_never_reads_the_old_index(tmp_path, monkeypatch):
    """A finished run's folder with only its run.json deleted: the new run removes the old index.json before its
    first shard, and a shard of another run than its index is refused on reading."""
    model = build("mamba1", layers=1)
    tok = _word_tokenizer()
    examples = ds.examples_from_records([{"prompt": "w1 w2 w3"}, {"prompt": "w5 w1"}])
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("l2",), shard_size=1, progress=False)
    old_index = (tmp_path / "index.json").read_text()
    (tmp_path / "run.json").unlink()
    real, calls = ds._save_shard, []

    def crash_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ds, "_save_shard", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        ds.attribute_dataset(model, tok, examples, tmp_path, methods=("alti",), shard_size=1, progress=False)
    assert not (tmp_path / "index.json").exists() and len(calls) == 2
    # a stale index put back by hand is refused at the shard the new run rewrote
    (tmp_path / "index.json").write_text(old_index)
    monkeypatch.undo()
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("alti",), shard_size=1, progress=False)
    (tmp_path / "index.json").write_text(old_index)
    with pytest.raises(ValueError, match="written by another run than its index.json"):
        ds.load_attributions(tmp_path)[0]
    (tmp_path / "run.json").unlink()
    ds.attribute_dataset(model, tok, examples, tmp_path, methods=("alti",), shard_size=1, progress=False)
    loaded = ds.load_attributions(tmp_path)
    sliced = loaded[-2:]  # a Sequence slices
    assert len(sliced) == 2 and all(torch.equal(a["maps.alti"], loaded[k]["maps.alti"]) for k, a in enumerate(sliced))


def test_target_fields_that_cannot_be_meant_are_refused(tmp_path, recwarn):
    records = [{"prompt": "w1 w2", "answer": "w3"}, {"prompt": "w4"}]
    with pytest.raises(ValueError, match=r"no record of the records has a value in the target field 'answr'"):
        ds.examples_from_records(records, target_field="answr")
    path = _write_jsonl(tmp_path / "a.jsonl", records)
    with pytest.raises(ValueError, match=r"a.jsonl has a value in the target field 'answr' \(fields with values: "
                                         r"answer, prompt\)"):  # fmt: skip
        ds.read_jsonl(path, target_field="answr")
    with pytest.raises(ValueError, match="the prompt and target fields are both 'prompt'"):
        ds.read_jsonl(path, target_field="prompt")
    with pytest.warns(UserWarning, match="its other fields are answer"):
        examples = ds.read_jsonl(path)  # the default field is missing: allowed, but the other field is named
    assert [e.target for e in examples] == [None, None]
    assert [e.target for e in ds.read_jsonl(path, target_field="answer")] == ["w3", None]


def test_dataset_cli_refuses_options_it_would_ignore_or_fail_late(tmp_path, capsys, monkeypatch):
    good = _write_jsonl(tmp_path / "good.jsonl", RECORDS)
    base = ["attribute-dataset", "--model", "mamba1", "--input", str(good), "--out", str(tmp_path / "o")]
    cases = [
        (["--split", "test"], "--split picks a split of --hf-dataset"),
        (["--offload-folder", str(tmp_path / "off")], "--offload-folder is where --device-map offloads"),
        (["--backend", "triton"], "--backend triton"),
    ]
    for extra, message in cases:
        assert cli_main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("latim: error:") and message in err, (extra, err)
    assert not (tmp_path / "o").exists(), "a refused command writes no run settings"
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert cli_main(base) == 2
    assert "WORLD_SIZE must be a positive integer (torchrun sets it), got 'abc'" in capsys.readouterr().err


@pytest.mark.skipif(has_cuda() and importlib.util.find_spec("triton") is not None, reason="triton runs here")
def test_a_backend_the_device_cannot_run_is_refused_before_the_run_is_named(tmp_path):
    """The Python API too: the options' probe computes one map on the run's path, so triton without its package
    (or off CUDA) fails before run.json would lock the folder for the corrected call."""
    model = build("mamba1", layers=1)
    examples = ds.examples_from_records([{"prompt": "w1 w2 w3"}])
    with pytest.raises((ImportError, ValueError, RuntimeError), match="triton|CUDA"):
        ds.attribute_dataset(model, _word_tokenizer(), examples, tmp_path, methods=("l2",), backend="triton",
                             progress=False)  # fmt: skip
    assert not (tmp_path / "run.json").exists()
    ds.attribute_dataset(model, _word_tokenizer(), examples, tmp_path, methods=("l2",), progress=False)


def test_python_api_under_torchrun_without_a_process_group_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    model = build("mamba1", layers=1)
    examples = ds.examples_from_records([{"prompt": "w1 w2 w3"}])
    with pytest.raises(RuntimeError, match="call latim_captum.dataset.init_distributed"):
        ds.attribute_dataset(model, _word_tokenizer(), examples, tmp_path, methods=("l2",), progress=False)
    assert not (tmp_path / "run.json").exists()


def test_non_utf8_lines_and_plain_dicts_are_named(tmp_path):
    path = tmp_path / "latin1.jsonl"
    for bom in (b"", b"\xef\xbb\xbf"):
        path.write_bytes(bom + b'{"prompt": "w1 w2"}\n{"prompt": "caf\xe9"}\n')
        with pytest.raises(ValueError, match=r"latin1.jsonl line 2: not UTF-8 text"):
            ds.read_jsonl(path)
    with pytest.raises(TypeError, match=r"examples\[0\] is a dict, not an Example: .*examples_from_records"):
        ds.attribute_dataset(build("mamba1", layers=1), _word_tokenizer(), [{"prompt": "w1"}], tmp_path / "o")
    # a JSON string may hold U+2028 (a line separator to str.splitlines, not to JSON Lines)
    path.write_text(json.dumps({"prompt": "w1\u2028w2"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert [e.prompt for e in ds.read_jsonl(path)] == ["w1\u2028w2"]
