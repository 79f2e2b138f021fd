"""CUDA smoke tests of the copy training and benchmark (run by the lead on a GPU machine)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("variant", ["mamba1", "mamba2"])
def test_train_bf16_and_bench_on_cuda(tmp_path, variant):
    from latim_captum.cli import main as cli_main
    from latim_captum.copying.train import main as train_main

    out = tmp_path / variant
    rc = train_main(
        [
            "--variant",
            variant,
            "--scale",
            "paper",
            "--device",
            "cuda",
            "--bf16",
            "--steps",
            "20",
            "--eval-every",
            "10",
            "--layers",
            "4",
            "--d-model",
            "256",  # 8 heads of 64: d_model 128 (4 heads) is refused on CUDA (causal-conv1d's layout)
            "--mimetic-layers",
            "1",
            "--n-train",
            "512",
            "--n-eval",
            "16",
            "--batch",
            "32",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["bf16"] and meta["steps"] == 20 and meta["device"] != "cpu"
    rc = cli_main(
        [
            "bench",
            "copying",
            "--variant",
            variant,
            "--scale",
            "paper",
            "--model",
            str(out),
            "--device",
            "cuda",
            "--n-samples",
            "4",
            "--methods",
            "l2",
            "alti_logit",
            "saliency",
            "--out",
            str(tmp_path / "res"),
            "--quiet",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "res" / f"copying-{variant}-paper.json").read_text())
    from latim_captum.copying.evaluate import PAPER_LAYER

    assert report["meta"]["device"] != "cpu" and report["paper_layer"] == PAPER_LAYER[variant]
    assert len(report["methods"]["l2"]["layers"]) == 4
