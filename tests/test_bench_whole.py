"""The whole-sequence benchmark: what its gradient baselines compute, and a quick run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from latim_captum import bench_whole
from latim_captum._environment import device_name
from latim_captum.bench_speed import build_model


@pytest.mark.parametrize("name", ["saliency", "lig"])
def test_batched_positions_equal_one_at_a_time_and_are_causal(name):
    """Each replicated copy explains its own position: batched = alone, and nothing after the position moves it."""
    model = build_model("mamba2", True, torch.float32, torch.device("cpu"))
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = model(ids).logits[0].argmax(-1)
    attribute = bench_whole.position_attributor(name, model, ids, predicted, batch=3, steps=8)
    positions = torch.tensor([2, 7, 11])
    together = attribute(positions)
    for row, p in enumerate(positions.tolist()):
        alone = attribute(torch.tensor([p]))[0]
        torch.testing.assert_close(together[row], alone, atol=1e-5, rtol=1e-4)
        scores = together[row].abs().sum(-1)
        assert float(scores[p + 1 :].sum()) == 0.0 and float(scores[: p + 1].max()) > 0
    assert not torch.allclose(together[0], together[1])


def test_quick_run_writes_the_report(tmp_path, capsys):
    from latim_captum.cli import main

    rc = main(["bench", "whole-sequence", "--quick", "--generate", "2", "--method-seconds", "0.05", "--tokens",
               "16", "--batch", "4", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    res = json.loads((tmp_path / "whole-sequence.json").read_text())
    assert res["device"] == device_name("cpu")
    assert res["latim"]["default"]["row_sum_rel_error"] < 1e-5
    for name in ("saliency", "lig"):
        g = res["gradients"][name]
        assert 4 <= g["positions"] <= 16 and g["all_rows_s"] >= g["measured_s"] > 0
        assert g["extrapolated"] == (g["positions"] < 16)
        assert res["ratios_vs_latim_default"][name] > 0
    if res.get("inseq") is not None:
        assert {"latim", "integrated_gradients", "saliency"} <= set(res["inseq"])
    report = (tmp_path / "whole-sequence.md").read_text()
    assert "× LaTIM default" in report
    assert res["versions"]["torch"] == torch.__version__ and res["options"]["tokens"] == 16
    assert f"torch {torch.__version__}" in report and '"tokens": 16' in report


def test_bad_sizes_are_refused(tmp_path):
    from latim_captum.cli import main

    assert main(["bench", "whole-sequence", "--quick", "--batch", "0", "--out", str(tmp_path)]) == 2
