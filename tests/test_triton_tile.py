"""The Triton kernels (latim_captum.maps.triton, ``layer_maps_fast(kernel="triton")``) against the oracle.

Without CUDA the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, which conftest.py sets before triton is
first imported: tiny shapes only, it is slow); skipped where triton is not installed (CI).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import latim_captum as lc  # noqa: E402
from conftest import VOCAB, build, left_pad_mask, perturb_, random_ids  # noqa: E402
from latim_captum._precision import round_tf32  # noqa: E402
from latim_captum.aggregate import alti_proximity, alti_scores, lp_scores  # noqa: E402
from latim_captum.decompose import contributions_ref, tap_contributions, token_values_ref  # noqa: E402
from latim_captum.maps import (
    layer_maps_fast,  # noqa: E402
    layer_maps_ref,  # noqa: E402
)
from latim_captum.maps.triton import launch  # noqa: E402

MEASURES = ("l1", "l2", "alti", "logit")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
interpreter_only = pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")
# (block sizes, Mamba-1 anchor rows). Mamba-2: BC = 8 = head_dim puts one head in a channel chunk, BC = 16, 32 span
# heads (and a ragged d_inner = 48). Mamba-1: one anchor per row tile (8), two row tiles per anchor (4 | 8), one
# anchor per launch (16 > N); 16 × 16 tiles form the factor product as one batched tl.dot (the others term by term)
CONFIGS = (
    ({"BI": 8, "BJ": 8, "BC": 32, "BD": 32}, 8),
    ({"BI": 4, "BJ": 8, "BC": 8, "BD": 16}, 8),
    ({"BI": 16, "BJ": 4, "BC": 16, "BD": 16}, 16),
    ({"BI": 16, "BJ": 16, "BC": 16, "BD": 16}, 16),
)
KEYS = ("mamba2", "mamba2_ragged", "mamba1", "mamba1_ragged")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _alti_condition(layer) -> torch.Tensor:
    """``κ_i = ‖y_i‖_1 / Σ_j max(0, ‖y_i‖_1 − ‖y_i − T'_i(x_j)‖_1)`` per query row, ``[B, N]``: how much ALTI's row
    normalisation amplifies an error of the contributions (a fraction of ``‖y_i‖_1``)."""
    y = layer.block_output.double()
    proximity = alti_proximity(contributions_ref(layer, "silu").double(), layer.residual.double(), y)
    return y.abs().sum(-1) / torch.relu(proximity).sum(-1)


def _emulated_maps(layer, precision: str) -> dict[str, torch.Tensor]:
    """ℓ2 and ALTI maps of a GEMM with TF32 (round to nearest) or bf16 operands and exact products:
    ``T = round(G) round(W_o)ᵀ``, the arithmetic the kernel does at that precision (fp32 accumulation aside)."""
    rounded = round_tf32 if precision == "tf32" else (lambda t: t.to(torch.bfloat16).float())
    gated = token_values_ref(layer, tap_contributions(layer, "silu")) * layer.out_gate[:, :, None, :]
    contrib = (rounded(gated).double() @ rounded(layer.out_weight).double().T).float()
    return {"l2": lp_scores(contrib, 2), "alti": alti_scores(contrib, layer.residual, layer.block_output)}


def _traces(device: str = "cpu", n: int = 13) -> dict[str, lc.ModelTrace]:
    """The conftest Mamba-2 and Mamba-1 (d_model 32, d_inner 64, K 4) and ragged ones (d_model 24, d_inner 48, K 3,
    Mamba-2 head_dim 6), N tokens with left padding, float32."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    common = dict(hidden_size=24, expand=2, state_size=4, conv_kernel=3, vocab_size=VOCAB, num_hidden_layers=1)
    torch.manual_seed(5)
    # 8 heads of 6 channels (heads straddle every channel chunk), 2 groups: causal-conv1d (used on CUDA whenever
    # mamba-ssm's kernels are installed) needs its channels (48 + 2·2·4 = 64) and the in-projection's width
    # (2·48 + 16 + 8 = 120) to be multiples of 8
    ragged2 = Mamba2ForCausalLM(Mamba2Config(num_heads=8, head_dim=6, n_groups=2, chunk_size=4, **common))
    ragged1 = MambaForCausalLM(MambaConfig(**common))
    models = {
        "mamba2": build("mamba2", layers=1, seed=3),
        "mamba2_ragged": perturb_(ragged2.eval(), seed=6),
        "mamba1": build("mamba1", layers=1, seed=3),
        "mamba1_ragged": perturb_(ragged1.eval(), seed=7),
    }
    ids = random_ids(2, n, seed=5).to(device)
    mask = left_pad_mask(2, n, [0, 4]).to(device)
    return {k: lc.trace(m.to(device), ids, attention_mask=mask) for k, m in models.items()}


@pytest.fixture(scope="module")
def traces():
    return _traces()


def _check(layer, proj, ref, fast, tol=1e-4, **kwargs) -> dict[str, float]:
    tri = layer_maps_fast(layer, "silu", MEASURES, projection=proj, kernel="triton", **kwargs)
    errors = {}
    for m in MEASURES:
        errors[m] = max(_rel(tri[m], ref[m]), _rel(tri[m], fast[m]))
        assert errors[m] < tol, f"{m} {kwargs}: {errors[m]:.2e}"
    return errors


@interpreter_only
@pytest.mark.parametrize("staged", (True, False), ids=("staged", "fused"))
@pytest.mark.parametrize("key", KEYS)
def test_triton_maps_equal_reference_and_torch_tiles(traces, key, staged):
    """Every measure, several block shapes (ragged in rows, columns, d_inner and d_model), launches of all rows or
    of 5 rows (N = 13), left padding, both ways of making the ℓ1/ℓ2/ALTI sums: the kernels equal the oracle and the
    PyTorch tiles to 1e-4."""
    tr = traces[key]
    layer = tr.layers[0]
    assert layer.residual.dtype == torch.float32
    proj = tr.readout.projection(tr.readout.logits.argmax(-1))
    ref = layer_maps_ref(layer, "silu", MEASURES, projection=proj)
    fast = layer_maps_fast(layer, "silu", MEASURES, projection=proj, block=6)
    worst = 0.0
    for config, anchor in CONFIGS:
        # launches of 5 rows put Mamba-1's anchors inside the sequence: the factor product runs
        for block in (None, 5) if config in (CONFIGS[0][0], CONFIGS[-1][0]) else (None,):
            config = dict(config, staged=staged)
            errors = _check(layer, proj, ref, fast, kernel_config=config, block=block, anchor_rows=anchor)
            worst = max(worst, *errors.values())
    print(f"{key} {'staged' if staged else 'fused'}: max relative error {worst:.2e}")


@interpreter_only
def test_staged_path_really_runs(traces, monkeypatch):
    """The default ℓ1/ℓ2/ALTI launch is the staged one (G buffer + GEMM), ``staged=False`` the fused one, and the
    logit always the fused kernel (MODE 1)."""
    seen = []
    for name in ("staged_sums", "alti_diagonal"):
        real = getattr(launch, name)
        monkeypatch.setattr(launch, name, lambda *a, _real=real, _name=name, **k: seen.append(_name) or _real(*a, **k))
    layer = traces["mamba2"].layers[0]
    config = CONFIGS[0][0]
    layer_maps_fast(layer, "silu", ("l2",), kernel="triton", kernel_config=config)
    assert seen == ["staged_sums"]
    layer_maps_fast(layer, "silu", ("alti",), kernel="triton", kernel_config=config)
    assert seen == ["staged_sums", "staged_sums", "alti_diagonal"]
    layer_maps_fast(layer, "silu", ("l2", "alti"), kernel="triton", kernel_config=dict(config, staged=False))
    assert len(seen) == 3


@interpreter_only
def test_staged_sums_write_every_block_of_d(traces, monkeypatch):
    """Step 2 with more partial-sum blocks than d_model needs (as when an autotuning candidate has larger blocks of D
    than the smallest one the buffer is sized for): the blocks past d_model hold zeros and the maps stay exact. (The
    autotuned case itself needs a GPU: test_triton_autotuned_on_real_widths.)"""
    layer = traces["mamba2_ragged"].layers[0]  # d_model 24 = 2 blocks of 16
    ref = layer_maps_ref(layer, "silu", ("l1", "l2", "alti"))
    real = launch.project_blocks
    monkeypatch.setattr(launch, "project_blocks", lambda *a: real(*a) + 3)
    maps = layer_maps_fast(layer, "silu", ("l1", "l2", "alti"), kernel="triton", kernel_config=CONFIGS[2][0])
    for m in ("l1", "l2", "alti"):
        assert _rel(maps[m], ref[m]) < 1e-4, m


def test_causal_tiles_cover_every_causal_pair_once():
    """The tile list holds each causal pair (j ≤ i) of the launch's rows exactly once, per sequence, and no tile
    without one; ragged rows and columns, launches that start inside the sequence."""
    from latim_captum.maps.triton import causal_tiles

    for r0, r1, bi, bj in ((0, 13, 4, 8), (5, 13, 8, 16), (16, 40, 8, 4), (3, 4, 2, 2)):
        tiles = causal_tiles(2, r0, r1, bi, bj, torch.device("cpu"))
        assert tiles.dtype == torch.int32
        counts = torch.zeros(2, r1 - r0, r1, dtype=torch.int64)
        for b, row_tile, col_tile in tiles.tolist():
            i = torch.arange(r0 + row_tile * bi, r0 + (row_tile + 1) * bi)[:, None]
            j = torch.arange(col_tile * bj, (col_tile + 1) * bj)[None, :]
            inside = (i < r1) & (j <= i)
            assert inside.any(), (r0, r1, bi, bj, row_tile, col_tile)
            counts[b, (i - r0).expand_as(inside)[inside], j.expand_as(inside)[inside]] += 1
        rows = torch.arange(r0, r1)[:, None]
        assert torch.equal(counts, (torch.arange(r1)[None, :] <= rows).long().expand(2, -1, -1))


@interpreter_only
def test_triton_mamba1_strong_decay_and_rows():
    """A large |A|·Δ (decay factors underflow across anchors) and a row subset, as in test_fast."""
    model = build("mamba1", layers=1, seed=7)
    with torch.no_grad():
        model.backbone.layers[0].mixer.A_log.add_(3.0)
    layer = lc.trace(model, random_ids(1, 30, seed=2)).layers[0]
    ref = layer_maps_ref(layer, "silu", ("l2", "alti"))
    small, dot = {"BI": 4, "BJ": 8, "BC": 32, "BD": 32}, {"BI": 16, "BJ": 16, "BC": 16, "BD": 16}
    # anchor 12: not a power of two, eq 15 near the anchors from PyTorch instead of band_kernel
    for config, anchor in ((small, 4), (small, 8), (small, 12), (dot, 16)):
        for staged in (True, False):
            tri = layer_maps_fast(
                layer, "silu", ("l2", "alti"), rows=(9, 25), anchor_rows=anchor, kernel="triton",
                kernel_config=dict(config, staged=staged),
            )  # fmt: skip
            for m in ("l2", "alti"):
                assert tri[m].shape == (1, 16, 30)
                assert _rel(tri[m], ref[m][:, 9:25]) < 1e-4, (m, anchor, staged)
    with pytest.raises(ValueError, match="anchor_rows=6 must be a multiple"):
        layer_maps_fast(layer, "silu", ("l2",), anchor_rows=6, kernel="triton", kernel_config=small)


@interpreter_only
def test_triton_rows_subset_and_out(traces):
    """``rows=`` and a preallocated ``out`` work as on the PyTorch tiles."""
    layer = traces["mamba2"].layers[0]
    config = CONFIGS[0][0]
    ref = layer_maps_ref(layer, "silu_gate", ("l2", "alti"))
    part = layer_maps_fast(layer, "silu_gate", ("l2", "alti"), rows=(4, 11), kernel="triton", kernel_config=config)
    for m in ("l2", "alti"):
        assert part[m].shape == (2, 7, 13)
        assert _rel(part[m], ref[m][:, 4:11]) < 1e-4, m
    out = {"l2": torch.zeros(2, 13, 13)}
    assert layer_maps_fast(layer, "silu_gate", ("l2",), out=out, kernel="triton", kernel_config=config) is out
    assert _rel(out["l2"], ref["l2"]) < 1e-4


@pytest.mark.parametrize("start,stop,rows", [(0, 100, 40), (0, 13, 13), (5, 77, 9), (0, 64, 16), (30, 31, 4)])
def test_workspace_is_sized_for_the_largest_launch(start, stop, rows):
    """The workspace's capacity is the maximum over the actual launches, not an estimate."""
    from latim_captum.maps.triton import Workspace, causal_tiles

    ws = Workspace(start, stop, rows)
    launches = [(r0, min(stop, r0 + rows)) for r0 in range(start, stop, rows)]
    assert ws.most_pairs() == max((r1 - r0) * r1 for r0, r1 in launches)
    for bi, bj in ((8, 16), (16, 16), (4, 8)):
        cpu = torch.device("cpu")
        assert ws.most_tiles(bi, bj) == max(len(causal_tiles(1, r0, r1, bi, bj, cpu)) for r0, r1 in launches)


@pytest.mark.parametrize("key", KEYS)
def test_launch_rows_fit_the_budget_in_whole_row_tiles(traces, key):
    """Rows per launch fit the budget and, when a launch has fewer rows than the layer, fill whole row tiles
    (Mamba-2's staged tile rows; Mamba-1's anchors); more budget never gives fewer rows."""
    from latim_captum.maps.triton.launch import STAGED_TILE, launch_rows, row_elements, staged_row_bytes

    layer = traces[key].layers[0]
    n = layer.residual.shape[1]
    anchor = 4
    mamba1 = key.startswith("mamba1")
    step = anchor if mamba1 else STAGED_TILE["mamba2"][0]
    row_bytes = row_elements(layer, anchor)[1] * 4 + staged_row_bytes(layer, ("l2", "alti"), "tf32")
    previous = 0
    for budget_rows in range(1, n + 2):
        rows = launch_rows(layer, budget_rows * row_bytes, anchor, ("l2", "alti"), "tf32")
        assert rows >= previous
        previous = rows
        if budget_rows >= n:
            assert rows == n
        elif budget_rows >= step:
            assert rows % step == 0 and rows <= budget_rows and rows > budget_rows - step
        elif mamba1:
            assert rows == anchor  # an anchor is the smallest launch
        else:
            assert rows == budget_rows


@interpreter_only
@pytest.mark.parametrize("key", ("mamba2_ragged", "mamba1"))
def test_launches_share_one_workspace(traces, key, monkeypatch):
    """Several launches per layer reuse buffers allocated once (no allocation per launch), and give the maps of one
    launch."""
    from latim_captum.maps.triton import workspace as tt

    layer = traces[key].layers[0]
    config, anchor = CONFIGS[0]
    one = layer_maps_fast(layer, "silu", ("l2", "alti"), kernel="triton", kernel_config=config, anchor_rows=anchor)
    allocations = []
    take = tt.Workspace.take

    def counting_take(self, key_, shape, dtype, device, capacity):
        before = self.buffers.get(key_)
        out = take(self, key_, shape, dtype, device, capacity)
        if self.buffers[key_] is not before:
            allocations.append(key_)
        return out

    monkeypatch.setattr(tt.Workspace, "take", counting_take)
    several = layer_maps_fast(
        layer, "silu", ("l2", "alti"), kernel="triton", kernel_config=config, anchor_rows=anchor, block=anchor
    )  # fmt: skip
    expected = ["gated", "blocks"] + (["mixing"] if key.startswith("mamba2") else [])
    assert sorted(allocations) == sorted(expected)  # once each, for 2 launches of 8 rows (N = 13)
    for m in ("l2", "alti"):
        assert _rel(several[m], one[m]) < 1e-6, m


@interpreter_only
@pytest.mark.parametrize("key", KEYS)
def test_triton_reduced_precision_is_the_emulated_arithmetic(traces, key):
    """TF32 and bf16: the kernel's maps are those of a GEMM of rounded operands with exact products (TF32 rounded to
    nearest, not truncated), emulated in float64; the interpreter multiplies the rounded operands exactly, as the
    tensor cores do. The fp32 oracle is farther away, by the precision's own error."""
    layer = traces[key].layers[0]
    ref = layer_maps_ref(layer, "silu", ("l2", "alti"))
    for precision in ("tf32", "bf16"):
        emulated = _emulated_maps(layer, precision)
        config, anchor = CONFIGS[1]
        for staged in (True, False):
            maps = layer_maps_fast(
                layer, "silu", ("l2", "alti"), precision=precision, kernel="triton",
                kernel_config=dict(config, staged=staged), anchor_rows=anchor,
            )  # fmt: skip
            for m in ("l2", "alti"):
                assert _rel(maps[m], emulated[m]) < 1e-5, (precision, staged, m)
            assert _rel(maps["l2"], ref["l2"]) > 1e-5, precision  # the operands really were rounded


def test_triton_refuses_what_it_does_not_cover(traces):
    layer = traces["mamba2"].layers[0]
    with pytest.raises(ValueError, match="'cuda'"):
        layer_maps_fast(layer, "silu", ("l2",), kernel="cuda")
    with pytest.raises(ValueError, match=r"l1, l2, alti and logit, not \['l3'\]"):
        layer_maps_fast(layer, "silu", ("l3",), kernel="triton")
    model = build("mamba2", layers=1, seed=3).double()
    tr64 = lc.trace(model, random_ids(1, 5, seed=1), dtype=torch.float64)
    with pytest.raises(ValueError, match="float32, not torch.float64"):
        layer_maps_fast(tr64.layers[0], "silu", ("l2",), kernel="triton")
    with pytest.raises(TypeError, match="LayerTrace"):
        layer_maps_fast(object(), "silu", ("l2",), kernel="triton")


def _single_query_gap(device: str) -> float:
    """Largest relative gap of one ALTI-Logit row, fused kernel vs PyTorch tiles, on a 2-layer model per variant."""
    from latim_captum.single_query import alti_logit_row

    worst = 0.0
    for kind in ("mamba1", "mamba2"):
        model = build(kind, layers=2, seed=9).to(device)
        ids = random_ids(2, 13, seed=9).to(device)
        mask = left_pad_mask(2, 13, [0, 3]).to(device)
        tr = lc.trace(model, ids, attention_mask=mask)
        for position in (-1, 6):
            torch_row = alti_logit_row(tr, position=position, backend="fast")
            tri_row = alti_logit_row(tr, position=position, backend="triton")
            assert torch.equal(tri_row.targets, torch_row.targets)
            worst = max(worst, _rel(tri_row.scores, torch_row.scores))
    return worst


@interpreter_only
def test_single_query_with_triton_kernel(monkeypatch):
    """``alti_logit_row(backend="triton")``: the row of the PyTorch tiles (which tests/test_single_query.py checks
    against the full ALTI-Logit map), with the kernel's own rows per launch, and the kernel really runs."""
    from latim_captum.maps import triton as triton_path

    launches = []
    real = triton_path.tile_sums
    monkeypatch.setattr(triton_path, "tile_sums", lambda *a, **k: launches.append(a[3]) or real(*a, **k))
    assert _single_query_gap("cpu") < 1e-5
    assert ("alti",) in launches and ("logit",) in launches


def _backend_gaps(device: str) -> dict[str, float]:
    """``backend="triton"`` through the public API and the Captum classes against ``backend="fast"``: per-layer maps,
    the ALTI rollout's row and ALTI-Logit's row (single-query path), both variants."""
    from latim_captum import LatimALTI, LatimALTILogit, LatimL2

    def maps(model, ids, mask, name: str, backend: str) -> torch.Tensor:
        if name == "interactions":
            return lc.interactions(model, ids, method="alti", attention_mask=mask, backend=backend)
        if name == "l2_row":
            return LatimL2(model, backend=backend).attribute(ids, None, mask, layer="all", position=7)
        cls = LatimALTI if name == "rollout_row" else LatimALTILogit
        return cls(model, backend=backend).attribute(ids, None, mask)

    gaps: dict[str, float] = {}
    for kind in ("mamba1", "mamba2"):
        model = build(kind, layers=2, seed=4).to(device)
        ids = random_ids(2, 11, seed=4).to(device)
        mask = left_pad_mask(2, 11, [0, 3]).to(device)
        for name in ("interactions", "l2_row", "rollout_row", "alti_logit_row"):
            gaps[f"{kind} {name}"] = _rel(maps(model, ids, mask, name, "triton"), maps(model, ids, mask, name, "fast"))
    return gaps


@interpreter_only
def test_triton_backend_of_the_public_api(monkeypatch):
    """``backend="triton"`` (functions and Captum classes) gives the maps of ``backend="fast"``, and really runs the
    kernels."""
    from latim_captum.maps import triton as triton_path

    launches = []
    real = triton_path.tile_sums
    monkeypatch.setattr(triton_path, "tile_sums", lambda *a, **k: launches.append(a[3]) or real(*a, **k))
    gaps = _backend_gaps("cpu")
    assert max(gaps.values()) < 1e-5, gaps
    assert {("alti",), ("l2",), ("logit",)} <= set(launches)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernel)")
def test_triton_backend_of_the_public_api_on_cuda():
    """``backend="triton"`` on CUDA: the maps of ``backend="fast"`` to 1e-4 (IEEE float32 on both)."""
    gaps = _backend_gaps("cuda")
    print("triton vs fast backend:", {k: f"{v:.1e}" for k, v in gaps.items()})
    assert max(gaps.values()) < 1e-4, gaps


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernel)")
@pytest.mark.parametrize("key", KEYS)
def test_triton_on_cuda_matches_reference(key):
    """The compiled kernels against the oracle in IEEE fp32 (autotuned and fixed configs of both paths, to 1e-4),
    and in TF32 / bf16 against the same arithmetic emulated in float64 (operands rounded, exact products; to 1e-4),
    with two fixed configs of each path. The distances to the fp32 oracle (of the kernel, of the PyTorch tiles at the
    same precision and of the emulation) and each model's worst ALTI row condition are printed: they say what the
    precision costs. Every case runs and prints before the test fails, so one GPU call reports them all."""
    from latim_captum.maps.triton.kernels import CANDIDATES, PROJECT_CANDIDATES, STAGED_TILE

    failures = []
    tr = _traces("cuda", n=70)[key]
    variant = "mamba1" if key.startswith("mamba1") else "mamba2"
    layer = tr.layers[0]
    proj = tr.readout.projection(tr.readout.logits.argmax(-1))
    ref = layer_maps_ref(layer, "silu", MEASURES, projection=proj)
    fast = layer_maps_fast(layer, "silu", MEASURES, projection=proj, block=6)
    # autotuned (staged ℓ1/ℓ2/ALTI, fused logit), then fixed configs of each path (autotuning the fused path
    # too would compile its every candidate again: minutes, cold)
    for config in (
        {},
        {"BI": 16, "BJ": 16, "BC": 16, "BD": 32},
        {"BI": 8, "BJ": 16, "BC": 32, "BD": 128, "staged": False},
    ):
        for block in (None, 5):
            tri = layer_maps_fast(
                layer, "silu", MEASURES, projection=proj, kernel="triton", kernel_config=config, block=block,
                anchor_rows=16,
            )  # fmt: skip
            errors = {m: max(_rel(tri[m], ref[m]), _rel(tri[m], fast[m])) for m in MEASURES}
            print(key, "ieee", config, block, {m: f"{e:.1e}" for m, e in errors.items()}, flush=True)
            failures += [f"{key} ieee {config} {block} {m} {e:.1e}" for m, e in errors.items() if e >= 1e-4]
    print(key, f"worst ALTI row condition κ = {float(_alti_condition(layer).max()):.0f}")
    for precision in ("tf32", "bf16"):
        emulated = _emulated_maps(layer, precision)
        torch_tiles = layer_maps_fast(layer, "silu", ("l2", "alti"), precision=precision, block=16)
        # fixed candidates (autotuning each precision would compile every candidate again: minutes, cold): two
        # of the fused kernel, two of the staged ones
        bi, bj = STAGED_TILE[variant]
        staged = [
            dict(BI=bi, BJ=bj, BC=bk, BD=bd, num_warps=warps, num_stages=stages, staged=True)
            for bk, bd, warps, stages in PROJECT_CANDIDATES[bi * bj][::3]
        ]
        fused = [dict(zip(("BI", "BJ", "BC", "BD"), c[:4]), staged=False) for c in CANDIDATES[variant][::7]]
        for config in fused + staged:
            anchor = {"anchor_rows": 16} if variant == "mamba1" else {}
            maps = layer_maps_fast(
                layer, "silu", ("l2", "alti"), precision=precision, kernel="triton", kernel_config=config, **anchor
            )
            errors = {m: _rel(maps[m], emulated[m]) for m in ("l2", "alti")}
            print(
                key, precision, config, "vs emulation", {m: f"{e:.1e}" for m, e in errors.items()},
                "| vs fp32 oracle: kernel", {m: f"{_rel(maps[m], ref[m]):.1e}" for m in ("l2", "alti")},
                "torch tiles", {m: f"{_rel(torch_tiles[m], ref[m]):.1e}" for m in ("l2", "alti")},
                "emulation", {m: f"{_rel(emulated[m], ref[m]):.1e}" for m in ("l2", "alti")}, flush=True,
            )  # fmt: skip
            failures += [f"{key} {precision} {config} {m} {e:.1e}" for m, e in errors.items() if e >= 1e-4]
    assert not failures, "\n".join(failures)


def test_context_holds_the_share_layouts_the_launches_read(traces):
    """The staged step 1 reads the tap shares channel-contiguous, the fused kernel and the PyTorch tiles
    sequence-contiguous; each layout is made only when asked for, and both hold the same values."""
    from latim_captum.decompose import tap_contributions
    from latim_captum.maps.tiles import layer_context

    layer = traces["mamba2"].layers[0]
    expected = tap_contributions(layer, "silu").transpose(-1, -2)  # [K, B, d, N]
    both = layer_context(layer, "silu", 1 << 20, 16, sequence_contiguous=True, staged_channels=True)
    assert both.shares.stride(-1) == 1 and both.staged_shares.stride(-2) == 1
    assert torch.equal(both.shares, expected) and torch.equal(both.staged_shares, expected)
    staged_only = layer_context(layer, "silu", 1 << 20, 16, sequence_contiguous=False, staged_channels=True)
    assert staged_only.shares.stride(-2) == 1 and staged_only.staged_shares is staged_only.shares
    sequence_only = layer_context(layer, "silu", 1 << 20, 16)
    assert sequence_only.shares.stride(-1) == 1 and sequence_only.staged_shares is sequence_only.shares


@interpreter_only
@pytest.mark.parametrize("key", ("mamba2_ragged", "mamba1"))
def test_triton_maps_do_not_depend_on_the_share_layout(traces, key, monkeypatch):
    """The kernels take any strides: the maps with channel-contiguous shares for step 1 are those with the
    sequence-contiguous ones, for the staged measures alone and with the fused logit."""
    layer = traces[key].layers[0]
    config, anchor = CONFIGS[0]
    proj = torch.randn_like(traces[key].embeddings)
    for measures in (("l2", "alti"), ("alti", "logit")):
        maps = {}
        for channels in (False, True):
            maps[channels] = layer_maps_fast(
                layer, "silu", measures, projection=proj, kernel="triton",
                kernel_config=dict(config, channel_shares=channels), anchor_rows=anchor,
            )  # fmt: skip
        for m in measures:
            assert torch.equal(maps[False][m], maps[True][m]), (measures, m)


def _mixing_gaps(tr) -> list[float]:
    """:func:`mamba2_mixing` (one Triton pass) against its ``_ref`` (PyTorch) for several row ranges, relative."""
    from latim_captum.maps.tiles import layer_context, mamba2_head_mixing
    from latim_captum.maps.triton import mamba2_mixing

    layer = tr.layers[0]
    n = layer.residual.shape[1]
    ctx = layer_context(layer, "silu", 1 << 20, 16)
    gaps = []
    for r0, r1 in ((0, n), (5, n), (3, n - 4), (n - 1, n)):
        got = mamba2_mixing(ctx, r0, r1)
        ref = mamba2_head_mixing(ctx, r0, r1, 0, r1)
        assert got.shape == ref.shape
        assert float(got.abs().triu(diagonal=r0 + 1).max()) == 0.0, "sources after the row must be 0"
        gaps.append(_rel(got, ref))
    return gaps


@interpreter_only
@pytest.mark.parametrize("key", ("mamba2", "mamba2_ragged"))
def test_mamba2_mixing_kernel_equals_reference(traces, key):
    """The mixing of one Triton pass (groups, ragged heads, row ranges not starting at 0) is the PyTorch mixing."""
    assert max(_mixing_gaps(traces[key])) < 1e-6


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernel)")
def test_mamba2_mixing_kernel_on_real_widths():
    """mamba2-130m's widths (24 heads, state 128, N = 300): the mixing kernel equals its PyTorch ``_ref``."""
    from latim_captum.bench_speed import build_model

    model = build_model("mamba2", False, torch.float32, torch.device("cuda"))
    model.backbone.layers = model.backbone.layers[:1]
    ids = torch.randint(0, model.config.vocab_size, (1, 300), device="cuda")
    gaps = _mixing_gaps(lc.trace(model, ids))
    print("mixing kernel vs PyTorch:", [f"{g:.1e}" for g in gaps])
    assert max(gaps) < 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernel)")
@pytest.mark.parametrize("kind", ("mamba1", "mamba2"))
def test_triton_autotuned_on_real_widths(kind):
    """d_model 768, d_inner 1536 (mamba-130m's widths, 1 layer, N = 300): the autotuned kernels (tuned by this very
    call) equal the PyTorch tiles to 1e-4. The tiny models cannot catch what depends on d_model spanning several
    blocks of D, e.g. partial sums that one autotuning candidate writes and the chosen one does not."""
    from latim_captum.bench_speed import build_model

    model = build_model(kind, False, torch.float32, torch.device("cuda"))
    model.backbone.layers = model.backbone.layers[:1]
    ids = torch.randint(0, model.config.vocab_size, (1, 300), device="cuda")
    tr = lc.trace(model, ids)
    proj = tr.readout.projection(tr.readout.logits.argmax(-1))
    layer = tr.layers[0]
    measures = ("l1", "l2", "alti", "logit")
    torch_tiles = layer_maps_fast(layer, "silu", measures, projection=proj)
    for anchor in (None, 64):
        tri = layer_maps_fast(layer, "silu", measures, projection=proj, kernel="triton", anchor_rows=anchor)
        errors = {m: _rel(tri[m], torch_tiles[m]) for m in measures}
        print(kind, anchor, {m: f"{e:.1e}" for m, e in errors.items()})
        assert max(errors.values()) < 1e-4, errors


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernel)")
def test_single_query_with_triton_kernel_on_cuda():
    """``alti_logit_row(backend="triton")`` on CUDA: the row of the PyTorch tiles, to 1e-4."""
    gap = _single_query_gap("cuda")
    print("single query, kernel vs PyTorch tiles:", f"{gap:.1e}")
    assert gap < 1e-4


_COMPILE = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from latim_captum.maps.triton.kernels import (CANDIDATES, GATE_CANDIDATES, MIX_TILE, PROJECT_CANDIDATES,
                                              STAGED_TILE, band_kernel, fold_kernel, gate_kernel, mix_kernel,
                                              project_kernel, tile_kernel)

results = []
for kernel, state, mode, precision, alti in json.loads(sys.argv[1]):
    shape = dict(K=4, HEAD_DIM=1 if state else 64, STATE=state, ANCHOR=16 if state else 0)
    want = dict(WANT_L1=True, WANT_L2=True, WANT_ALTI=alti)
    bi, bj = STAGED_TILE["mamba1" if state else "mamba2"]
    if kernel == "fused":
        fn = tile_kernel
        bi, bj, bc, bd, warps, stages = CANDIDATES["mamba1" if state else "mamba2"][0]
        constexprs = dict(**shape, **want, MODE=mode, PRECISION=precision, INTERPRET=False, BI=bi, BJ=bj, BC=bc,
                          BD=bd, EVEN_C=True, EVEN_D=True, STATE_P=16 if state else 0)
    elif kernel == "gate":
        fn = gate_kernel
        (bc, warps), stages = GATE_CANDIDATES[0], 1
        constexprs = dict(**shape, PRECISION=precision, BI=bi, BJ=bj, BC=bc, EVEN_C=True, STATE_P=16 if state else 0)
    elif kernel == "fold":
        fn, warps, stages = fold_kernel, 4, 1
        constexprs = dict(K=4, STATE=16, STATE_P=16, BC=16, BJ=32)
    elif kernel == "band":
        fn, warps, stages = band_kernel, 4, 1
        constexprs = dict(STATE=16, ANCHOR=32, BC=4)
    elif kernel == "mix":
        fn, warps, stages = mix_kernel, 8, 1
        constexprs = dict(STATE=128, STATE_P=128, BI=MIX_TILE[0], BS=MIX_TILE[1])
    else:
        fn = project_kernel
        bi, bj = STAGED_TILE["mamba1" if state else "mamba2"]
        bk, bd, warps, stages = PROJECT_CANDIDATES[bi * bj][0]
        constexprs = dict(**want, PRECISION=precision, INTERPRET=False, BI=bi, BJ=bj, BK=bk, BD=bd, EVEN_K=True,
                          EVEN_D=True)
    bf16 = {"w_ptr", "g_ptr"} if precision == 2 else set()
    signature = {
        name: "constexpr" if name in constexprs else
        ("*i32" if name == "tiles_ptr" else "*fp64" if name == "lam_ptr" else "*bf16" if name in bf16 else "*fp32")
        if name.endswith("_ptr") else "i32"
        for name in fn.arg_names
    }
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": warps, "num_stages": stages})
    results.append("wgmma" in compiled.asm["ptx"])
print(json.dumps(results))
"""


def test_kernel_compiles_for_hopper():
    """The kernels compile to sm_90 (ptxas from the triton wheel, no GPU needed): the fused one for both variants,
    both modes and the three precisions, the staged ones (G, then the GEMM) likewise, Mamba-1's factor folding and
    band, Mamba-2's mixing; their TF32 / bf16 W_o products are Hopper tensor-core instructions (wgmma)."""
    import json
    import subprocess
    import sys

    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("triton has no NVIDIA backend here")
    fused = [(0, 0, 1, True), (0, 0, 0, False), (0, 0, 2, True), (0, 1, 0, False), (16, 0, 1, True), (16, 1, 0, False)]
    cases = [("fused", *case) for case in fused]
    cases += [("gate", state, 0, precision, False) for state in (0, 16) for precision in (0, 1, 2)]
    cases += [
        ("project", state, 0, precision, alti)
        for state in (0, 16)
        for precision in (0, 1, 2)
        for alti in (True, False)
    ]
    cases += [("fold", 16, 0, 0, False), ("band", 16, 0, 0, False), ("mix", 0, 0, 0, False)]
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE, json.dumps(cases)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    uses_wgmma = json.loads(done.stdout.strip().splitlines()[-1])
    # the logit (fused MODE 1), G (gate), Mamba-1's factors (fold, band) and Mamba-2's mixing (mix) have no W_o
    # product; IEEE fp32 ("highest") cannot use tensor cores: FMA
    expected = [
        kernel in ("fused", "project") and mode == 0 and precision != 0 for kernel, _, mode, precision, _ in cases
    ]
    assert uses_wgmma == expected, uses_wgmma


def test_autotune_candidates_cover_every_variant():
    """Each variant keeps candidates (Mamba-1: with the default anchors and the smallest, 8), their row blocks divide
    the anchors, and the logit launch (no D blocks) tries each pair-tile shape once."""
    from latim_captum.maps.tiles import default_anchor_rows
    from latim_captum.maps.triton.kernels import autotune_configs, prune

    configs = autotune_configs()
    for state, anchors in ((0, (0,)), (16, (8, *{default_anchor_rows(n) for n in (64, 512, 2048, 32768)}))):
        for anchor in anchors:
            full = prune(configs, {}, STATE=state, ANCHOR=anchor, MODE=0)
            logit = prune(configs, {}, STATE=state, ANCHOR=anchor, MODE=1)
            assert full and logit and len(logit) <= len(full)
            assert all(anchor % c.kwargs["BI"] == 0 for c in full + logit)
            assert len({(c.kwargs["BI"], c.kwargs["BJ"], c.kwargs["BC"]) for c in logit}) == len(logit)


def test_autotuned_configurations_persist_across_processes():
    """With a Triton that can (3.2+), every autotuner writes its timings to Triton's cache: a new process reuses the
    configuration an earlier one chose instead of tuning again (the cache stays off in the interpreter)."""
    import inspect

    import triton

    from latim_captum.maps.triton import kernels

    can = "cache_results" in inspect.signature(triton.autotune).parameters
    assert kernels.autotune_options() == ({"cache_results": True} if can else {})
    source = inspect.getsource(kernels)
    assert source.count("**autotune_options()") == source.count("= triton.autotune(") == 3


def _hybrid_gaps(device: str) -> dict[str, float]:
    """``backend="triton"`` on hybrids against ``backend="fast"``: Jamba (Mamba-1 sublayers beside attention and
    MoE), Bamba (Mamba-2, attention, MLP) and FalconH1 (parallel Mamba-2 + attention: PyTorch tiles under either)."""
    import warnings

    from test_hybrids import build_hybrid

    gaps: dict[str, float] = {}
    for family in ("jamba", "bamba", "falcon_h1"):
        model, _ = build_hybrid(family, seed=2, kernel_widths=True)  # widths mamba-ssm's kernels take, if installed
        model.to(device)
        ids = random_ids(1, 10, seed=2).to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = lc.trace(model, ids)
        for method in ("l2", "alti"):
            tri = lc.interactions(tr, method=method, backend="triton")
            gaps[f"{family} {method}"] = _rel(tri, lc.interactions(tr, method=method, backend="fast"))
        gaps[f"{family} alti_logit"] = _rel(lc.alti_logit(tr, backend="triton").scores,
                                            lc.alti_logit(tr, backend="fast").scores)  # fmt: skip
    return gaps


@interpreter_only
def test_triton_backend_on_hybrids(monkeypatch):
    """Hybrids' Mamba sublayers run the Triton kernels under ``backend="triton"`` (Mamba-1 for Jamba, Mamba-2 for
    Bamba), their other sublayers the PyTorch tiles; the maps are those of ``backend="fast"``."""
    from latim_captum.maps import triton as triton_path

    variants = []
    real = triton_path.tile_sums
    monkeypatch.setattr(
        triton_path, "tile_sums", lambda ctx, *a, **k: variants.append(ctx.layer.variant) or real(ctx, *a, **k)
    )
    gaps = _hybrid_gaps("cpu")
    assert max(gaps.values()) < 1e-5, gaps
    assert {"mamba1", "mamba2"} <= set(variants)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or INTERPRET, reason="needs a CUDA GPU (compiled kernel)")
def test_triton_backend_on_hybrids_on_cuda():
    gaps = _hybrid_gaps("cuda")
    print("triton vs fast on hybrids:", {k: f"{v:.1e}" for k, v in gaps.items()})
    assert max(gaps.values()) < 1e-4, gaps
