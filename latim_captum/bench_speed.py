"""Speed benchmark of the fast LaTIM path: wall time, peak memory and achieved TFLOP/s against the GEMM floor.

The dominant term of ℓ2/ALTI maps is projecting every causal ``(i, j)`` pair's ``d_inner`` vector through ``W_o``:
``2 · N(N+1)/2 · d_inner · d_model`` FLOPs per layer (the dense-GEMM floor reported here). Achieved TFLOP/s =
floor / wall time, and its fraction of the GPU's dense matmul peak measured in the same run with a large matmul of
the same precision (fp32 models use TF32 for the ``W_o`` GEMM, bf16 models bf16 with fp32 accumulation).

Ratios reported per point: to the ``_ref`` path (timed on one layer, ×n_layers, only up to N = 2048: it materialises
``[rows, N, d, R]``), to Captum's ``LayerIntegratedGradients`` (50 steps, one prediction) for one-query ALTI-Logit,
and to one plain forward pass. Every (model, dtype) pair is warmed up once (Triton JIT of mamba-ssm's kernels)
before anything is timed and gets an equal share of ``--total-budget`` (with ``--depths``, a share in proportion to
the depth built); a point whose time, predicted quadratic in N from the previous one, exceeds ``--point-budget``
or the time left is skipped and listed with the reason.

Usage::

    python benchmarks/speed.py --quick --out /tmp/bench      # tiny, CPU, < 1 minute
    python benchmarks/speed.py --out bench_out                # full, CUDA (≤ 7.5 minutes of timing + start-up)
    python benchmarks/speed.py --kernel triton --models mamba2 --single-lengths none --out bench_triton

``--kernel triton`` times the Triton kernels of :mod:`latim_captum.maps.triton` (autotuned during the warm-up) in
place of the PyTorch tiles; models it does not cover are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from ._environment import device_name, provenance, provenance_lines
from ._validation import check_device
from .adapters import get_adapter
from .traces import LayerTrace

__all__ = ["main", "build_model", "matmul_peak"]


#: model kinds the benchmark builds, random weights with published shapes: ``mamba1`` / ``mamba2`` (mamba-130m /
#: mamba2-130m), ``bamba`` (a hybrid of the same widths: 24 blocks, 4 of them attention), ``falcon_mamba_7b``
#: (FalconMamba-7B: 64 layers, d_model 4096), ``mamba2_2.7b`` (64 layers, d_model 2560) and ``bamba_9b``
#: (Bamba-9B: 32 blocks, d_model 4096, 3 of them attention); ``--quick`` builds each layout with tiny widths
MODELS: tuple[str, ...] = ("mamba1", "mamba2", "bamba", "falcon_mamba_7b", "mamba2_2.7b", "bamba_9b")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}

# (layers, d_model, vocab, state, attention blocks) of each kind; quick: every kind at tiny widths, same layout
_SHAPES: dict[str, tuple[int, int, int, int, tuple[int, ...]]] = {
    "mamba1": (24, 768, 50280, 16, ()),
    "mamba2": (24, 768, 50280, 128, ()),
    "bamba": (24, 768, 50280, 128, (5, 11, 17, 23)),
    "falcon_mamba_7b": (64, 4096, 65024, 16, ()),
    "mamba2_2.7b": (64, 2560, 50288, 128, ()),
    "bamba_9b": (32, 4096, 128256, 128, (9, 18, 27)),
}


def _config(kind: str, layers: int, hidden: int, vocab: int, state: int, attention: tuple[int, ...], quick: bool):
    cfg = _family_config(kind, layers, hidden, vocab, state, attention, quick)
    cfg.tie_word_embeddings = kind not in UNTIED  # as the checkpoints: their parameter counts come out right
    return cfg


#: the kinds whose checkpoints keep a separate LM head (FalconMamba-7B: 7.27B parameters, Bamba-9B: 9.78B)
UNTIED: tuple[str, ...] = ("falcon_mamba_7b", "bamba_9b")


def _family_config(
    kind: str, layers: int, hidden: int, vocab: int, state: int, attention: tuple[int, ...], quick: bool
):
    import transformers

    heads = 2 * hidden // 64
    chunk = 16 if quick else 256
    if kind in ("mamba1", "falcon_mamba_7b"):
        cls = transformers.FalconMambaConfig if kind == "falcon_mamba_7b" else transformers.MambaConfig
        return cls(hidden_size=hidden, num_hidden_layers=layers, state_size=state, expand=2, vocab_size=vocab)
    if kind in ("mamba2", "mamba2_2.7b"):
        return transformers.Mamba2Config(
            hidden_size=hidden, num_hidden_layers=layers, state_size=state, expand=2, head_dim=64, num_heads=heads,
            n_groups=1, chunk_size=chunk, vocab_size=vocab,
        )  # fmt: skip
    attn_heads = max(1, hidden // 128)
    return transformers.BambaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=(14336 * hidden) // 4096,
        num_hidden_layers=layers, num_attention_heads=attn_heads, num_key_value_heads=max(1, attn_heads // 4),
        attn_layer_indices=[i for i in attention if i < layers], mamba_n_heads=heads, mamba_d_head=64,
        mamba_n_groups=1, mamba_d_state=state, mamba_chunk_size=chunk,
    )  # fmt: skip


def build_model(
    kind: str,
    quick: bool,
    dtype: torch.dtype,
    device: torch.device,
    n_layers: int | None = None,
    attention_blocks: tuple[int, ...] | None = None,
) -> torch.nn.Module:
    """Random-weight model of ``kind`` (:data:`MODELS`) in ``dtype``, made on ``device`` (a 7B shape is never held in
    host memory); ``quick``: the same layout at tiny widths; ``n_layers`` keeps the widths with fewer
    (or more) layers; ``attention_blocks``: a hybrid's attention block indices instead of the published ones."""
    import transformers

    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODELS)}")
    _, hidden, vocab, state, _ = _SHAPES[kind]
    if quick:
        hidden, vocab, state = 64, 256, 16
    attention = published_attention(kind, quick)
    if attention_blocks is not None and attention:
        attention = attention_blocks
    cfg = _config(kind, n_layers or published_layers(kind, quick), hidden, vocab, state, attention, quick)
    cfg.use_cache = False
    cls = transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):  # made where it runs (float32 first: 28 GB for a 7B shape on the GPU, then cast)
        model = cls.from_config(cfg)
    return model.to(device=device, dtype=dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """Wall seconds, peak memory (GiB, CUDA only; 0 on CPU) and the result of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return wall, peak, out


def matmul_peak(precision: str, device: torch.device, size: int = 8192) -> float:
    """Dense matmul TFLOP/s of this device for ``precision`` (``tf32``/``bf16``/``highest``)."""
    from .maps import matmul_precision

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    with matmul_precision(precision):
        a @ b
        reps = 10 if device.type == "cuda" else 1
        wall, _, _ = timed(lambda: [a @ b for _ in range(reps)], device)
    return 2 * size**3 * reps / wall / 1e12


def _lig_seconds(model, ids: torch.Tensor, device: torch.device, steps: int = 50) -> float:
    """Captum ``LayerIntegratedGradients`` (``steps`` steps) for the last position's predicted token."""
    from captum.attr import LayerIntegratedGradients

    with torch.no_grad():
        target = int(model(ids).logits[0, -1].argmax())

    def forward(x):
        return model(x).logits[:, -1]

    lig = LayerIntegratedGradients(forward, get_adapter(model).embeddings)
    # ≤ 8192 tokens per backward pass: all 50 steps at once need tens of GB at N = 512 (24 layers)
    per_pass = max(1, min(steps, 2**13 // ids.shape[1]))

    def run(n_steps: int):
        return lig.attribute(ids, baselines=torch.zeros_like(ids), target=target, n_steps=n_steps,
                             internal_batch_size=per_pass)  # fmt: skip

    # one untimed pass of the same shapes first: mamba-ssm's Triton kernels (Mamba-2) autotune their backward on
    # first use, which is no part of the method's cost
    run(per_pass)
    wall, _, _ = timed(lambda: run(steps), device)
    return wall


def _skip_reason(last_wall: float | None, last_n: int, n: int, point_budget: float, end: float) -> str | None:
    """Why a point of length ``n`` is skipped (its time predicted as quadratic in N from the last point), or None."""
    left = end - time.perf_counter()
    if last_wall is None:
        return None if left > 0 else "no time left in this model's share of --total-budget"
    predicted = last_wall * (n / last_n) ** 2
    if predicted > point_budget:
        return f"predicted {predicted:.0f}s > --point-budget {point_budget:.0f}s"
    if predicted > left:
        return f"predicted {predicted:.0f}s > {max(left, 0):.0f}s left in this model's share of --total-budget"
    return None


def _fp32_precision(device: torch.device) -> str:
    """The W_o product of the float32 points: TF32 on CUDA (its tensor cores); IEEE float32 elsewhere, where TF32
    does not exist."""
    return "tf32" if device.type == "cuda" else "highest"


def _warm_up(
    model,
    n: int,
    precision: str,
    device: torch.device,
    kernel: str = "torch",
    lengths: Sequence[int] = (),
    end_to_end_precisions: Sequence[str] = (),
) -> float:
    """One untimed pass of everything the benchmark times, at length ``n``; returns its seconds. With
    ``kernel="triton"``, every measure set once per Mamba-1 anchor size that the timed ``lengths`` will use: each
    (measures, precision, anchor) triple is its own autotuning key, and tuning inside a timed point would time the
    tuning. ``end_to_end_precisions``: the other precisions the end-to-end table times (its ℓ2 call), tuned for ℓ2
    at the same anchors."""
    import latim_captum as lc
    from latim_captum.maps.tiles import default_anchor_rows

    start = time.perf_counter()
    ids = torch.randint(0, get_adapter(model).vocab_size, (1, n), device=device)
    with torch.no_grad():
        model(ids)
    tr = lc.trace(model, ids)
    proj = tr.readout.projection(tr.readout.logits.argmax(-1))
    lc.layer_maps(tr.layers[0], "silu", ("alti", "logit", "l2"), projection=proj, precision=precision, backend="fast")
    if kernel != "torch":
        # Mamba-2 has no anchors (one key per measure set whatever N): anchor_rows=None, tuned once
        mamba1 = tr.layers[0].variant == "mamba1"
        anchors = sorted({default_anchor_rows(length) for length in (n, *lengths)}) if mamba1 else [None]
        every_set = (("l2",), ("alti",), ("logit",), ("alti", "logit"))
        tuned = [(precision, every_set), *((p, (("l2",),)) for p in end_to_end_precisions if p != precision)]
        for prec, measure_sets in tuned:
            for anchor in anchors:
                for measures in measure_sets:
                    lc.layer_maps(
                        tr.layers[0], "silu", measures, projection=proj, precision=prec, backend=_backend(kernel),
                        kernel_config={"anchor_rows": anchor},
                    )  # fmt: skip
    lc.alti_logit_row(tr, position=-1, precision=precision, backend=_backend(kernel))
    _sync(device)
    return time.perf_counter() - start


#: the precisions the end-to-end table times on CUDA (the warm-up tunes each of them)
_E2E_PRECISIONS: tuple[str, ...] = ("highest", "tf32", "bf16")


def _end_to_end(model, ids: torch.Tensor, device: torch.device, kernel: str) -> dict:
    """What a user's call costs: ``interactions(model, ids, method="l2")`` with the default arguments (trace and
    maps), then on this run's path at each precision the device allows, with each one's largest relative
    difference from ``"highest"`` (``max |Δ| / max |maps|``), ALTI's largest row-sum error (rows sum to 1) and
    ALTI-Logit's (rows sum to the logit minus the offset; relative to the largest logit)."""
    import latim_captum as lc

    out: dict = {}
    wall, _, _ = timed(partial(lc.interactions, model, ids, method="l2"), device)
    out["default_s"] = wall
    precisions = _E2E_PRECISIONS if device.type == "cuda" else ("highest",)
    reference = None
    for prec in precisions:
        call = partial(lc.interactions, model, ids, method="l2", backend=_backend(kernel), precision=prec)
        try:
            wall, _, maps = timed(call, device)
        except (MemoryError, torch.OutOfMemoryError) as err:
            out[prec] = {"error": str(err)[:160]}
            continue
        entry = {"wall_s": wall}
        if reference is None:
            reference = maps
        else:
            entry["rel_diff_vs_highest"] = float((maps - reference).abs().max() / reference.abs().max())
        alti = lc.interactions(model, ids, method="alti", backend=_backend(kernel), precision=prec)
        entry["alti_row_sum_error"] = float((alti.sum(-1) - 1).abs().max())
        # ALTI-Logit's invariant (rows sum to the logit minus the offset), relative to the largest logit: what a
        # precision costs Captum's convergence delta
        res = lc.alti_logit(model, ids, backend=_backend(kernel), precision=prec)
        entry["logit_row_sum_rel_error"] = float(
            (res.scores.sum(-1) - (res.logits - res.offset)).abs().max() / res.logits.abs().max()
        )
        out[prec] = entry
    return out


def _backend(kernel: str) -> str:
    """The public backend whose tiles are ``kernel`` (``"torch"``: ``"fast"``)."""
    return "fast" if kernel == "torch" else kernel


def _save(results: dict, out: str | None) -> None:
    """Write ``speed.json`` / ``speed.md`` now, so a run stopped by a time limit keeps every finished point."""
    if out is None:
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / "speed.json").write_text(json.dumps(results, indent=1))
    (path / "speed.md").write_text(to_markdown(results))


def run(args: argparse.Namespace) -> dict:
    import latim_captum as lc
    from latim_captum.maps import stack
    from latim_captum.maps.tiles import dominant_flops

    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    quick = args.quick
    lengths = _lengths(args.lengths, [16, 24] if quick else [512, 2048, 4096, 8192, 16384])
    single_lengths = _lengths(args.single_lengths, [16] if quick else [2048, 8192, 32768])
    models = _choices(args.models, MODELS, "--models")
    depths = _depths(args.depths, models, quick)  # checked before the matmul peak: a bad option fails at once
    dtypes = {name: DTYPES[name] for name in _choices(args.dtypes, tuple(DTYPES), "--dtypes")}
    gpu = device_name(device)
    results: dict = {"device": str(device), "gpu": gpu, "kernel": args.kernel,
                     "floor": "2 * N(N+1)/2 * d_inner * d_model FLOPs per layer (W_o projection of every causal pair)",
                     "peak_tflops": {}, "points": [], "single_query": [], "skipped": [],
                     **provenance(args)}  # fmt: skip
    for dtype in dtypes.values():
        prec = "bf16" if dtype == torch.bfloat16 else _fp32_precision(device)
        results["peak_tflops"][prec] = matmul_peak(prec, device, 1024 if quick else 8192)
    t_start = time.perf_counter()
    total_budget = args.total_budget if args.total_budget is not None else (80.0 if quick else 450.0)
    deadline = t_start + total_budget
    combos = [(k, dn, design) for k in models for dn in dtypes for design in depths[k]]
    # a share of the time left in proportion to the depth built (a deeper model costs more per point; without
    # --depths every pair weighs 1)
    weights = [design[0] if design else 1 for _, _, design in combos]
    results["total_budget_s"] = total_budget
    results["warmup_s"] = {}
    for combo_idx, (kind, dname, design) in enumerate(combos):
        depth, attention = design if design else (None, None)
        share = weights[combo_idx] / sum(weights[combo_idx:])
        combo_end = time.perf_counter() + (deadline - time.perf_counter()) * share
        dtype = dtypes[dname]
        prec = "bf16" if dtype == torch.bfloat16 else _fp32_precision(device)
        model = build_model(kind, quick, dtype, device, n_layers=depth, attention_blocks=attention)
        maps_lengths, kernel = lengths, args.kernel
        if kernel == "triton" and _layout(kind) not in _triton_variants():
            results["skipped"].append({"model": kind, "dtype": dname, "why": "kernel='triton' does not cover it"})
            maps_lengths, kernel = [], "torch"
        # warm-up (Triton JIT/autotune of mamba-ssm's kernels and ours, cuBLAS handles) before anything is timed
        layout = f"/{depth} layers" + (f", {len(attention)} attention" if attention else "") if depth else ""
        e2e_precisions = _E2E_PRECISIONS if args.end_to_end and device.type == "cuda" else ()
        results["warmup_s"][f"{kind}/{dname}{layout}"] = _warm_up(
            model, min((lengths or [256])[0], 256), prec, device, kernel, [*maps_lengths, *single_lengths],
            end_to_end_precisions=e2e_precisions,
        )  # fmt: skip
        maps_end = time.perf_counter() + 0.7 * (combo_end - time.perf_counter())
        adapter = get_adapter(model)
        n_layers, vocab = adapter.n_sublayers, adapter.vocab_size
        # n_layers counts sublayers (a hybrid's mixers and MLPs); depth counts blocks, as published_depth does
        published, published_attn = published_layers(kind, quick), len(published_attention(kind, quick))
        depth_fields = {"n_layers": n_layers, "depth": depth or published, "published_depth": published}
        if published_attn:  # a hybrid: its blocks of each kind, built and published
            built_attn = published_attn if attention is None else len(attention)
            depth_fields.update(attention_blocks=built_attn, published_attention=published_attn)
        last_wall, last_n = None, 1
        for n in maps_lengths:
            point = {"model": kind, "dtype": dname, "precision": prec, "N": n, **depth_fields}
            why = _skip_reason(last_wall, last_n, n, args.point_budget, maps_end)
            if why:
                results["skipped"].append({**point, "why": why})
                continue
            point_start = time.perf_counter()
            ids = torch.randint(0, vocab, (1, n), device=device)
            fwd, _, _ = timed(partial(model, ids), device)  # warm-up
            fwd, _, _ = timed(partial(model, ids), device)
            t_trace, _, tr = timed(partial(lc.trace, model, ids), device)
            point.update(forward_s=fwd, trace_s=t_trace)
            if args.end_to_end:
                point["end_to_end"] = _end_to_end(model, ids, device, kernel)
            mamba = [layer for layer in tr.layers if isinstance(layer, LayerTrace)]  # the floor counts Mamba layers
            d_inner, d_model = mamba[0].out_weight.shape[1], mamba[0].out_weight.shape[0]
            flops = dominant_flops(n, d_inner, d_model) * len(mamba)
            results["points"].append(point)  # saved after each method: a run cut short keeps what it timed
            for method in ("l2", "alti", "alti_logit"):
                measures = {"l2": ("l2",), "alti": ("alti",), "alti_logit": ("alti", "logit")}[method]
                proj = tr.readout.projection(tr.readout.logits.argmax(-1)) if method == "alti_logit" else None

                def all_layers(tr=tr, measures=measures, proj=proj, prec=prec, kernel=kernel):
                    return stack(tr, measures, activation="silu", projection=proj, precision=prec,
                                 backend=_backend(kernel))  # fmt: skip

                try:
                    wall, peak, maps = timed(all_layers, device)
                except torch.OutOfMemoryError as err:  # e.g. ALTI-Logit's two [L, N, N] maps at N = 16384
                    results["skipped"].append({**point, "method": method, "why": f"out of memory: {str(err)[:160]}"})
                    _save(results, args.out)
                    continue
                held = _allocated_gib(device)  # weights, trace and the maps, while the maps are alive
                del maps
                entry = {"wall_s": wall, "peak_gib": peak, "tflops": flops / wall / 1e12,
                         "frac_peak": flops / wall / 1e12 / results["peak_tflops"][prec],
                         "x_forward": wall / fwd}  # fmt: skip
                if held is not None:
                    entry["held_gib"] = held
                if n <= args.ref_max_n:
                    layer0 = tr.layers[0]
                    ref_fn = partial(lc.layer_maps_ref, layer0, "silu", measures, projection=proj)
                    wref, _, _ = timed(ref_fn, device)
                    fast_fn = partial(
                        lc.layer_maps, layer0, "silu", measures, projection=proj, precision=prec,
                        backend=_backend(kernel),
                    )  # fmt: skip
                    w1, _, _ = timed(fast_fn, device)
                    entry["speedup_vs_ref"] = wref / w1
                point[method] = entry
                _save(results, args.out)
            last_wall, last_n = time.perf_counter() - point_start, n
            # every reference to this trace goes (all_layers holds it as a default): a live trace would count in the
            # single queries' held bytes and peaks, and the fit would carry it to the published depth
            tr = all_layers = proj = layer0 = ref_fn = fast_fn = None
            print(json.dumps(point), flush=True)
        # one prediction: single-query ALTI-Logit vs Captum LIG (50 steps), and the single-query memory curve
        last_wall, last_n = None, 1
        for n in single_lengths:
            point = {"model": kind, "dtype": dname, "N": n, **depth_fields}
            why = _skip_reason(last_wall, last_n, n, args.point_budget, combo_end)
            if why:
                results["skipped"].append({**point, "mode": "single_query", "why": why})
                continue
            ids = torch.randint(0, vocab, (1, n), device=device)
            try:
                wall, peak, store, held = _single_query_seconds(
                    model, ids, prec, kernel, device, warm=n <= args.lig_max_n
                )
            except (MemoryError, torch.OutOfMemoryError) as err:
                results["skipped"].append({**point, "mode": "single_query", "why": str(err)[:300]})
                break
            point.update(wall_s=wall, peak_gib=peak, trace_store=store)
            if held is not None:
                point["held_gib"] = held
            if n <= args.lig_max_n:
                try:
                    point["lig50_s"] = _lig_seconds(model, ids, device)
                    point["speedup_vs_lig50"] = point["lig50_s"] / wall
                except torch.OutOfMemoryError as err:
                    point["lig50_error"] = f"out of memory: {str(err)[:120]}"
            results["single_query"].append(point)
            print(json.dumps(point), flush=True)
            _save(results, args.out)
            # predict the next length from the row's own time: LIG's time (and its first-call JIT) is not quadratic
            # in N and stops at --lig-max-n
            last_wall, last_n = wall, n
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["total_s"] = time.perf_counter() - t_start
    # only runs that sampled depths: a run at the published depth has nothing to extrapolate
    results["extrapolated"] = extrapolate_depth(results) if args.depths else []
    _save(results, args.out)
    return results


def published_layers(kind: str, quick: bool) -> int:
    """The layer count of ``kind`` as :func:`build_model` builds it without ``n_layers`` (the checkpoint's depth)."""
    layers, _, _, _, attention = _SHAPES[kind]
    return (4 if attention else 2) if quick else layers


def published_attention(kind: str, quick: bool) -> tuple[int, ...]:
    """The attention block indices of ``kind`` as :func:`build_model` builds it by default (pure Mamba: none)."""
    attention = _SHAPES[kind][4]
    return ((1, 3) if attention else ()) if quick else attention


#: a layout ``build_model`` makes: ``(blocks, attention block indices)``; None: the published one
Design = tuple[int, tuple[int, ...]] | None


def _depths(spec: str | None, models: Sequence[str], quick: bool) -> dict[str, list[Design]]:
    """``--depths``: the layouts each model is built with, its widths kept (``[None]``: the published one).

    A pure Mamba model is built with each of the layer counts ``K``. A hybrid is built with each count of Mamba
    blocks alone and once more with the largest count, its last block attention: three or more layouts in which
    Mamba and attention blocks vary apart, so that both per-block costs can be fitted (each block is a mixer and an
    MLP; the last sublayer is always an MLP, so where the attention blocks sit does not change the cost model). A
    ``ValueError`` names a bad count, a single sampled depth (two are needed to extrapolate) and a depth beyond the
    published one.
    """
    if not spec:
        return {kind: [None] for kind in models}
    try:
        depths = sorted({int(x) for x in spec.split(",")})
    except ValueError:
        raise ValueError(f"--depths must be comma-separated layer counts, got {spec!r}") from None
    if len(depths) < 2 or depths[0] < 1:
        raise ValueError(f"--depths needs two or more distinct layer counts ≥ 1 to extrapolate from, got {spec!r}")
    too_deep = [kind for kind in models if depths[-1] > published_layers(kind, quick)]
    if too_deep:
        raise ValueError(f"--depths {depths[-1]} is deeper than {', '.join(too_deep)} (nothing to extrapolate)")
    designs: dict[str, list[Design]] = {}
    for kind in models:
        designs[kind] = [(k, ()) for k in depths]
        if published_attention(kind, quick):
            designs[kind].append((depths[-1], (depths[-1] - 1,)))
    return designs


def _linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``: ``(a, b)``."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


def _least_squares(x: Sequence[Sequence[float]], ys: Sequence[float]) -> list[float] | None:
    """Least-squares coefficients of ``y = x·c`` (``x``: one row of regressors per measured layout, the constant
    first), or None when the layouts do not determine them (``x`` of less than full column rank: one depth only, or
    a hybrid whose layouts do not vary its Mamba and attention blocks apart). One cost beside the constant: the
    closed form of a line (exact where the points lie on one)."""
    import numpy as np

    if len(x[0]) == 2:
        ks = [row[1] for row in x]
        return list(_linear_fit(ks, ys)) if len(set(ks)) > 1 else None
    x = np.array(x, dtype=float)
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    return [float(c) for c in np.linalg.lstsq(x, np.array(ys, dtype=float), rcond=None)[0]]


def _regressors(mamba: int, attention: int, hybrid: bool) -> list[float]:
    """One row of the cost model's regressors: 1 (the constant), then the blocks of each cost (a pure Mamba model's
    layers count as one kind)."""
    return [1.0, mamba, attention] if hybrid else [1.0, mamba + attention]


def _blocks_of(point: dict) -> tuple[int, int]:
    """``(Mamba blocks, attention blocks)`` a point was built with."""
    attention = point.get("attention_blocks", 0)
    return point["depth"] - attention, attention


def extrapolate_depth(results: dict) -> list[dict]:
    """Times (and peaks) at the published depth ``L`` from models built with fewer layers of the same widths.

    Every part of a call is a sum over layers plus a constant (the embedding, the readout): the trace, each layer's
    map, and the single query's Horner step ``w ← w P^{(l)}`` (one ALTI layer per layer below the last), so a time
    measured at depths ``K₁ < K₂ < …`` is fitted as ``t(K) = a + b·K`` and read at ``K = L``; ``b`` is the per-layer
    cost. A hybrid's blocks are of two kinds, so its times are fitted as ``t = a + b·m + c·α`` over the layouts of
    ``m`` Mamba and ``α`` attention blocks built (see ``--depths``) and read at the published layout; ``b`` and ``c``
    are the per-block costs. Single queries are grouped by where their trace was kept (device or host: two cost
    models). A point measured at too few layouts (the others skipped) gets a row without an estimate, saying so.

    The peak is not linear in depth, so it is not fitted. It is what the call holds (weights, the device part of
    the trace, the maps: ``held_gib``, exact and linear in the blocks) plus a transient workspace that is not: the
    tiles are sized from the free memory (a deeper model leaves less, so its tiles shrink), and a single query at one
    layer has no layer below the last, hence no ALTI workspace at all. The estimate at ``L`` is therefore the held
    bytes' fit read at ``L`` plus the largest workspace (peak − held) of the deepest layouts measured: an upper bound
    where a deeper model's smaller tiles would fit. Points without ``held_gib`` (runs before it was recorded) get
    times only.

    Example:
        >>> pts = [{"model": "m", "dtype": "bf16", "N": 8, "depth": k, "published_depth": 64,
        ...         "wall_s": 1.0 + 2.0 * k, "peak_gib": 9.0 + k, "held_gib": 3.0 + k} for k in (1, 2)]
        >>> row = extrapolate_depth({"points": [], "single_query": pts})[0]
        >>> row["wall_s"], row["peak_gib"]
        (129.0, 73.0)
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for p in results.get("single_query", []):
        if "depth" not in p:  # results of a run before --depths
            continue
        method = "single_query" + (f" (trace on the {p['trace_store']})" if p.get("trace_store") == "host" else "")
        groups.setdefault((p["model"], p["dtype"], p["N"], method), []).append((p, p))
    for p in results.get("points", []):
        if "depth" not in p:
            continue
        for method in ("l2", "alti", "alti_logit"):
            if method in p:
                groups.setdefault((p["model"], p["dtype"], p["N"], method), []).append((p, p[method]))
    rows = []
    for (model, dtype, n, method), measured in groups.items():
        measured.sort(key=lambda m: _blocks_of(m[0]))
        point = measured[0][0]
        published_attn = point.get("published_attention", 0)
        hybrid = published_attn > 0
        designs = [_blocks_of(p) for p, _ in measured]
        row = {"model": model, "dtype": dtype, "N": n, "method": method, "depths": [p["depth"] for p, _ in measured],
               "measured_s": [e["wall_s"] for _, e in measured], "layers": point["published_depth"]}  # fmt: skip
        if hybrid:
            row.update(attention_blocks=[alpha for _, alpha in designs], published_attention=published_attn)
        x = [_regressors(m, alpha, hybrid) for m, alpha in designs]
        target = _regressors(point["published_depth"] - published_attn, published_attn, hybrid)
        coef = _least_squares(x, row["measured_s"])
        if coef is None:
            why = ("too few layouts measured to tell Mamba and attention blocks apart" if hybrid else
                   f"measured at {row['depths'][0]} layer(s) only (the other depths skipped)")  # fmt: skip
            rows.append({**row, "why": why})
            continue
        if min(coef[1:]) <= 0:
            costs = ", ".join(f"{kind} {c:.3g} s" for kind, c in zip(("Mamba", "attention"), coef[1:]))
            rows.append({**row, "why": f"a per-block cost ≤ 0 ({costs}): the timing noise outweighs a block; sample "
                         "deeper layouts"})  # fmt: skip
            continue
        row.update(per_layer_s=coef[1], wall_s=sum(c * t for c, t in zip(coef, target)), per_layer_gib=None,
                   peak_gib=None)  # fmt: skip
        if hybrid:
            row["per_attention_s"] = coef[2]
        if all("held_gib" in e for _, e in measured):
            held = _least_squares(x, [e["held_gib"] for _, e in measured])
            deepest = max(row["depths"])
            workspace = max(e["peak_gib"] - e["held_gib"] for p, e in measured if p["depth"] == deepest)
            row.update(per_layer_gib=held[1], peak_gib=sum(c * t for c, t in zip(held, target)) + workspace)
            if hybrid:
                row["per_attention_gib"] = held[2]
        rows.append(row)
    return rows


def _single_query_seconds(
    model: torch.nn.Module, ids: torch.Tensor, prec: str, kernel: str, device: torch.device, warm: bool
) -> tuple[float, float, str, float | None]:
    """Wall seconds and peak GiB of one ALTI-Logit row of ``ids`` (the last position), where its trace was kept
    (on the device, or, when the memory guard says the device-kept trace does not fit, in host memory: what a user
    is told to ask for; the row reads one layer at a time), and the GiB held once the trace is made (weights and
    the device part of the trace; None off CUDA). ``warm``: one untimed call first, as LIG gets."""
    import latim_captum as lc

    stores, held = [], []

    def row() -> None:
        tr = lc.trace(model, ids, store="auto")  # what alti_logit_row(model, ...) does by default
        stores.append(tr.store)
        held.append(_allocated_gib(device))
        lc.alti_logit_row(tr, position=-1, precision=prec, backend=_backend(kernel))

    if warm:  # first-call work at this length is not its cost
        row()
    wall, peak, _ = timed(row, device)
    return wall, peak, stores[-1], held[-1]


def _allocated_gib(device: torch.device) -> float | None:
    """GiB of live tensors on a CUDA ``device`` (exact, unlike the peak: no transient workspace); None elsewhere
    (no allocator to ask: a CPU run reports no peak estimate rather than 0)."""
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _lengths(spec: str | None, default: list[int]) -> list[int]:
    """Comma-separated lengths, ``"none"`` for none, or ``default``; ``ValueError`` naming a bad one."""
    if not spec:
        return default
    if spec.strip().lower() == "none":
        return []
    try:
        lengths = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"lengths must be comma-separated integers or 'none', got {spec!r}") from None
    if any(n < 1 for n in lengths):
        raise ValueError(f"lengths must be ≥ 1, got {spec!r}")
    return lengths


def _choices(spec: str, allowed: Sequence[str], option: str) -> list[str]:
    """The comma-separated names of ``spec``, each one of ``allowed`` (else a ``ValueError`` naming it)."""
    names = [x.strip() for x in spec.split(",") if x.strip()]
    unknown = [x for x in names if x not in allowed]
    if unknown or not names:
        raise ValueError(f"{option}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(allowed)}")
    return names


def _layout(kind: str) -> str:
    """The Mamba variant of a model kind's Mamba layers (a Bamba hybrid's are Mamba-2; its attention and MLP
    sublayers take the PyTorch tiles under either kernel)."""
    return "mamba1" if kind in ("mamba1", "falcon_mamba_7b") else "mamba2"


def _triton_variants() -> tuple[str, ...]:
    """Model kinds ``kernel="triton"`` covers (none without triton)."""
    try:
        from .maps.triton import VARIANTS
    except ImportError:
        return ()
    return VARIANTS


def _model_cell(point: dict) -> str:
    """A point's model, with its layout when it was built with other layers than published (``--depths``)."""
    k, published = point.get("depth"), point.get("published_depth")
    attention, published_attn = point.get("attention_blocks", 0), point.get("published_attention", 0)
    if k is None or (k, attention) == (published, published_attn):
        return point["model"]
    if published_attn:
        return f"{point['model']} ({k} of {published} blocks, {attention} of {published_attn} attention)"
    return f"{point['model']} ({k} of {published} layers)"


def _measured_cell(e: dict) -> str:
    """The sampled times of an extrapolated row: ``K: s`` per depth, ``m+αa: s`` per hybrid layout."""
    if "attention_blocks" not in e:
        return ", ".join(f"{k}: {s:.3g}" for k, s in zip(e["depths"], e["measured_s"]))
    return ", ".join(f"{k - a}m+{a}a: {s:.3g}" for k, a, s in zip(e["depths"], e["attention_blocks"], e["measured_s"]))


def to_markdown(results: dict) -> str:
    kernel = results.get("kernel", "torch")
    lines = [f"# LaTIM speed ({results['gpu']}, kernel={kernel})", "",
             *provenance_lines(results),
             "End to end, the number a user gets: `interactions(model, ids, method=\"l2\")` (trace and maps) with the "
             "default arguments, then on this run's path at each precision (s; relative difference of the maps from "
             "`highest`; ALTI's and ALTI-Logit's largest row-sum errors):", "",
             "| model | dtype | N | forward s | trace s | default s | highest s | tf32 s (diff) | bf16 s (diff) | "
             "ALTI row-sum error (highest / tf32 / bf16) | ALTI-Logit row-sum error, relative (same) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in results["points"]:
        e2e = p.get("end_to_end")
        if not e2e:
            continue

        def cell(prec: str, e2e: dict = e2e) -> str:
            entry = e2e.get(prec)
            if entry is None:
                return "—"
            if "error" in entry:
                return "OOM"
            diff = f" ({entry['rel_diff_vs_highest']:.1e})" if "rel_diff_vs_highest" in entry else ""
            return f"{entry['wall_s']:.3f}{diff}"

        sums = " / ".join(f"{e2e[k]['alti_row_sum_error']:.0e}" for k in ("highest", "tf32", "bf16")
                          if k in e2e and "alti_row_sum_error" in e2e[k])  # fmt: skip
        logit_sums = " / ".join(f"{e2e[k]['logit_row_sum_rel_error']:.0e}" for k in ("highest", "tf32", "bf16")
                                if k in e2e and "logit_row_sum_rel_error" in e2e[k])  # fmt: skip
        lines.append(
            f"| {_model_cell(p)} | {p['dtype']} | {p['N']} | {p['forward_s']:.3f} | {p['trace_s']:.3f} | "
            f"{e2e['default_s']:.3f} | {cell('highest')} | {cell('tf32')} | {cell('bf16')} | {sums} | "
            f"{logit_sums or '—'} |"
        )
    lines += ["", "Maps from a finished trace (the engine alone):", "", f"Floor: {results['floor']}.",
             f"Matmul peak (TFLOP/s): {json.dumps({k: round(v, 1) for k, v in results['peak_tflops'].items()})}", "",
             "| model | dtype | N | method | wall s | peak GiB | TFLOP/s | % peak | × ref | wall / forward |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in results["points"]:
        for method in ("l2", "alti", "alti_logit"):
            if method not in p:  # not timed yet (a run cut short)
                continue
            e = p[method]
            ref = f"{e['speedup_vs_ref']:.1f}" if "speedup_vs_ref" in e else "—"
            lines.append(
                f"| {_model_cell(p)} | {p['dtype']} | {p['N']} | {method} | {e['wall_s']:.3f} | {e['peak_gib']:.2f} | "
                f"{e['tflops']:.1f} | {100 * e['frac_peak']:.0f} | {ref} | {e['x_forward']:.0f} |"
            )
    lines += ["", "Single query (ALTI-Logit of the last token, all layers):", "",
              "| model | dtype | N | trace kept on | wall s | peak GiB | LIG-50 s | × LIG-50 |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in results["single_query"]:
        lig = f"{p['lig50_s']:.2f} | {p['speedup_vs_lig50']:.1f}" if "lig50_s" in p else "— | —"
        if "lig50_error" in p:
            lig = "OOM | —"
        store = p.get("trace_store", "device")
        lines.append(
            f"| {_model_cell(p)} | {p['dtype']} | {p['N']} | {store} | {p['wall_s']:.2f} | {p['peak_gib']:.2f} | "
            f"{lig} |"
        )
    if results.get("extrapolated"):
        lines += ["", "Extrapolated to the published depth (models built with fewer layers of the same widths; "
                  "t(K) = a + b·K fitted over the sampled depths K, read at K = L; a hybrid's t = a + b·m + c·α over "
                  "its layouts of m Mamba and α attention blocks, the per layer cells then b / c). Peak memory: "
                  "the largest workspace (peak − held) of the deepest layouts plus the held tensors (weights, trace, "
                  "maps; per layer GiB) fitted the same way and read at L, an upper "
                  "bound (the tiles are sized from the free memory, and shrink to what is left). Where the held bytes "
                  "alone outgrow the GPU, a single query keeps its trace on the host (`store=\"auto\"`: copies this "
                  "estimate leaves out) and all-layer maps do not fit (ask for fewer layers or for rows):", "",
                  "| model | dtype | N | method | measured at K layers: s | per layer s | L | estimated s at L | "
                  "held per layer GiB | estimated peak GiB at L |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for e in results["extrapolated"]:
            measured = _measured_cell(e)
            if "why" in e:
                lines.append(f"| {e['model']} | {e['dtype']} | {e['N']} | {e['method']} | {measured} | — | "
                             f"{e['layers']} | not estimated: {e['why']} | — | — |")  # fmt: skip
                continue
            attn_s = f" / {e['per_attention_s']:.3g}" if "per_attention_s" in e else ""
            per_layer = f"{e['per_layer_s']:.3g}{attn_s}"
            if e.get("peak_gib") is None:
                gib = "— | not recorded in this run"
            else:
                held = f"{e['per_layer_gib']:.3g}" + (
                    f" / {e['per_attention_gib']:.3g}" if "per_attention_gib" in e else ""
                )
                gib = f"{held} | {e['peak_gib']:.3g}"
            lines.append(
                f"| {e['model']} | {e['dtype']} | {e['N']} | {e['method']} | {measured} | {per_layer} | "
                f"{e['layers']} | {e['wall_s']:.3g} | {gib} |"
            )
    if results["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {json.dumps(s)}" for s in results["skipped"]]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latim bench speed", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options on ``parser`` (this module's own parser, and ``latim bench speed``'s)."""
    parser.add_argument("--quick", action="store_true", help="tiny models and lengths (CPU, < 1 minute)")
    parser.add_argument("--out", required=True, help="output directory for speed.json and speed.md")
    parser.add_argument("--device", default=None)
    parser.add_argument("--models", default="mamba1,mamba2", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--lengths", default=None, help="comma-separated N for all-layer maps ('none': none)")
    parser.add_argument(
        "--single-lengths", default=None, help="comma-separated N for the single-query mode ('none': none)"
    )
    parser.add_argument(
        "--kernel", default="torch", choices=("torch", "triton"),
        help="tiles of the fast path: PyTorch ops, or the Triton kernels (latim_captum.maps.triton)",
    )  # fmt: skip
    parser.add_argument("--ref-max-n", type=int, default=2048, help="largest N timed on the _ref path")
    parser.add_argument("--lig-max-n", type=int, default=2048, help="largest N timed with Captum LIG")
    parser.add_argument("--point-budget", type=float, default=60.0, help="skip points predicted slower (s)")
    parser.add_argument(
        "--no-end-to-end", dest="end_to_end", action="store_false",
        help="skip the end-to-end calls (seven full calls per point: minutes on a 7B shape)",
    )  # fmt: skip
    parser.add_argument(
        "--depths", default=None,
        help="comma-separated layer counts to build each model with, its widths unchanged (a hybrid: with Mamba "
        "blocks alone, then once more with the largest count and one attention block): the map and single-query "
        "times are also extrapolated linearly to the published layout, and the peaks from the held bytes (a 7B "
        "shape's single query at N = 32768 is hours); with two depths, noise in their difference grows "
        "(L - 1)-fold",
    )  # fmt: skip
    parser.add_argument(
        "--total-budget", type=float, default=None,
        help="seconds for the whole run, split equally between (model, dtype) pairs, with --depths in proportion to "
        "the depth built (default 80 quick, 450 full)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write ``speed.json`` and ``speed.md`` to ``--out``."""
    return run_and_save(build_parser().parse_args(argv))


def run_and_save(args: argparse.Namespace) -> int:
    """Run the benchmark of parsed ``args``, write ``speed.json`` and ``speed.md`` to ``args.out``, print the table."""
    results = run(args)
    _save(results, args.out)
    print(to_markdown(results))
    return 0
