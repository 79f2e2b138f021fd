"""benchmarks/alignment_alti_logit_parts.py: eq 8's terms and the ALTI maps it scores are the method table's
(``alti_logit_layers``, ``alti``, ``alti_logit``, both strategies), its rollout and its other parts are the products
and masks they name, on a small translation model whose weights are moved away from their initialisation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from latim_captum.aggregate import rollout
from latim_captum.alignment.data import TINY_TASK, AlignmentTask
from latim_captum.alignment.metrics import alignment_error_rate, batch_alignments, gold_of
from latim_captum.methods import get_method
from latim_captum.tasks.reports import load_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "alignment_alti_logit_parts", ROOT / "benchmarks" / "alignment_alti_logit_parts.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 3-layer Mamba-1 translation model of the tiny task, its weights then moved by noise (saved in place)."""
    from latim_captum.alignment.train import main

    out = tmp_path_factory.mktemp("align") / "m1"
    argv = ["--variant", "mamba1", "--out", str(out), "--steps", "2", "--n-train", "16", "--n-eval", "4", "--batch",
            "4", "--layers", "3", "--d-model", "16", "--state", "4", "--eval-every", "2", "--warmup", "1", "--quiet"]
    assert main(argv) == 0
    model, _, _ = load_model_dir(out)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * p.std().clamp_min(0.05) * torch.randn_like(p))
    model.save_pretrained(out)
    return out


def _aer(maps: torch.Tensor, data, sure, possible) -> float:
    return alignment_error_rate(batch_alignments(maps, data, rows="predict"), sure, possible)["aer"]


def test_parts_match_the_method_table_and_their_definitions(tmp_path, model_dir):
    script = _script()
    n = 5
    argv = ["--model", str(model_dir), "--samples", str(n), "--batch", "2", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    assert torch.is_grad_enabled()  # the script's main leaves the caller's autograd state alone
    (report,) = json.loads((tmp_path / "alignment-alti-logit-parts.json").read_text())["models"]
    assert report["n_samples"] == n and set(report["strategies"]) == {"silu", "silu_gate"}

    model, _, meta = load_model_dir(model_dir)
    task = AlignmentTask(**meta["task"])
    assert meta["task"] == AlignmentTask(**TINY_TASK).to_dict()
    data = task.encode(task.pairs(n, meta["seed"] + 1))
    sure, possible = gold_of(data)
    with torch.no_grad():
        for act, suffix in (("silu", ""), ("silu_gate", "_silu_gate")):
            got = report["strategies"][act]
            terms = get_method("alti_logit_layers" + suffix)(model, data.ids).float()  # [B, L, N, N]
            altis = get_method("alti" + suffix)(model, data.ids).float()
            eq8 = get_method("alti_logit" + suffix)(model, data.ids).float()
            n_layers = terms.shape[1]
            assert n_layers == 3
            for layer in range(n_layers):
                assert got["layers"]["term"][layer] == pytest.approx(_aer(terms[:, layer], data, sure, possible))
                assert got["layers"]["alti"][layer] == pytest.approx(_aer(altis[:, layer], data, sure, possible))
                flow = rollout(list(altis[:, : layer + 1].unbind(1)))
                assert got["layers"]["rollout"][layer] == pytest.approx(_aer(flow, data, sure, possible))
                for which, shares in got["rollout_self_share"].items():
                    want = []
                    for k in range(n):
                        s, t = int(data.source_lengths[k]), int(data.target_lengths[k])
                        rows = range(s) if which == "source" else range(s, s + t)
                        want += [float(flow[k, i, i]) for i in rows]
                    assert shares[layer] == pytest.approx(sum(want) / len(want), rel=1e-5), (act, which, layer)
            assert got["aggregated"]["eq8"] == pytest.approx(_aer(eq8, data, sure, possible))
            # layer 1's term is its Δ (R^(0) = I)
            assert got["layers"]["term"][0] == pytest.approx(got["layers"]["delta"][0])
    # the strategies differ on this model, so a report that ignored --strategies would show
    assert report["strategies"]["silu"]["layers"]["term"] != report["strategies"]["silu_gate"]["layers"]["term"]


def test_source_columns_and_no_rollout_parts_by_hand(model_dir):
    """The two parts no method computes: Δ with its non-source columns at 0 carried by R^(l-1), and eq 8 without
    the rollout, checked on one batch against products written out here."""
    import latim_captum
    from latim_captum.maps.layer import layer_maps
    from latim_captum.methods import next_token_targets

    script = _script()
    model, _, meta = load_model_dir(model_dir)
    task = AlignmentTask(**meta["task"])
    part = task.encode(task.pairs(3, meta["seed"] + 1))
    with torch.no_grad():
        got = script.batch_parts(model, part, ["silu_gate"])["silu_gate"]
        tr = latim_captum.trace(model, part.ids)
        u = tr.readout.projection(next_token_targets(part.ids))
        maps = [layer_maps(layer, "silu_gate", ("alti", "logit"), projection=u) for layer in tr.layers]
    deltas, altis = [m["logit"] for m in maps], [m["alti"] for m in maps]
    direct = torch.diag_embed((u * tr.embeddings).sum(-1))
    torch.testing.assert_close(got["no_rollout"], direct + sum(deltas))
    r2 = altis[1] @ altis[0]
    for k in range(len(part)):
        s = int(part.source_lengths[k])
        masked = deltas[2][k].clone()
        masked[:, s:] = 0.0
        torch.testing.assert_close(got["term_source"][2][k], masked @ r2[k])
        torch.testing.assert_close(got["term"][2][k], deltas[2][k] @ r2[k])
    torch.testing.assert_close(got["rollout"][1], r2)
    assert not torch.allclose(got["term_source"][2], got["term"][2]), "the mask removes something on this model"


def test_bad_arguments_are_refused(tmp_path, model_dir):
    script = _script()
    with pytest.raises(SystemExit):
        script.main(["--model", str(model_dir), "--samples", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        script.main(["--model", str(model_dir), "--strategies", "tanh", "--out", str(tmp_path)])
